"""``train(cfg)``: the whole of one run, as a pure function of its composed config.

seed -> data module -> model -> Lightning module -> trainer -> fit -> best checkpoint on val and test
-> metrics.json, provenance.json, summary table. The CLI wraps it; tests call it directly.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only
import torch
from omegaconf import DictConfig, OmegaConf

from mtlexp.checkpoint_io import AtomicCheckpointIO
from mtlexp.config import validate_run
from mtlexp.data.base import MTLDataModule
from mtlexp.distributed import collective_errors, ended_on_signal
from mtlexp.errors import MtlexpError
from mtlexp.instantiate import build, build_all
from mtlexp.io import read_json, write_json
from mtlexp.models.names import model_name
from mtlexp.module import MTLModule
from mtlexp.processes import this_host
from mtlexp.provenance import provenance
from mtlexp.redact import redact_values
from mtlexp.runner import record_interrupted
from mtlexp.report.figures import plot_gates
from mtlexp.report.table import summary_table

log = logging.getLogger(__name__)


def build_data(cfg: DictConfig) -> MTLDataModule:
    """The data module of a run config, set up (splits loaded, labels checked)."""
    tasks = OmegaConf.to_container(cfg.tasks, resolve=True) if cfg.get("tasks") is not None else {}
    data: MTLDataModule = build(cfg.data, "data", tasks=tasks, seed=int(cfg.seed))
    data.setup("fit")
    return data


def build_components(cfg: DictConfig) -> tuple[MTLDataModule, MTLModule]:
    """The data module (set up) and the Lightning module of a run config; shared by train and eval."""
    data = build_data(cfg)
    # Derived tasks (a product of other tasks' probabilities) have no tower: the module computes them.
    model = build(cfg.model, "model", features=data.features, tasks=[t for t in data.tasks if not t.derived])
    optimizer = build(cfg.optimizer, "optimizer")
    try:  # the optimizer checks its hyperparameters only when built: do it now, not deep inside fit
        optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:
        raise MtlexpError(f"optimizer: {error}") from None
    module = build(
        cfg.module,
        "module",
        model=model,
        tasks=data.tasks,
        optimizer=optimizer,
        weighting=build(cfg.weighting, "weighting", tasks=model.trained_tasks(data.tasks)),
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )
    return data, module


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any] | None = None) -> pl.Trainer:
    """The Trainer of a config, with its loggers (built from the config unless given) and the atomic
    checkpoint writer."""
    return build(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=(build_all(cfg.get("logger"), "logger") if loggers is None else loggers) or False,
        plugins=[AtomicCheckpointIO()],
    )


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, select the best checkpoint on validation, test it, and write the run folder."""
    validate_run(cfg)
    if int(cfg.get("stack", 1)) > 1:  # several seeds as one vectorised run, one run folder each
        from mtlexp.stacking.train import train_stacked

        return train_stacked(cfg)
    output_dir = Path(cfg.paths.output_dir)
    started = time.time()
    # Under DDP every rank runs this function; only rank 0 writes the run folder.
    is_main = rank_zero_only.rank == 0
    if is_main:
        start_run_folder(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    data, module = build_components(cfg)
    summary = data.describe()
    log.info("model %s: %d parameters; data: %s", model_name(cfg.model), count_parameters(module.model), summary["rows"])
    if is_main:
        write_json(output_dir / "provenance.json", provenance(data.fingerprint(), summary))

    callbacks = build_all(cfg.get("callbacks"), "callbacks")
    trainer = build_trainer(cfg, callbacks)
    log_hyperparams(cfg, trainer.loggers, module)
    on_stuck = (lambda signum: record_interrupted(output_dir)) if is_main else (lambda signum: None)
    with ended_on_signal(trainer, on_stuck), collective_errors(trainer):
        trainer.fit(module, datamodule=data, ckpt_path=cfg.ckpt_path)

        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") or None
        if cfg.ckpt_path and checkpoint is not None:
            best = best_across_resume(str(cfg.ckpt_path), best, checkpoint.best_model_score, str(cfg.monitor_mode))
        best_epoch = int(torch.load(best, map_location="cpu", weights_only=False)["epoch"]) if best else trainer.current_epoch
        return finish_run(cfg, data, module, trainer, best, best_epoch, trainer.current_epoch, started, summary, is_main)


def start_run_folder(cfg: DictConfig) -> None:
    """Create the run folder and record the run as running."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # The process and host let `mtlexp report` tell a run still going from one killed without a word (kill -9).
    write_json(output_dir / "metrics.json", {"status": "running", "seed": int(cfg.seed), "pid": os.getpid(),
                                             "host": this_host()})


def log_hyperparams(cfg: DictConfig, loggers: list[Any], module: MTLModule) -> None:
    for logger in loggers:
        logger.log_hyperparams({"num_params": count_parameters(module.model), **redact_values(_flat_config(cfg))})


def finish_run(cfg: DictConfig, data: MTLDataModule, module: MTLModule, trainer: pl.Trainer, best: str | None,
               best_epoch: int, epochs_trained: int, started: float, summary: dict[str, Any],
               is_main: bool = True) -> dict[str, Any]:
    """Evaluate the best checkpoint on validation (and test), then ``record_run``."""
    # The val metrics recorded are the best checkpoint's, the one that is tested, not the last epoch's.
    trainer.validate(module, datamodule=data, ckpt_path=best, verbose=False)
    if cfg.run_test:
        trainer.test(module, datamodule=data, ckpt_path=best, verbose=False)
    return record_run(cfg, data, module, trainer.loggers, best, best_epoch, epochs_trained, started, summary, is_main)


def record_run(cfg: DictConfig, data: MTLDataModule, module: MTLModule, loggers: list[Any], best: str | None,
               best_epoch: int, epochs_trained: int, started: float, summary: dict[str, Any],
               is_main: bool = True, announce: bool = True) -> dict[str, Any]:
    """Write metrics.json (from the best checkpoint's evaluation in ``module.results``) and the gate figure,
    and log the summary table (``announce``): the end of every run, sequential or stacked."""
    output_dir = Path(cfg.paths.output_dir)
    num_params = count_parameters(module.model)
    results: dict[str, Any] = {split: module.results[split] for split in ("val", "test") if split in module.results}
    metrics = {
        "status": "ok",
        "val": results["val"]["tasks"],
        "test": results.get("test", {}).get("tasks", {}),
        "directions": module.metric_directions(),
        "val_norm_loss": results["val"]["norm_loss"],
        "test_norm_loss": results.get("test", {}).get("norm_loss"),
        "best_epoch": best_epoch,
        "epochs_trained": epochs_trained,
        "num_params": num_params,
        "seed": int(cfg.seed),
        "model": model_name(cfg.model),
        "model_class": type(module.model).__name__,
        "gates": results["val"].get("gates", {}),
        "gate_experts": module.model.gate_experts() if results["val"].get("gates") else {},
        "gate_active": results["val"].get("gate_active", {}),
        "gate_hist": results["val"].get("gate_hist", {}),
        "diagnostics": results["val"].get("diagnostics", {}),
        "weighting": {"method": cfg.weighting.get("_name_") or type(module.weighting).__name__,
                      **module.results.get("weighting", {})},
        "data": summary,
        **({"ddp": module.results["ddp"]} if "ddp" in module.results else {}),
        **({"stack": module.results["stack"]} if "stack" in module.results else {}),
        "best_checkpoint": str(Path(best).relative_to(output_dir)) if best and Path(best).is_relative_to(output_dir) else best,
        "duration_s": round(time.time() - started, 2),
    }
    if is_main:
        write_json(output_dir / "metrics.json", {**read_json(output_dir / "metrics.json"), **metrics})
        if metrics["gates"]:
            plot_gates(metrics["gates"], output_dir / "figures" / "gates.png", title=f"{metrics['model']}: mean gate weights (val)",
                       experts=metrics["gate_experts"])
        for logger in loggers:  # trackers that keep the run folder's results too (logger=mlflow)
            log_run_folder = getattr(logger, "log_run_folder", None)
            if log_run_folder is not None:
                log_run_folder(output_dir)
        if announce:
            log.info("\n%s", summary_table(metrics, data.tasks))
            log.info("run dir: %s", output_dir)
    return metrics


def best_across_resume(ckpt_path: str, best: str | None, score: Any, mode: str) -> str | None:
    """The better of this run's best checkpoint and the resumed run's.

    A resumed run writes into a new folder, and Lightning then does not restore the checkpoint callback's best
    score, so the first epoch after the resume would count as "best" whatever came before it.
    """
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False).get("callbacks", {})
    for key, value in state.items():
        if not (key.startswith("ModelCheckpoint") and isinstance(value, dict)):
            continue
        old_path, old_score = value.get("best_model_path"), value.get("best_model_score")
        if not old_path or old_score is None or not Path(old_path).is_file():
            continue
        if best is None or score is None:
            return old_path
        better = float(old_score) < float(score) if mode == "min" else float(old_score) > float(score)
        return old_path if better else best
    return best


def _flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The config flattened to ``a/b/c: value`` pairs, for the loggers' hyperparameter tables."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            flat[prefix] = node if isinstance(node, (int, float, str, bool)) or node is None else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat
