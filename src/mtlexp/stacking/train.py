"""``train_stacked(cfg)``: seeds ``seed .. seed+stack-1`` of one config as one vectorised run, crossed with the
values ``stack_over`` gives keys that change neither shapes nor the optimizer (``{data.correlation: [0.5, 1.0]}``).

Every replica gets the run folder its single run would have (``replicas/seed_<n>/`` under the run folder, or
``replicas/<key>_<value>/seed_<n>/`` with ``stack_over``): ``.hydra/`` with its own config and overrides (its
varied values and seed, as a ``-m`` sweep over them would write them), metrics.json, provenance.json, CSV and
TensorBoard logs and ``checkpoints/best.ckpt`` in the single-run format (``mtlexp eval`` reads it), so
``mtlexp report`` cannot tell them from sequential runs. The run folder itself keeps the stacked run's
``checkpoints/last.ckpt`` (resume with ``ckpt_path=``), a metrics.json that lists the replicas, and one gate
figure of the replicas' mean gates (a replica's gates are in its metrics.json).
"""

from __future__ import annotations

import copy
import io
import itertools
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.utilities import CombinedLoader

from mtlexp.artefacts import format_table, plot_gates
from mtlexp.checkpoint_io import AtomicCheckpointIO
from mtlexp.components import build_components
from mtlexp.errors import MtlexpError
from mtlexp.instantiate import build, build_all
from mtlexp.io import write_atomic, write_json
from mtlexp.models.names import model_name
from mtlexp.provenance import environment, provenance
from mtlexp.pruning import trial_pruning
from mtlexp.record import log_hyperparams, record_run, start_run_folder
from mtlexp.redact import redact
from mtlexp.run_record import STATUS, RunRecord, Status, update_record, write_record
from mtlexp.stacking.module import StackedModule

log = logging.getLogger(__name__)
REPLICAS = "replicas"


def replica_settings(cfg: DictConfig) -> list[tuple[dict[str, Any], int]]:
    """(varied values, seed) of every replica: each combination of ``stack_over``'s values, with every seed."""
    over = OmegaConf.to_container(cfg.stack_over) if cfg.get("stack_over") else {}
    return [(dict(zip(over, values)), int(cfg.seed) + k)
            for values in itertools.product(*over.values()) for k in range(int(cfg.stack))]


def replica_folders(root: Path, settings: list[tuple[dict[str, Any], int]]) -> list[Path]:
    """``replicas/seed_<n>``, below a folder per combination of varied values when there are any. A name keeps
    to characters a Hydra override carries unquoted, since ``ckpt_path=<replica>/checkpoints/best.ckpt`` names it."""
    folders = [root / REPLICAS / "-".join(f"{key}_{re.sub(r'[^A-Za-z0-9._-]+', '_', _override_value(value))}"
                                          for key, value in varied.items()) / f"seed_{seed}"
               for varied, seed in settings]
    if len(set(folders)) < len(folders):
        raise MtlexpError("stack_over: two replicas' values give the same folder name (values that differ only in "
                          "punctuation); sweep one of the keys instead")
    return folders


def replica_config(cfg: DictConfig, seed: int, output_dir: Path, varied: dict[str, Any] | None = None) -> DictConfig:
    """The config of the single run a replica stands for: its varied values, its seed, its folder, no stacking."""
    replica = copy.deepcopy(cfg)
    with open_dict(replica):
        for key, value in (varied or {}).items():
            OmegaConf.update(replica, key, value, merge=False)
        replica.seed = seed
        replica.stack = 1
        replica.stack_over = None
        replica.ckpt_path = None
        replica.paths.output_dir = str(output_dir)
    return replica


