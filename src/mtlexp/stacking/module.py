"""The Lightning module of a stacked run: K seeds of one configuration trained as one vectorised model.

Each replica has what a single run with its seed has: its initial parameters and its data module (its data
where the seed generates data, and its training order), all built exactly as that single run builds them.
A ``Replica`` keeps replica k's own ``MTLModule`` for everything but the arithmetic: its metrics, gate
statistics, task specs and checkpoint format. Every step runs all replicas' forward passes, losses and
backward pass at once (``StackedModel.native`` when every block of the model carries the replica dimension,
``StackedModel.vectorised`` otherwise: ``stack_route``); then each replica's metrics, model selection and early
stopping are its own, as the ``ModelCheckpoint`` and ``EarlyStopping`` callbacks would have done them.

Weightings: fixed weights (equal, static) are applied to every replica's losses at once. A weighting with
state or draws (uncertainty, DWA, RLW: those with no ``stack_refusal``) stays each replica's own module,
called at every step with that replica's losses, step and epoch as its single run calls it: its parameters
(uncertainty's log-variances) are trained with the replica's slice of the model by the same optimizer, its
buffers (DWA's loss history) take the replica's own epoch losses, its draws (RLW's) come from the replica's
seed. Methods that need one replica's task gradients (GradNorm, the aggregators) are refused with their reason.

What a stacked run does not do besides: task-gradient cosines, and several devices.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.trainer.states import TrainerFn
import torch
from torch import Tensor, nn

from mtlexp.data.tensors import Batch
from mtlexp.errors import MtlexpError
from mtlexp.lightning_compat import count_optimizer_steps, early_stopping_says_stop, is_last_batch, logging_step
from mtlexp.module import MTLModule
from mtlexp.models.base import MTLOutput
from mtlexp.objective import divergence, output_losses, plain_step_possible
from mtlexp.redact import redact_values
from mtlexp.specs import FeatureSpec
from mtlexp.stacking.model import StackedModel
from mtlexp.weighting.base import StepInputs

log = logging.getLogger(__name__)
# Rows per replica a stacked run's training outputs are buffered for before its replicas' metrics are updated
# (and at every epoch's end): bounds the buffer, (K x rows x tasks) values, on large data sets.
TRAIN_METRIC_ROWS = 1 << 18


@dataclass
class ReplicaState:
    """Model selection of one replica (what its checkpoint callback would hold) and how it ended; its early
    stopping state is its own copy of the run's ``EarlyStopping`` callback."""

    best_score: float | None = None
    best_epoch: int | None = None
    stopped_epoch: int | None = None  # the last epoch it trained, once early stopping stopped it
    failed: str | None = None  # why it failed (it diverged)
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.stopped_epoch is None and self.failed is None


