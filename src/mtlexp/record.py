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
from mtlexp.data.base import MTLDataModule
from mtlexp.io import read_json, write_json
from mtlexp.models.names import model_name
from mtlexp.module import MTLModule
from mtlexp.processes import this_host
from mtlexp.redact import redact_values

log = logging.getLogger(__name__)


def start_run_folder(cfg: DictConfig) -> None:
    """Create the run folder and record the run as running."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # The process and host let `mtlexp report` tell a run still going from one killed without a word (kill -9).
    write_json(output_dir / "metrics.json", {"status": "running", "seed": int(cfg.seed), "pid": os.getpid(),
                                             "host": this_host()})


def log_hyperparams(cfg: DictConfig, loggers: list[Any], module: MTLModule) -> None:
    for logger in loggers:
        logger.log_hyperparams({"num_params": count_parameters(module.model), **redact_values(flat_config(cfg))})


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


def flat_config(cfg: DictConfig) -> dict[str, Any]:
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
