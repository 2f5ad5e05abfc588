"""``train(cfg)``: the whole of one run, as a pure function of its composed config.

The one place that chooses between a single run (here) and a stacked one (``stack`` > 1,
``mtlexp.stacking.train``); both build from ``mtlexp.components`` and end with ``mtlexp.record``, so neither
imports the other. A single run: seed -> data module -> model -> Lightning module -> trainer -> fit -> best
checkpoint on val and test -> metrics.json, provenance.json, summary table. The CLI wraps it; tests call it
directly.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from mtlexp.components import build_components, build_trainer, count_parameters
from mtlexp.config import validate_run
from mtlexp.data.base import MTLDataModule
from mtlexp.distributed import collective_errors, ended_on_signal
from mtlexp.instantiate import build_all
from mtlexp.io import write_json
from mtlexp.models.names import model_name
from mtlexp.module import MTLModule
from mtlexp.provenance import provenance
from mtlexp.pruning import trial_pruning
from mtlexp.record import log_hyperparams, record_run, start_run_folder
from mtlexp.run_record import RunRecord
from mtlexp.runner import record_interrupted
from mtlexp.stacking.train import train_stacked

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, select the best checkpoint on validation, test it, and write the run folder; return its record as
    metrics.json has it."""
    validate_run(cfg)
    if int(cfg.get("stack", 1)) > 1 or cfg.get("stack_over"):  # replicas as one vectorised run, a folder each
        return train_stacked(cfg)
    output_dir = Path(cfg.paths.output_dir)
    started = time.time()
    pruning = trial_pruning(cfg, lambda trainer, module: trainer.callback_metrics)
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

    callbacks = build_all(cfg.get("callbacks"), "callbacks") + ([pruning] if pruning else [])
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
        return finish_run(cfg, data, module, trainer, best, best_epoch, trainer.current_epoch, started, summary,
                          is_main, pruning.pruned_epoch if pruning else None).to_json()


def finish_run(cfg: DictConfig, data: MTLDataModule, module: MTLModule, trainer: pl.Trainer, best: str | None,
               best_epoch: int, epochs_trained: int, started: float, summary: dict[str, Any],
               is_main: bool = True, pruned_epoch: int | None = None) -> RunRecord:
    """Evaluate the best checkpoint on validation (and test, unless its study pruned the run), then
    ``record_run``."""
    # The val metrics recorded are the best checkpoint's, the one that is tested, not the last epoch's.
    trainer.validate(module, datamodule=data, ckpt_path=best, verbose=False)
    if cfg.run_test and pruned_epoch is None:  # a pruned trial is no result to test: the study dropped it
        trainer.test(module, datamodule=data, ckpt_path=best, verbose=False)
    return record_run(cfg, data, module, trainer.loggers, best, best_epoch, epochs_trained, started, summary, is_main,
                      pruned_epoch=pruned_epoch)


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
