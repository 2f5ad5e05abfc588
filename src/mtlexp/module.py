"""The Lightning module: per-task losses, weighting, per-task metrics per split, gate statistics.

Optimisation is manual: the training loader yields a chunk of ``chunk_steps`` batches and
``training_step`` takes one optimizer step per batch. Lightning's loop costs about 0.4 ms per
``training_step`` on CPU, as much as a whole step of a paper-sized MMoE, so paying it once per chunk is
what lets mtlexp keep up with a hand-written loop (``scripts/bench_train.py``). Manual optimisation is
also the seam for gradient-based weighting, which needs per-task backward passes.

Under full precision without gradient clipping, the plain ``optimizer.step()`` is called and Lightning's
step counter is advanced by hand; with mixed precision or clipping, Lightning's precision plugin path
(``manual_backward`` + ``LightningOptimizer.step``) is used so its scaling and unscaling still happen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from mtlexp.data.base import SPLITS
from mtlexp.data.tensors import Batch
from mtlexp.errors import require
from mtlexp.gate_stats import GateStatistics
from mtlexp.kinds import kind_of, observed_rows, task_metrics
from mtlexp.lightning_compat import count_optimizer_steps, is_last_batch, should_update_logs
from mtlexp.models.base import MTLModel, MTLOutput
from mtlexp.objective import batch_objective, divergence, plain_step_possible
from mtlexp.metrics import direction
from mtlexp.redact import redact_values
from mtlexp.specs import TaskSpec
from mtlexp.weighting.base import StepInputs, Weighting
from mtlexp.weighting.conflict import cosine_pairs, loss_scale_warning, task_gradient_cosines


class MTLModule(pl.LightningModule):
    """Trains and evaluates one multi-task model.

    :param model: the architecture (an ``MTLModel``).
    :param tasks: the task specs, in the data's order.
    :param optimizer: a factory ``params -> torch.optim.Optimizer`` (a ``_partial_`` config node).
    :param weighting: combines per-task losses into one (``weighting/`` config group).
    :param scheduler: optional factory ``optimizer -> LR scheduler``, stepped once per epoch.
    :param grad_clip_norm: clip the global gradient norm to this value (``None``: no clipping).
    :param grad_cosine_every_n_steps: every this many optimizer steps, measure the cosine similarity between
        the task gradients on the shared parameters (one extra vectorised backward pass); 0 turns it off.
    :param run_config: the resolved run config, stored in every checkpoint so ``mtlexp eval`` can rebuild
        the data and the model from the checkpoint alone.
    """

    def __init__(
        self,
        model: MTLModel,
        tasks: Sequence[TaskSpec],
        optimizer: Callable[..., torch.optim.Optimizer],
        weighting: Weighting,
        scheduler: Callable[..., Any] | None = None,
        grad_clip_norm: float | None = None,
        grad_cosine_every_n_steps: int = 100,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        require(grad_clip_norm is None or grad_clip_norm > 0, "grad_clip_norm", "a positive number or null", grad_clip_norm)
        require(isinstance(grad_cosine_every_n_steps, int) and grad_cosine_every_n_steps >= 0,
                "grad_cosine_every_n_steps", "an integer >= 0 (0: off)", grad_cosine_every_n_steps)
        self.automatic_optimization = False
        self.model = model
        self.tasks = list(tasks)
        # The tasks with a loss: all of them, unless the model's objective says otherwise (ESMM trains CTR and
        # CTCVR, not CVR); the others are still predicted and evaluated. The weighting balances these.
        self.trained = model.trained_tasks(self.tasks)
        self.weighting = weighting
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.grad_clip_norm = grad_clip_norm
        self.grad_cosine_every_n_steps = grad_cosine_every_n_steps
        self.run_config = run_config or {}
        # Keyed "<split>_split": a ModuleDict key may not shadow nn.Module.train.
        self.metrics = nn.ModuleDict(
            {f"{split}_split": nn.ModuleDict({t.name: task_metrics(t) for t in self.tasks}) for split in SPLITS}
        )
        # Truth-based metrics (a simulator's tasks) on validation and test: {split: {task: {name: metric}}}, and
        # the truth each reads ({task: {name: "propensity" or "outcome"}}).
        truth_tasks = [t for t in self.tasks if t.truth]
        self._truth_sources = {t.name: {name: source for name, (_, source) in kind_of(t).truth_metrics(t).items()}
                               for t in truth_tasks}
        self.truth_metrics = nn.ModuleDict({
            f"{split}_split": nn.ModuleDict({
                t.name: nn.ModuleDict({name: metric for name, (metric, _) in kind_of(t).truth_metrics(t).items()})
                for t in truth_tasks
            }) for split in ("val", "test")
        })
        self.results: dict[str, Any] = {}  # the last evaluation's metrics and gate means, by split
        self._gates = GateStatistics()
        self._epoch_sums: Tensor | None = None  # this epoch's summed (loss, task losses...) over its steps
        self._eval_sums: Tensor | None = None  # this evaluation's (rows x (trained loss, task losses...)) summed, rows
        self._eval_rows = 0
        self._epoch_steps = 0
        self._cosines: list[Tensor] = []  # this epoch's measured (T, T) task-gradient cosines
        self._plain_step = False
        self._shared: list[nn.Parameter] = []

    # --- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    def on_fit_start(self) -> None:
        precision = str(self.trainer.precision)
        # manual_backward is what lets DDP sync gradients: the plain path is for one process only.
        self._plain_step = plain_step_possible(precision, self.grad_clip_norm, self.trainer.world_size)
        self._shared = self.model.shared_parameters()

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.current_epoch)
        self._epoch_sums, self._epoch_steps, self._cosines = None, 0, []

    def forward(self, batch: Batch) -> MTLOutput:
        return self.objective(batch, (), training=False)[0]

    def objective(self, batch: Batch, scored: Sequence[TaskSpec], training: bool) -> tuple[MTLOutput, Tensor]:
        """The forward pass and the losses of the ``scored`` tasks on a batch (``batch_objective``)."""
        return batch_objective(self.model, self.model, self.tasks, scored, batch["numeric"], batch["categorical"],
                               batch["labels"], batch.get("weight"), training)

    def training_step(self, chunk: list[Batch], batch_idx: int) -> None:
        opt = self.optimizers()
        backward = Tensor.backward if self._plain_step else self.manual_backward
        writes = self.weighting.writes_gradients
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        first_step = self.global_step  # Lightning's counter lags on the plain path: count from the chunk's start
        step_values: list[Tensor] = []  # (loss, task losses, weights[, aux]) of every step, summed once per chunk
        outputs: list[MTLOutput] = []
        for offset, batch in enumerate(chunk):
            out, losses = self.objective(batch, self.trained, training=True)
            step = first_step + offset
            if step == 0:
                warning = loss_scale_warning(losses, [t.name for t in self.trained])
                if warning:
                    rank_zero_warn(warning)
            if self._shared and self.grad_cosine_every_n_steps and step % self.grad_cosine_every_n_steps == 0:
                self._cosines.append(task_gradient_cosines(losses, self._shared).detach())
            opt.zero_grad(set_to_none=True)
            result = self.weighting.step(StepInputs(
                losses=losses, output=out, model=self.model, shared=self._shared, backward=backward, step=step,
                epoch=self.current_epoch, grad_scale=float(scaler.get_scale()) if writes and scaler is not None else 1.0,
                recompute_losses=lambda batch=batch: self._recomputed_losses(batch),
            ))
            if writes and self.trainer.world_size > 1:
                self._average_gradients()
            if self._plain_step:
                opt.optimizer.step()
            else:
                if self.grad_clip_norm is not None:
                    self.clip_gradients(opt, gradient_clip_val=self.grad_clip_norm, gradient_clip_algorithm="norm")
                opt.step()
            self.weighting.on_after_optimizer_step()
            step_values += [result.loss.view(1), losses.detach(), result.weights.to(losses)]
            if out.aux_loss is not None:  # the same models return one every step: the rows stay the same length
                step_values.append(out.aux_loss.detach().view(1))
            outputs.append(out)
        if self._plain_step:
            count_optimizer_steps(self.trainer, len(chunk))
        steps = len(chunk)
        sums = torch.cat(step_values).view(steps, -1).float().sum(0)  # (1 + 2 tasks [+ aux],) in float32
        self._epoch_sums = sums if self._epoch_sums is None else self._epoch_sums + sums
        self._epoch_steps += steps
        # self.log costs ~0.5 ms a call on CPU even on chunks whose values no logger writes, so the step loss is
        # logged only where the loggers write it (trainer.log_every_n_steps, counted in chunks) and the epoch
        # means at epoch end: the same train/loss_step and train/loss_epoch values Lightning's on_step + on_epoch
        # logging gave, for a fraction of the calls.
        if should_update_logs(self.trainer):
            self.log("train/loss_step", sums[0] / steps, on_step=True, on_epoch=False, prog_bar=True)
        logits = {t.name: torch.cat([o.logits[t.name].detach() for o in outputs]) for t in self.tasks}
        self.update_metrics("train", logits, {t.name: torch.cat([b["labels"][t.name] for b in chunk]) for t in self.tasks})
        if is_last_batch(self.trainer):
            self._finish_training_epoch()

    @torch.no_grad()
    def _recomputed_losses(self, batch: Batch) -> Tensor:
        return self.objective(batch, self.trained, training=False)[1]

    def _average_gradients(self) -> None:
        """Average the gradients a weighting wrote itself across DDP ranks: DDP's hooks never saw them.

        What is averaged is each rank's aggregated gradient (the aggregation of its own batch's Jacobian),
        not an aggregation of the mean Jacobian; see docs/weighting.md.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.trainer.world_size
        offset = 0
        for param in params:
            param.grad = flat[offset: offset + param.numel()].view_as(param).clone()
            offset += param.numel()

    def _finish_training_epoch(self) -> None:
        """The end of a training epoch, run in its last step: before validation, so the checkpoint written
        after validation already holds what the epoch changed (the weighting's loss history, the scheduler),
        and a run resumed from it continues exactly where the uninterrupted one would."""
        if self._epoch_sums is None:
            return
        loss = self._epoch_sums[0]
        if not bool(torch.isfinite(loss)):
            raise divergence(float(loss), self.current_epoch, self.optimizers().param_groups[0]["lr"])
        means = self._epoch_sums / self._epoch_steps
        # Logged once per epoch from a training step: batch_size=1 only stops Lightning guessing one.
        if self.trainer.world_size > 1:  # the weighting's epoch hook must see the same losses on every rank
            means = self.trainer.strategy.reduce(means, reduce_op="mean")
        num = len(self.trained)
        task_losses, weights = means[1: 1 + num], means[1 + num: 1 + 2 * num]
        self.log("train/loss_epoch", means[0], on_step=False, on_epoch=True, batch_size=1)
        self.log("train/loss", means[0], on_step=False, on_epoch=True, logger=False, batch_size=1)
        for i, task in enumerate(self.trained):
            self.log(f"train/{task.name}/loss", task_losses[i], on_step=False, on_epoch=True, batch_size=1)
            self.log(f"train/weight/{task.name}", weights[i], on_step=False, on_epoch=True, batch_size=1)
        if len(means) > 1 + 2 * num:
            self.log("train/aux_loss", means[-1], on_step=False, on_epoch=True, batch_size=1)
        record = self.results.setdefault("weighting", {})
        record["weights"] = {t.name: round(float(w), 6) for t, w in zip(self.trained, weights)}
        if self._cosines:
            cosines = torch.stack(self._cosines).mean(0)
            if self.trainer.world_size > 1:
                cosines = self.trainer.strategy.reduce(cosines, reduce_op="mean")
            pairs = {key: cosines[i, j] for i, j, key in cosine_pairs([t.name for t in self.trained])}
            for key, value in pairs.items():
                self.log(f"train/grad_cosine/{key}", value, on_step=False, on_epoch=True, batch_size=1)
            record["grad_cosine"] = {key: round(float(v), 6) for key, v in pairs.items()}  # the last epoch measured
        self.weighting.on_train_epoch_end(task_losses)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def on_train_epoch_end(self) -> None:
        self._log_split("train")

    def on_train_end(self) -> None:
        if self.trainer.world_size > 1:
            # Data parallelism is only right while every rank holds the same model: check it once, cheaply.
            flat = torch.cat([p.detach().flatten() for p in self.parameters()]).double()
            gathered = self.all_gather(flat)
            self.results["ddp"] = {"world_size": self.trainer.world_size,
                                   "max_param_diff_across_ranks": float((gathered - gathered[0]).abs().max())}

    # --- evaluation --------------------------------------------------------------------------------
    def update_metrics(self, split: str, logits: dict[str, Tensor], labels: dict[str, Tensor],
                       truth: dict[str, dict[str, Tensor]] | None = None,
                       gates: dict[str, Tensor] | None = None) -> None:
        """Update every task's metrics of ``split`` with a batch's (or a chunk's) logits, and the gate statistics
        with its gate weights. A stacked run calls this for each replica's module with that replica's slice."""
        for task in self.tasks:
            self._update_task_metrics(split, task, logits[task.name], labels, truth)
        if gates is not None:
            self._gates.update(gates, logits[self.tasks[0].name].shape[0])

    def _update_task_metrics(self, split: str, task: TaskSpec, logits: Tensor, labels: dict[str, Tensor],
                             truth: dict[str, dict[str, Tensor]] | None = None) -> None:
        """Update a task's metrics with the rows whose label is observed (all rows but under ``observed_if``),
        and its truth-based metrics with every row."""
        kind, target = kind_of(task), labels[task.name]
        preds = kind.predict(task, logits.float())  # row by row, so the observed rows' are a slice of it
        if truth is not None and task.name in self._truth_sources and f"{split}_split" in self.truth_metrics:
            for name, source in self._truth_sources[task.name].items():
                value = truth[task.name][source]
                self.truth_metrics[f"{split}_split"][task.name][name].update(
                    preds, value.long() if source == "outcome" else value)
        observed = observed_rows(task, labels)
        if observed is not None:
            preds, target = preds[observed], target[observed]
        self.metrics[f"{split}_split"][task.name].update(preds, kind.metric_target(task, target))

    def _eval_step(self, batch: Batch, split: str) -> None:
        out, losses = self.objective(batch, self.tasks, training=False)
        rows = batch["numeric"].shape[0]
        trained = losses[[i for i, t in enumerate(self.tasks) if t in self.trained]].sum()
        sums = torch.cat([trained.view(1), losses]).detach().float() * rows
        self._eval_sums = sums if self._eval_sums is None else self._eval_sums + sums
        self._eval_rows += rows
        self.update_metrics(split, out.logits, batch["labels"], batch.get("truth"), out.gates)

    def _eval_losses(self, split: str) -> dict[str, Tensor]:
        """The evaluation's row-weighted mean losses, by logged name, over every rank (then reset)."""
        sums = torch.cat([self._eval_sums, self._eval_sums.new_tensor([self._eval_rows])])
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        means = sums[:-1] / sums[-1]
        self._eval_sums, self._eval_rows = None, 0
        return {f"{split}/loss": means[0], **{f"{split}/{t.name}/loss": means[1 + i] for i, t in enumerate(self.tasks)}}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    def _log_split(self, split: str) -> None:
        logged, result = self.split_results(split, self.all_gather)
        if split != "train" and self._eval_sums is not None:
            logged.update(self._eval_losses(split))
        # Every value is already the same on every rank (torchmetrics synced the metrics, _eval_losses and
        # _finish_training_epoch reduce the losses), so nothing is logged with sync_dist. Lightning would run that
        # collective whenever someone reads the value, and the progress bar reads on rank 0 alone: rank 0 then
        # waits in Lightning's all_reduce while the other ranks wait in the next hook's all_gather, for ever.
        monitor = str(self.run_config.get("monitor", "val/norm_loss"))
        self.log_dict({k: v for k, v in logged.items() if k != monitor})
        if monitor in logged:  # shown in the progress bar after every validation
            self.log(monitor, logged[monitor], prog_bar=True)
        self.results[split] = result

    def metric_directions(self) -> dict[str, dict[str, str]]:
        """Which way each metric ``split_results`` reports improves, by task and metric name, as the metric
        objects declare it (metrics.json's ``directions``)."""
        truth = self.truth_metrics["val_split"]
        return {task: {name: direction(metric)
                       for name, metric in [*collection.items(), *(truth[task].items() if task in truth else [])]}
                for task, collection in self.metrics["val_split"].items()}

    def split_results(self, split: str, gather: Callable[[Tensor], Tensor]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The split's metrics since the last call (then reset): the values to log, by logged name, and the
        record for metrics.json (``tasks``, ``norm_loss``, gate statistics, diagnostics). ``gather`` collects a
        tensor from every DDP rank (``all_gather``)."""
        values: dict[str, dict[str, float]] = {}
        logged: dict[str, Tensor] = {}
        for task in self.tasks:
            collection = self.metrics[f"{split}_split"][task.name]
            computed = dict(collection.compute())
            collection.reset()
            if f"{split}_split" in self.truth_metrics and task.name in self.truth_metrics[f"{split}_split"]:
                for name, metric in self.truth_metrics[f"{split}_split"][task.name].items():
                    computed[name] = metric.compute()
                    metric.reset()
            values[task.name] = {k: float(v) for k, v in computed.items()}
            logged.update({f"{split}/{task.name}/{k}": v for k, v in computed.items()})
        norm = torch.stack([logged[f"{split}/{t.name}/norm_loss"] for t in self.tasks]).mean()
        logged[f"{split}/norm_loss"] = norm
        result: dict[str, Any] = {"tasks": values, "norm_loss": float(norm)}
        widths = {name: len(experts) for name, experts in self.model.gate_experts().items()}
        if split != "train" and widths:
            means, active, histograms = self._gates.report(widths, gather, self.device)
            for name, mean in means.items():
                logged.update({f"{split}/gate/{name}/expert_{e}": v.float() for e, v in enumerate(mean)})
                logged[f"{split}/gate/{name}/active"] = torch.tensor(active[name]["per_row_mean"], device=self.device)
            result["gates"] = {name: [round(float(v), 6) for v in mean] for name, mean in means.items()}
            result["gate_active"] = active
            result["gate_hist"] = {name: [[int(c) for c in row] for row in counts] for name, counts in histograms.items()}
        if split != "train":
            diagnostics = self.model.diagnostics()
            for name, value in diagnostics.items():
                flat = value.detach().float().flatten()
                logged.update({f"{split}/model/{name}" + (f"/{i}" if flat.numel() > 1 else ""): v for i, v in enumerate(flat)})
            result["diagnostics"] = {name: value.detach().float().cpu().tolist() for name, value in diagnostics.items()}
        self._gates = GateStatistics()
        return logged, result

    # --- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints are shared like run folders. `mtlexp eval` rebuilds data and model from this config; a data
        # source that needs its password is given again there (data.<key>=...).
        checkpoint["mtlexp"] = {"config": redact_values(self.run_config)}