def write_hydra_folder(parent: Path, replica_dir: Path, cfg: DictConfig, seed: int,
                       varied: dict[str, Any] | None = None) -> None:
    """``.hydra/`` of a replica: its config, and the parent's overrides without ``stack`` and ``stack_over``,
    with its varied values and its seed, as a ``-m`` sweep over them would write them."""
    hydra_dir = replica_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(hydra_dir / "config.yaml", redact(OmegaConf.to_yaml(cfg)).encode())
    source = parent / ".hydra"
    overrides: list[str] = []
    if (source / "overrides.yaml").is_file():
        overrides = OmegaConf.to_container(OmegaConf.load(source / "overrides.yaml")) or []
    varied = varied or {}
    replaced = ("stack=", "stack_over=", "seed=", "ckpt_path=", *(f"{key}=" for key in varied))
    overrides = [o for o in overrides if not o.lstrip("+~").startswith(replaced)]
    overrides += [f"{key}={_override_value(value)}" for key, value in varied.items()]
    write_atomic(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create([*overrides, f"seed={seed}"])).encode())
    if (source / "hydra.yaml").is_file():
        shutil.copyfile(source / "hydra.yaml", hydra_dir / "hydra.yaml")
    else:  # composed without Hydra's app (tests): say which primary config it was
        write_atomic(hydra_dir / "hydra.yaml", b"hydra:\n  job:\n    config_name: config\n")


