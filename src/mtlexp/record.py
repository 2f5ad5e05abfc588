"""What every run writes into its run folder: the running record at the start, and at the end metrics.json,
the gate figure and the summary table; plus the hyperparameters its loggers keep.

Single and stacked runs (each replica) end the same way, so ``mtlexp report`` cannot tell them apart.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtlexp.artefacts import plot_gates, summary_table
from mtlexp.components import count_parameters
from mtlexp.config import flat_config
from mtlexp.data.base import MTLDataModule
from mtlexp.models.names import model_name
from mtlexp.module import MTLModule
from mtlexp.processes import this_host
from mtlexp.redact import redact_values
from mtlexp.run_record import RunRecord, Status, read_record, write_record

log = logging.getLogger(__name__)


def start_run_folder(cfg: DictConfig) -> None:
    """Create the run folder and record the run as running."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # The process and host let `mtlexp report` tell a run still going from one killed without a word (kill -9).
    write_record(output_dir, RunRecord(status=Status.RUNNING, seed=int(cfg.seed), pid=os.getpid(), host=this_host()))


def log_hyperparams(cfg: DictConfig, loggers: list[Any], module: MTLModule) -> None:
    for logger in loggers:
        logger.log_hyperparams({"num_params": count_parameters(module.model), **redact_values(_loggable(cfg))})


def record_run(cfg: DictConfig, data: MTLDataModule, module: MTLModule, loggers: list[Any], best: str | None,
               best_epoch: int, epochs_trained: int, started: float, summary: dict[str, Any],
               is_main: bool = True, announce: bool = True, pruned_epoch: int | None = None,
               gate_figure: bool = True) -> RunRecord:
    """Write metrics.json (from the best checkpoint's evaluation in ``module.results``) and the gate figure
    (``gate_figure``: a stacked run draws one for all its replicas), and log the summary table (``announce``):
    the end of every run, sequential or stacked. ``pruned_epoch``: the epoch after which the run's study pruned
    it (status pruned)."""
    output_dir = Path(cfg.paths.output_dir)
    num_params = count_parameters(module.model)
    results: dict[str, Any] = {split: module.results[split] for split in ("val", "test") if split in module.results}
    val = results["val"]
    record = RunRecord(
        status=Status.OK if pruned_epoch is None else Status.PRUNED,
        pruned_epoch=pruned_epoch,
        val=val["tasks"],
        test=results.get("test", {}).get("tasks", {}),
        directions=module.metric_directions(),
        val_norm_loss=val["norm_loss"],
        test_norm_loss=results.get("test", {}).get("norm_loss"),
        best_epoch=best_epoch,
        epochs_trained=epochs_trained,
        num_params=num_params,
        seed=int(cfg.seed),
        model=model_name(cfg.model),
        model_class=type(module.model).__name__,
        gates=val.get("gates", {}),
        gate_experts=module.model.gate_experts() if val.get("gates") else {},
        gate_active=val.get("gate_active", {}),
        gate_hist=val.get("gate_hist", {}),
        diagnostics=val.get("diagnostics", {}),
        weighting={"method": cfg.weighting.get("_name_") or type(module.weighting).__name__,
                   **module.results.get("weighting", {})},
        data=summary,
        ddp=module.results.get("ddp"),
        replica=module.results.get("replica"),
        best_checkpoint=str(Path(best).relative_to(output_dir)) if best and Path(best).is_relative_to(output_dir) else best,
        duration_s=round(time.time() - started, 2),
    )
    if is_main:
        record = record.over(read_record(output_dir))
        write_record(output_dir, record)
        if record.gates and gate_figure:
            plot_gates(record.gates, output_dir / "figures" / "gates.png", title=f"{record.model}: mean gate weights (val)",
                       experts=record.gate_experts)
        for logger in loggers:  # trackers that keep the run folder's results too (logger=mlflow)
            log_run_folder = getattr(logger, "log_run_folder", None)
            if log_run_folder is not None:
                log_run_folder(output_dir)
        if announce:
            log.info("\n%s", summary_table(record.to_json(), data.tasks))
            log.info("run dir: %s", output_dir)
    return record


def _loggable(cfg: DictConfig) -> dict[str, Any]:
    """The config as a hyperparameter table: ``a/b/c: value``, a value loggers cannot take as its text. An empty
    node has no value to show, and is left out."""
    flat = flat_config(OmegaConf.to_container(cfg, resolve=True), sep="/")
    return {key: value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
            for key, value in flat.items() if value != {}}