class StackedModule(pl.LightningModule):
    """Trains K replicas (``MTLModule`` s of one configuration, one per seed) as one vectorised model.

    :param replicas: the replicas' modules, built as their single runs build them.
    :param features: the data's feature spec (for a first vectorised pass that checks the architecture).
    :param monitor: the validation value that selects each replica's best epoch (the checkpoint callback's).
    :param mode: ``min`` or ``max`` (the checkpoint callback's).
    :param early_stopping: the run's ``EarlyStopping`` callback (None: none); each replica stops by the rule and
        settings of its own copy of it, as its single run would.
    :param on_best: called with (replica index, epoch) when a replica's monitor improves: saves its checkpoint.
    :param on_epoch: called with (replica index, logged values, step) once per epoch and active replica.
    """

    def __init__(self, replicas: Sequence[MTLModule], features: FeatureSpec, monitor: str, mode: str,
                 early_stopping: EarlyStopping | None = None, on_best: Any = None, on_epoch: Any = None) -> None:
        super().__init__()
        first = replicas[0]
        weights = [replica.weighting.fixed_weights() for replica in replicas]
        for replica, fixed in zip(replicas, weights):
            refusal = replica.weighting.stack_refusal
            if fixed is None and refusal:
                raise MtlexpError(f"stack: weighting {type(replica.weighting).__name__} cannot be stacked: {refusal}; "
                                  "sweep the seeds instead (seed=0,1,2)")
        self.automatic_optimization = False
        self.replicas = list(replicas)  # plain list: their models' parameters are not the ones trained
        self.model = StackedModel([r.model for r in replicas])
        # The replicas' own weightings are trained, moved and checkpointed with the stack (after the model, as in
        # a single run's optimizer); their state is replica k's own, so its best checkpoint holds it as it is.
        self.weightings = nn.ModuleList([r.weighting for r in replicas])
        self.tasks, self.trained = first.tasks, first.trained
        fixed_for_all = all(w is not None for w in weights)
        self.register_buffer("task_weights", torch.stack(weights).float() if fixed_for_all else None)
        self.monitor, self.mode = monitor, mode
        self.on_best, self.on_epoch = on_best, on_epoch
        self.states = [ReplicaState() for _ in replicas]
        self.stoppers = [copy.deepcopy(early_stopping) for _ in replicas] if early_stopping is not None else []
        self._plain_step = True
        self._epoch_sums: Tensor | None = None
        self._epoch_steps = 0
        self._eval_sums: dict[str, Tensor] = {}
        self.epoch_means: dict[str, float] = {}  # the last validation epoch's values, by name, over active replicas
        self._train_outputs: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []
        self._train_rows = 0
        self.route = self._check_vectorises(features)

    @property
    def num_replicas(self) -> int:
        return len(self.replicas)

    def _check_vectorises(self, features: FeatureSpec) -> str:
        """The route (``stack_route``: native when asked or, on ``auto``, when every block of the model carries the
        replica dimension; vmap otherwise), checked by two training-mode forward passes on a tiny batch now: an
        architecture that cannot run on it fails here with its name, not in the middle of the first epoch; one
        that draws random numbers (dropout, noisy gates) gets a warning, since its replicas' draws are not their
        single runs'. The global random state is left as it was, so that the replicas still train as their
        single runs do."""
        first = self.replicas[0]
        name = first.run_config.get("model", {}).get("_name_") or type(first.model).__name__
        wanted = str(first.run_config.get("stack_route", "auto"))
        unsupported = self.model.native_unsupported
        if wanted == "native" and unsupported is not None:
            raise MtlexpError(f"stack_route: native needs every block of model {name} to carry the replica "
                              f"dimension, but {unsupported}; use stack_route=auto (or vmap)")
        routes = ["native", "vmap"] if wanted != "vmap" and unsupported is None else ["vmap"]
        k = self.num_replicas
        numeric = torch.linspace(-1, 1, k * 2 * features.num_numeric).view(k, 2, features.num_numeric)
        categorical = torch.zeros(k, 2, len(features.categorical), dtype=torch.long)
        for route in routes:
            forward = (self.model.vectorised(lambda call, n, c: call(n, c).logits) if route == "vmap"
                       else lambda n, c: self.model.native(n, c).logits)
            with torch.random.fork_rng(devices=[]):
                try:
                    outputs = [forward(numeric, categorical) for _ in range(2)]
                    break
                except MtlexpError:
                    raise
                except Exception as error:  # noqa: BLE001 - any failure here means the route cannot run the model
                    reason = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                    if route == "vmap":
                        raise MtlexpError(f"stack: model {name} cannot be vectorised with torch.func.vmap "
                                          f"({reason}); use stack=1") from None
                    if wanted == "native":
                        raise MtlexpError(f"stack_route: native cannot run model {name} ({reason}); use "
                                          "stack_route=vmap") from None
                    log.warning("stack: the native route cannot run model %s (%s); falling back to vmap", name, reason)
        log.info("stack: %d replicas of model %s on the %s route", k, name, route)
        if any(not torch.equal(outputs[0][task], outputs[1][task]) for task in outputs[0]):
            log.warning("stack: model %s draws random numbers in training (dropout or noisy gates): each replica "
                        "draws its own, but not the draws of the single run with its seed", name)
        return route

    # --- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        first = self.replicas[0]
        optimizer = first.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if first.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": first.scheduler_factory(optimizer)}

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            raise MtlexpError("stack: a stacked run trains on one device; use stack=1 with DDP")
        # Clipping is this module's own, per replica (_clip_per_replica), so it never needs Lightning's path.
        self._plain_step = plain_step_possible(self.trainer.precision)
        for replica in self.replicas:  # their metrics live on the training device too
            replica.to(self.device)

    def on_train_epoch_start(self) -> None:
        for loader in self.trainer.train_dataloader:  # Lightning gives the CombinedLoader's iterables
            loader.set_epoch(self.current_epoch)
        self._epoch_sums, self._epoch_steps = None, 0
        self._train_outputs, self._train_rows = [], 0

    def _losses(self, out: MTLOutput, labels: dict[str, Tensor], weight: Tensor | None,
                tasks: Sequence[Any]) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """One replica's ``output_losses`` (under vmap), as tensors: (task losses (T,), aux (), logits, gates)."""
        template = self.model.template
        out, losses = output_losses(out, template, self.tasks, tasks, labels, weight, template.training)
        aux = out.aux_loss
        return losses, losses.new_zeros(()) if aux is None else aux, out.logits, out.gates

    def _run(self, batches: Sequence[Batch], tasks: Sequence[Any]) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Every replica's ``_losses`` on its own batch, at once: (K, T), (K,), {task: (K, B, ...)}, {gate: (K, B, E)}."""
        stacked = _stack_batches(batches)
        numeric, categorical, labels = stacked["numeric"], stacked["categorical"], stacked["labels"]
        weight = stacked.get("weight")
        if self.route == "native":
            out = self.model.native(numeric, categorical)

            def losses(logits: Any, gates: Any, aux: Any, extras: Any, labels: Any, weight: Any) -> Any:
                return self._losses(MTLOutput(logits, gates, aux, extras), labels, weight, tasks)

            # The losses (masks, derived tasks, a model's extra loss) stay one replica's code, vmapped: cheap ops.
            inputs = (out.logits, out.gates, out.aux_loss, out.extras, labels, weight)
            return torch.func.vmap(losses, in_dims=tuple(None if x is None else 0 for x in inputs))(*inputs)

        def one(call: Any, numeric: Tensor, categorical: Tensor, labels: dict[str, Tensor], *rest: Tensor) -> Any:
            return self._losses(call(numeric, categorical), labels, rest[0] if rest else None, tasks)

        return self.model.vectorised(one)(numeric, categorical, labels, *([weight] if weight is not None else []))

    def _step_weights(self, losses: Tensor, step: int) -> tuple[Tensor, Tensor | None]:
        """This step's ``(K, T)`` task weights and ``(K,)`` weighting regularisers (None: none): the fixed weights,
        or each replica's own weighting called with its own losses, as its single run calls it."""
        if self.task_weights is not None:
            return self.task_weights, None
        weights, extras = [], []
        for k, weighting in enumerate(self.weightings):
            weights.append(weighting.weights(StepInputs.of_replica(losses[k], step, self.current_epoch)))
            extras.append(weighting.regularizer())
        if all(extra is None for extra in extras):
            return torch.stack(weights), None
        return torch.stack(weights), torch.stack([losses.new_zeros(()) if e is None else e for e in extras])

    def training_step(self, chunks: list[list[Batch]], batch_idx: int) -> None:
        opt = self.optimizers()
        active = torch.tensor([s.active for s in self.states], device=self.device)
        steps = len(chunks[0])
        first_step = self.global_step  # Lightning's counter lags on the plain path: count from the chunk's start
        step_values: list[Tensor] = []
        logits_per_step: list[dict[str, Tensor]] = []
        for offset in range(steps):
            losses, aux, logits, _ = self._run([chunk[offset] for chunk in chunks], self.trained)
            weights, extra = self._step_weights(losses, first_step + offset)
            per_replica = (weights * losses).sum(1)  # (K,), summed in the order of a single run's objective
            if extra is not None:
                per_replica = per_replica + extra
            per_replica = per_replica + aux
            opt.zero_grad(set_to_none=True)
            # Replicas that stopped or failed keep stepping (their best checkpoint is already written), but
            # without a gradient from their loss, which may no longer be finite.
            objective = torch.where(active, per_replica, 0.0).sum()
            if self._plain_step:
                objective.backward()
            else:
                self.manual_backward(objective)
            clip = self.replicas[0].grad_clip_norm
            if clip is not None:
                self._clip_per_replica(float(clip))
            if self._plain_step:
                opt.optimizer.step()
            else:
                opt.step()
            for weighting in self.weightings:
                weighting.on_after_optimizer_step()
            step_values.append(torch.cat([per_replica.detach()[:, None], losses.detach(),
                                          weights.detach().to(losses), aux.detach()[:, None]], 1))
            logits_per_step.append({name: value.detach() for name, value in logits.items()})
        if self._plain_step:
            count_optimizer_steps(self.trainer, steps)
        sums = torch.stack(step_values).float().sum(0)  # (K, 1 + 2T + 1)
        self._epoch_sums = sums if self._epoch_sums is None else self._epoch_sums + sums
        self._epoch_steps += steps
        self._train_outputs.append((
            {t.name: torch.cat([step[t.name] for step in logits_per_step], 1) for t in self.tasks},  # (K, rows, ...)
            {name: torch.stack([torch.cat([b["labels"][name] for b in chunk]) for chunk in chunks])
             for name in chunks[0][0]["labels"]}))
        self._train_rows += self._train_outputs[-1][1][self.tasks[0].name].shape[1]
        if self._train_rows >= TRAIN_METRIC_ROWS:
            self._update_train_metrics()
        if is_last_batch(self.trainer):
            self._finish_training_epoch()

    def _clip_per_replica(self, max_norm: float) -> None:
        """Each replica's gradient clipped to its own global norm, as its run's ``clip_gradients`` would (its
        weighting's parameters included: its single run's optimizer holds them too)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        squares = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0)  # (K,)
        own = [[p.grad for p in weighting.parameters() if p.grad is not None] for weighting in self.weightings]
        if any(own):
            squares = squares + torch.stack([sum((g.pow(2).sum() for g in gs), squares.new_zeros(())) for gs in own])
        scale = (max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(scale.view(-1, *([1] * (grad.dim() - 1))))
        for k, gs in enumerate(own):
            for grad in gs:
                grad.mul_(scale[k])

    def _update_train_metrics(self) -> None:
        """Every active replica's training metrics updated with the chunks buffered since the last call: once per
        replica for many chunks, since K replicas x T tasks x their metrics made hundreds of small updates per epoch
        when updated chunk by chunk. Each replica still sees every row its single run's metrics see."""
        if not self._train_outputs:
            return
        logits, labels = ({name: torch.cat([out[i][name] for out in self._train_outputs], 1)
                           for name in self._train_outputs[0][i]} for i in (0, 1))
        self._train_outputs, self._train_rows = [], 0
        for k, replica in enumerate(self.replicas):
            if self.states[k].active:
                replica.update_metrics("train", {name: value[k] for name, value in logits.items()},
                                       {name: value[k] for name, value in labels.items()})

    def _finish_training_epoch(self) -> None:
        self._update_train_metrics()
        means = self._epoch_sums / self._epoch_steps  # (K, 1 + 2T + 1)
        num = len(self.trained)
        for k, state in enumerate(self.states):
            if not state.active:
                continue
            loss = float(means[k, 0])
            if not math.isfinite(loss):
                state.failed = str(divergence(loss, self.current_epoch, self.optimizers().param_groups[0]["lr"]))
                continue
            values = {"train/loss_epoch": loss}
            for i, task in enumerate(self.trained):
                values[f"train/{task.name}/loss"] = float(means[k, 1 + i])
                values[f"train/weight/{task.name}"] = float(means[k, 1 + num + i])
            if bool(means[:, -1].abs().sum() > 0):
                values["train/aux_loss"] = float(means[k, -1])
            state.history.append(values)
            self.replicas[k].results.setdefault("weighting", {})["weights"] = {
                t.name: round(float(means[k, 1 + num + i]), 6) for i, t in enumerate(self.trained)}
            self.weightings[k].on_train_epoch_end(means[k, 1: 1 + num])
        if all(s.failed for s in self.states):
            raise MtlexpError("every replica failed: " + self.states[0].failed)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def on_train_epoch_end(self) -> None:
        for k, (replica, state) in enumerate(zip(self.replicas, self.states)):
            if state.active or state.stopped_epoch == self.current_epoch:  # it trained this epoch
                self._emit(k, replica.split_results("train", _no_gather)[0], self.states[k].history[-1:])

    # --- evaluation --------------------------------------------------------------------------------
    def validation_step(self, batches: list[Batch], batch_idx: int) -> None:
        self._eval_step(batches, "val")

    def test_step(self, batches: list[Batch], batch_idx: int) -> None:
        self._eval_step(batches, "test")

    def _eval_step(self, batches: list[Batch], split: str) -> None:
        losses, _, logits, gates = self._run(batches, self.tasks)
        rows = batches[0]["numeric"].shape[0]
        trained = torch.tensor([t in self.trained for t in self.tasks], device=self.device)
        sums = torch.cat([(losses * trained).sum(1, keepdim=True), losses], 1).detach() * rows  # (K, 1 + T)
        self._eval_sums["losses"] = self._eval_sums.get("losses", 0) + sums
        self._eval_sums["rows"] = self._eval_sums.get("rows", 0) + rows
        for k, replica in enumerate(self.replicas):
            batch = batches[k]
            replica.update_metrics(split, {name: value[k] for name, value in logits.items()}, batch["labels"],
                                   batch.get("truth"), {name: g[k] for name, g in gates.items()})

    def _split_results(self, split: str) -> list[tuple[dict[str, Tensor], dict[str, Any]]]:
        """Every replica's (logged values, metrics.json record) of the split, as its own module gives them."""
        means = self._eval_sums.pop("losses") / self._eval_sums.pop("rows")
        results = []
        for k, replica in enumerate(self.replicas):
            # The replica's own model holds its current parameters, for the diagnostics it reports.
            replica.model.load_state_dict(self.model.replica_state_dict(k))
            logged, result = replica.split_results(split, _no_gather)
            logged[f"{split}/loss"] = means[k, 0]
            logged.update({f"{split}/{t.name}/loss": means[k, 1 + i] for i, t in enumerate(self.tasks)})
            results.append((logged, result))
        return results

    def on_validation_epoch_end(self) -> None:
        results = self._split_results("val")
        if self.trainer.state.fn != TrainerFn.FITTING:  # the final evaluation of the best checkpoints
            self._record("val", results)
            return
        if self.trainer.sanity_checking:
            return
        epoch = self.current_epoch
        validated = []
        for k, (state, (logged, _)) in enumerate(zip(self.states, results)):
            if not state.active:
                continue
            if self.monitor not in logged:
                raise MtlexpError(f"monitor: {self.monitor!r} is not logged; logged values: {sorted(logged)}")
            self._select(k, state, float(logged[self.monitor]), epoch)
            self._emit(k, logged)
            validated.append(logged)
        # The run as one trial of a study (pruning) reports the mean over the replicas that trained this epoch.
        self.epoch_means = {name: sum(float(v[name]) for v in validated) / len(validated)
                            for name in (validated[0] if validated else {})}
        if not any(s.active for s in self.states):
            self.trainer.should_stop = True

    def on_test_epoch_end(self) -> None:
        self._record("test", self._split_results("test"))

    def _record(self, split: str, results: list[tuple[dict[str, Tensor], dict[str, Any]]]) -> None:
        for k, (replica, (logged, result)) in enumerate(zip(self.replicas, results)):
            replica.results[split] = result
            if not self.states[k].failed:
                self._emit(k, logged)

    def load_best(self, states: list[dict[str, Tensor] | None]) -> None:
        """Put each replica's best parameters (its model's state dict; None: keep the current ones) in place for
        the final evaluation. A replica without any, diverged, is zeroed so that its metrics stay finite."""
        for k, state in enumerate(states):
            if state is not None:
                self.model.load_replica(k, state)
            elif self.states[k].failed:
                self.model.load_replica(k, {n: torch.zeros_like(v) for n, v in self.model.replica_state_dict(k).items()})

    def _select(self, k: int, state: ReplicaState, score: float, epoch: int) -> None:
        """ModelCheckpoint's rule (a strictly better score saves the best checkpoint), then the replica's own copy
        of the EarlyStopping callback decides whether it stops."""
        sign = 1.0 if self.mode == "min" else -1.0
        if math.isfinite(score) and (state.best_score is None or sign * score < sign * state.best_score):
            state.best_score, state.best_epoch = score, epoch
            if self.on_best is not None:
                self.on_best(k, epoch)
        if self.stoppers and early_stopping_says_stop(self.stoppers[k], score):
            state.stopped_epoch = epoch
        elif not self.stoppers and not math.isfinite(score):
            state.stopped_epoch = epoch  # nothing to select any more: no later epoch can be compared to this one

    def _emit(self, k: int, logged: dict[str, Tensor], extra: list[dict[str, float]] = ()) -> None:
        """Replica k's values of this epoch to its loggers (``extra``: the epoch's train losses, which travel
        with its train metrics)."""
        if self.on_epoch is not None:
            values = {name: float(v) for name, v in logged.items()}
            for more in extra:
                values.update(more)
            self.on_epoch(k, {**values, "epoch": self.current_epoch}, logging_step(self.trainer))

    # --- resume ------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mtlexp_stack"] = {"states": [vars(s).copy() for s in self.states],
                                      "stoppers": [stopper.state_dict() for stopper in self.stoppers],
                                      "configs": [redact_values(r.run_config) for r in self.replicas]}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("mtlexp_stack", {}).get("states")
        if saved is None or len(saved) != self.num_replicas:
            raise MtlexpError("ckpt_path: not a checkpoint of a stacked run with this many replicas (stack)")
        self.states = [ReplicaState(**{k: v for k, v in state.items() if k != "wait"}) for state in saved]
        for stopper, stopper_state in zip(self.stoppers, checkpoint["mtlexp_stack"].get("stoppers", [])):
            stopper.load_state_dict(stopper_state)


def _stack_batches(batches: Sequence[Batch]) -> dict[str, Any]:
    """The replicas' batches as one batch with a leading replica dimension."""
    first = batches[0]
    rows = {b["numeric"].shape[0] for b in batches}
    if len(rows) > 1:
        raise MtlexpError(f"stack: the replicas' batches differ in size ({sorted(rows)}); their splits must be equal")
    stacked: dict[str, Any] = {
        "numeric": torch.stack([b["numeric"] for b in batches]),
        "categorical": torch.stack([b["categorical"] for b in batches]),
        "labels": {name: torch.stack([b["labels"][name] for b in batches]) for name in first["labels"]},
    }
    if first.get("weight") is not None:
        stacked["weight"] = torch.stack([b["weight"] for b in batches])
    return stacked


def _no_gather(tensor: Tensor) -> Tensor:
    """all_gather on one device: the tensor itself, with the leading rank dimension Lightning adds."""
    return tensor.unsqueeze(0)