def _override_value(value: Any) -> str:
    """A value as a Hydra override spells it (``0.5``, ``[1,2]``, ``null``, ``true``)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def train_stacked(cfg: DictConfig) -> dict[str, Any]:
    started = time.time()
    pruning = trial_pruning(cfg, lambda trainer, stacked: stacked.epoch_means)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = replica_settings(cfg)
    seeds = [seed for _, seed in settings]
    folders = replica_folders(output_dir, settings)
    replicas = [str(f.relative_to(output_dir)) for f in folders]
    write_record(output_dir, RunRecord(status=Status.RUNNING, stack=len(seeds), replicas=replicas))
    configs, datas, modules, loggers, summaries = [], [], [], [], []
    env = environment()
    for (varied, seed), folder in zip(settings, folders):
        replica_cfg = replica_config(cfg, seed, folder, varied)
        start_run_folder(replica_cfg)
        write_hydra_folder(output_dir, folder, replica_cfg, seed, varied)
        pl.seed_everything(seed, workers=True, verbose=False)  # what the single run seeds before it builds
        data, module = build_components(replica_cfg)
        summary = data.describe()
        write_json(folder / "provenance.json", provenance(data.fingerprint(), summary, env))
        replica_loggers = build_all(replica_cfg.get("logger"), "logger")
        log_hyperparams(replica_cfg, replica_loggers, module)
        configs.append(replica_cfg), datas.append(data), modules.append(module)
        loggers.append(replica_loggers), summaries.append(summary)
    _check_shapes_agree(modules, replicas, cfg)
    if cfg.ckpt_path:
        _carry_best_checkpoints(Path(str(cfg.ckpt_path)), output_dir, folders)
    name = model_name(cfg.model)
    log.info("model %s: %d replicas (seeds %d-%d%s) stacked; data: %s", name, len(seeds), min(seeds), max(seeds),
             "".join(f", {key}: {values}" for key, values in (cfg.get("stack_over") or {}).items()),
             summaries[0]["rows"])

    def save_best(k: int, epoch: int) -> None:
        module = modules[k]
        module.model.load_state_dict(stacked.model.replica_state_dict(k))
        checkpoint = {"epoch": epoch, "global_step": stacked.global_step,
                      "pytorch-lightning_version": pl.__version__, "state_dict": module.state_dict(),
                      "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}
        module.on_save_checkpoint(checkpoint)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        path = folders[k] / "checkpoints" / "best.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getvalue())

    def log_epoch(k: int, values: dict[str, float], step: int) -> None:
        for logger in loggers[k]:
            logger.log_metrics(values, step)

    selecting, stopping = _selection_callbacks(cfg)
    # trainer.enable_checkpointing=false (debug=default): no checkpoint at all, as in a single run; the final
    # evaluation then sees the weights each replica ended with.
    checkpointing = cfg.trainer.get("enable_checkpointing", True) is not False
    stacked = StackedModule(
        modules, datas[0].features, monitor=str(selecting.monitor) if selecting else str(cfg.monitor),
        mode=str(selecting.mode) if selecting else str(cfg.monitor_mode), early_stopping=stopping,
        on_best=save_best if checkpointing else None, on_epoch=log_epoch)
    _check_replicas_agree(datas)
    last = ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="last", save_top_k=0, save_last=True,
                           enable_version_counter=False)
    flush = _SaveLoggers([logger for replica in loggers for logger in replica])
    callbacks = [*([last] if checkpointing else []), *([pruning] if pruning else []), flush]
    trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=False, plugins=[AtomicCheckpointIO()])
    trainer.fit(stacked,
                train_dataloaders=CombinedLoader([d.train_dataloader() for d in datas], "min_size"),
                val_dataloaders=CombinedLoader([d.val_dataloader() for d in datas], "min_size"),
                ckpt_path=cfg.ckpt_path)

    stacked.load_best([_best_state(folder, module) for folder, module in zip(folders, modules)])
    trainer.validate(stacked, dataloaders=CombinedLoader([d.val_dataloader() for d in datas], "min_size"), verbose=False)
    pruned_epoch = pruning.pruned_epoch if pruning else None
    if cfg.run_test and pruned_epoch is None:  # as a single run: a pruned trial is not tested
        trainer.test(stacked, dataloaders=CombinedLoader([d.test_dataloader() for d in datas], "min_size"), verbose=False)
    results, failures = [], []
    names = [str(f.relative_to(output_dir / REPLICAS)) for f in folders]
    for k, (state, folder) in enumerate(zip(stacked.states, folders)):
        if state.failed:
            failures.append((names[k], state.failed))
            update_record(folder, status=Status.FAILED, error=state.failed)
            for logger in loggers[k]:  # its logs up to the failure
                logger.finalize(Status.FAILED.value)
            continue
        best = folder / "checkpoints" / "best.ckpt"
        epochs = state.stopped_epoch + 1 if state.stopped_epoch is not None else trainer.current_epoch
        modules[k].results["replica"] = {"replica": k, "of": len(seeds), "stacked_run": str(output_dir)}
        replica = record_run(configs[k], datas[k], modules[k], loggers[k], str(best) if best.is_file() else None,
                             state.best_epoch if state.best_epoch is not None else trainer.current_epoch, epochs,
                             started, summaries[k], announce=False, pruned_epoch=pruned_epoch, gate_figure=False)
        for logger in loggers[k]:
            logger.finalize("success")
        results.append((names[k], replica))
    _log_summary(results, failures, output_dir)
    _plot_mean_gates([replica for _, replica in results], output_dir / "figures" / "gates.png")
    record = RunRecord(
        status=Status.FAILED if failures else Status.OK if pruned_epoch is None else Status.PRUNED,
        pruned_epoch=pruned_epoch, stack=len(seeds), model=name, replicas=replicas,
        # Means over the replicas: what a sweeper optimises (hparams_search with stack=K: the mean over K seeds).
        val=_mean_metrics([m.val or {} for _, m in results]),
        directions=results[0][1].directions if results else {},
        val_norm_loss=_mean([m.val_norm_loss for _, m in results]),
        test_norm_loss=_mean([m.test_norm_loss for _, m in results]),
        duration_s=round(time.time() - started, 2),
        error=f"{len(failures)} of {len(seeds)} replicas failed; {failures[0][0]}: {failures[0][1]}"
        if failures else None)
    write_record(output_dir, record)
    if record.error:
        raise MtlexpError(record.error)
    return record.to_json()


class _SaveLoggers(pl.Callback):
    """Writes the replicas' logs out once an epoch, when the next one starts (finalize writes the last): each
    logger's save() rewrites its files, once per logged value it cost a stacked run as much as its metrics."""

    def __init__(self, loggers: list[Any]) -> None:
        self.loggers = loggers

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in self.loggers:
            logger.save()


def _plot_mean_gates(records: list[RunRecord], path: Path) -> None:
    """One gate figure for the whole run, of the replicas' mean gate weights: drawing one per replica was the
    largest cost of a stacked run besides training. Each replica's own gates stay in its metrics.json, from which
    ``mtlexp report`` draws its figures."""
    gated = [record for record in records if record.gates]
    if not gated:
        return
    means = {gate: [sum(r.gates[gate][e] for r in gated) / len(gated) for e in range(len(values))]
             for gate, values in gated[0].gates.items()}
    plot_gates(means, path, title=f"{gated[0].model}: mean gate weights (val), mean of {len(gated)} replicas",
               experts=gated[0].gate_experts)


