"""Pruning: a run that is a trial of an Optuna study reports to it after every validation epoch, and stops when
the study prunes it (``hydra.sweeper.pruner``, docs/hpo.md).

The sweeper sets ``trial.study_name``, ``trial.storage`` and ``trial.number`` on each trial's job and keeps the
pruner in the study itself (the user attribute ``mtlexp_pruner``, a ``_target_`` node). Everything is read
through the storage, not handed over in memory, so a trial run by any launcher's worker (joblib, Ray, submitit)
reports to the one study. Optuna is imported here only, and only by a run with ``trial.number`` set.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.trainer.states import TrainerFn

from mtlexp.errors import MtlexpError, UnknownMetric, first_line
from mtlexp.instantiate import build
from mtlexp.redact import redact

log = logging.getLogger(__name__)

PRUNER_ATTR = "mtlexp_pruner"  # the study's user attribute that holds its pruner's config node (None: no pruning)
SQLITE = "sqlite:///"

# Where the driver keeps this validation epoch's values by logged name: a single run's trainer.callback_metrics,
# a stacked run's means over the replicas it validated.
Values = Callable[[pl.Trainer, pl.LightningModule], Mapping[str, Any]]


class TrialPruning(pl.Callback):
    """After each validation epoch of ``fit``: report ``metric`` to the trial with the epoch as its step, and
    stop training when the study's pruner says so (``pruned_epoch`` then holds the epoch)."""

    def __init__(self, trial: Any, metric: str, values: Values, tasks: Iterable[str]) -> None:
        self.trial, self.metric, self.values, self.tasks = trial, metric, values, set(tasks)
        self.pruned_epoch: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The final evaluation of the best checkpoint validates too: only fit's epochs are the trial's steps.
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        values = self.values(trainer, pl_module)
        if self.metric not in values:  # the same error as after training: the sweep stops at this first trial
            raise UnknownMetric(self.metric, sorted(k for k in values if objective_name(k, self.tasks)))
        value, epoch = float(values[self.metric]), trainer.current_epoch
        # A diverged value is reported as it is: Optuna's pruners prune a trial whose value is NaN.
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            self.pruned_epoch = epoch
            trainer.should_stop = True  # no further epoch: Lightning stops before the next one starts
            log.info("trial %d pruned after epoch %d (%s=%s)", self.trial.number, epoch, self.metric,
                     f"{value:.6g}" if math.isfinite(value) else value)


def trial_pruning(cfg: DictConfig, values: Values) -> TrialPruning | None:
    """The pruning callback of a run that is a study's trial (``trial.number`` set) whose study prunes; None
    otherwise. Fails in one line, before any training, when the study or the trial cannot be found."""
    number = OmegaConf.select(cfg, "trial.number", default=None)
    if number is None:
        return None
    trial = open_trial(str(cfg.trial.study_name or ""), str(cfg.trial.storage or ""), int(number))
    if trial is None:
        return None
    metric = cfg.get("optimized_metric")
    if not metric or not isinstance(metric, str):
        raise MtlexpError(f"optimized_metric: the study prunes, so the run reports one validation metric to it every "
                          f"epoch; expected a name such as val/norm_loss, got {metric!r}")
    return TrialPruning(trial, metric, values, [str(task) for task in cfg.tasks])


def objective_name(logged: str, tasks: set[str]) -> bool:
    """Whether a name logged after a validation epoch is one ``optimized_metric`` may name, as the run's
    ``metrics.json`` records them: ``val/norm_loss`` and ``val/<task>/<metric>`` (not the gates' statistics nor
    the raw losses, which the task-balanced ``norm_loss`` stands for)."""
    parts = logged.split("/")
    return logged == "val/norm_loss" or (len(parts) == 3 and parts[0] == "val" and parts[1] in tasks
                                         and parts[2] != "loss")


def open_trial(study_name: str, storage: str, number: int) -> Any:
    """Trial ``number`` of the study, as an ``optuna.trial.Trial`` that reports to the study with the pruner its
    ``mtlexp_pruner`` attribute names; None when the study has no pruner."""
    if not study_name or not storage:
        raise MtlexpError("trial.storage: trial.number is set, so trial.study_name and trial.storage must name its "
                          f"study too; got study_name={study_name or None!r}, storage={redact(storage) or None!r}")
    if storage.startswith(SQLITE) and not Path(storage[len(SQLITE):]).is_file():
        # SQLite would create an empty database there, and the study would then be "missing" from a new file.
        raise MtlexpError(f"trial.storage: no SQLite database at {storage[len(SQLITE):]}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        store = optuna.storages.get_storage(storage)
    except Exception as error:  # noqa: BLE001 - SQLAlchemy's and the drivers' errors: one line naming the key
        raise MtlexpError(f"trial.storage: cannot open {redact(storage)} ({first_line(error)})") from None
    try:
        study_id = store.get_study_id_from_name(study_name)
    except KeyError:
        raise MtlexpError(f"trial.number: no study {study_name!r} in {redact(storage)}") from None
    try:
        trial_id = store.get_trial_id_from_study_id_trial_number(study_id, number)
    except KeyError:
        raise MtlexpError(f"trial.number: study {study_name!r} has no trial {number}") from None
    state = store.get_trial(trial_id).state
    if state.is_finished():  # reports to a finished trial are refused by the storage, mid-training
        raise MtlexpError(f"trial.number: trial {number} of study {study_name!r} is already {state.name.lower()}")
    node = store.get_study_user_attrs(study_id).get(PRUNER_ATTR)
    if node is None:
        return None
    pruner = build(OmegaConf.create(node), "hydra.sweeper.pruner")
    study = optuna.load_study(study_name=study_name, storage=store, pruner=pruner)
    if len(study.directions) > 1:
        raise MtlexpError(f"hydra.sweeper.pruner: study {study_name!r} has {len(study.directions)} objectives; "
                          "Optuna prunes single-objective studies only (hydra.sweeper.pruner=none)")
    return optuna.trial.Trial(study, trial_id)
