"""The Lightning internals mtlexp relies on, in one place.

Manual optimisation with several optimizer steps per ``training_step`` needs three things Lightning has no
public API for, and a stacked run's per-replica early stopping a fourth (the callback's own rule).
``tests/test_lightning_compat.py`` checks them on a real Trainer, so an upgrade that moves them fails there,
loudly, rather than as a silent change in step counts or logging.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping


def should_update_logs(trainer: pl.Trainer) -> bool:
    """Whether the loggers write values logged at this ``training_step`` (``trainer.log_every_n_steps``)."""
    return trainer._logger_connector.should_update_logs


def count_optimizer_steps(trainer: pl.Trainer, steps: int) -> None:
    """Advance ``trainer.global_step`` by ``steps`` optimizer steps taken without ``LightningOptimizer.step``."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    for _ in range(steps):
        progress.increment_ready()
        progress.increment_completed()


def is_last_batch(trainer: pl.Trainer) -> bool:
    """Whether the running ``training_step`` is the epoch's last (validation and checkpointing follow it)."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning writes epoch-level values at: training_steps that stepped so far, minus one (so a
    stacked run's replica logs line up with a single run's, whose steps count chunks)."""
    return max(trainer.fit_loop.epoch_loop._batches_that_stepped - 1, 0)


def early_stopping_says_stop(callback: EarlyStopping, score: float) -> bool:
    """Feed one epoch's monitored ``score`` to an ``EarlyStopping`` callback's own rule (patience, min_delta,
    thresholds, non-finite scores), updating its state as a fit would; whether it says stop. A stacked run keeps
    one copy of the built callback per replica."""
    should_stop, _reason = callback._evaluate_stopping_criteria(torch.tensor(float(score)))
    return bool(should_stop)