def _selection_callbacks(cfg: DictConfig) -> tuple[ModelCheckpoint | None, EarlyStopping | None]:
    """The run's built checkpoint callback that selects the best epoch (one with a monitor) and its early-stopping
    callback, whatever their config names: a stacked run applies their settings to each replica."""
    callbacks = build_all(cfg.get("callbacks"), "callbacks")
    selecting = next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    stopping = next((c for c in callbacks if isinstance(c, EarlyStopping)), None)
    return selecting, stopping


def _best_state(folder: Path, module: Any) -> dict[str, torch.Tensor] | None:
    """The model state dict of a replica's best checkpoint (None when it has none); the replica's module is left
    holding it, as a single run's module is after its final evaluation."""
    path = folder / "checkpoints" / "best.ckpt"
    if not path.is_file():
        return None
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])
    return module.model.state_dict()


def _carry_best_checkpoints(ckpt_path: Path, output_dir: Path, folders: list[Path]) -> None:
    """A resumed run writes a new folder: each replica starts from the best checkpoint the interrupted run
    wrote for it, which stays its best unless a later epoch beats the score restored with the states."""
    old_root = ckpt_path.resolve().parent.parent
    for folder in folders:
        old = old_root / folder.relative_to(output_dir) / "checkpoints" / "best.ckpt"
        if old.is_file():
            (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(old, folder / "checkpoints" / "best.ckpt")


def _check_shapes_agree(modules: list[Any], replicas: list[str], cfg: DictConfig) -> None:
    """One model template runs every replica: a varied key that changes a parameter's shape (the data's
    features) is refused, naming it."""
    first = {name: value.shape for name, value in modules[0].model.state_dict().items()}
    for module, replica in zip(modules[1:], replicas[1:]):
        shapes = {name: value.shape for name, value in module.model.state_dict().items()}
        if shapes != first:
            changed = next(name for name in first if shapes.get(name) != first[name])
            keys = ", ".join(f"stack_over.{key}" for key in cfg.get("stack_over") or {})
            raise MtlexpError(f"{keys or 'stack'}: cannot vary across the replicas of a stacked run: it changes the "
                              f"model's parameter shapes ({changed}: {tuple(first[changed])} in {replicas[0]}, "
                              f"{tuple(shapes[changed]) if changed in shapes else 'none'} in {replica}); sweep it "
                              "instead")


def _check_replicas_agree(datas: list[Any]) -> None:
    """Vectorising needs the same batch shapes in every replica, step after step."""
    for split in ("train", "val"):
        sizes = {d.describe()["rows"][split] for d in datas}  # in memory or streamed alike
        if len(sizes) > 1:
            raise MtlexpError(f"stack: the replicas' {split} splits differ in size ({sorted(sizes)}); stack seeds "
                              "only where the seed does not change the split sizes")


def _mean(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _mean_metrics(records: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float | None]]:
    """{task: {metric: mean over the records}}."""
    if not records:
        return {}
    return {task: {name: _mean([r.get(task, {}).get(name) for r in records]) for name in values}
            for task, values in records[0].items()}


def _log_summary(results: list[tuple[str, RunRecord]], failures: list[tuple[str, str]], output_dir: Path) -> None:
    rows = []
    for name, replica in results:
        headline = {task: next(iter(values.values())) for task, values in (replica.test or {}).items()}
        rows.append([name, replica.status, replica.best_epoch, replica.epochs_trained, replica.test_norm_loss,
                     " ".join(f"{t}={v:.4f}" for t, v in headline.items())])
    rows += [[name, Status.FAILED, "-", "-", "-", error] for name, error in failures]
    log.info("\n%s", format_table(["replica", STATUS, "best epoch", "epochs", "test/norm_loss", "test (first metric)"],
                                   rows))
    log.info("run dir: %s (replicas in %s/)", output_dir, REPLICAS)
