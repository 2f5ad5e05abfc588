"""Hyperparameter search with Hydra's Optuna sweeper (``hparams_search=<name>``, docs/hpo.md).

The train task returns the run's ``optimized_metric`` (``objective``), which the sweeper optimises; the
``OptunaStudy`` callback makes rerunning the same command resume the study, and writes the best trial out.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from mtlexp.config import validate_run
from mtlexp.errors import MtlexpError
from mtlexp.redact import redact, redact_values
from mtlexp.run_record import STATUS, RunRecord, Status, read_record


class UnknownMetric(MtlexpError):
    """``optimized_metric`` names a metric the run does not have: it stops a sweep at its first job."""


def check_metric_name(metric: str, cfg: DictConfig) -> None:
    """Fail before training on an ``optimized_metric`` that no run of this config can have (the metric names
    themselves are known only after training: ``objective`` checks those)."""
    parts = metric.split("/")
    tasks = cfg.get("tasks")
    known = [str(t) for t in tasks] if isinstance(tasks, DictConfig) else None
    if parts[0] != "val" or not (metric == "val/norm_loss" or len(parts) == 3):
        raise MtlexpError(f"optimized_metric: expected 'val/norm_loss' or 'val/<task>/<metric>', got {metric!r}")
    if len(parts) == 3 and known is not None and parts[1] not in known:
        raise MtlexpError(f"optimized_metric: no task {parts[1]!r} in {metric!r}; the tasks are {', '.join(known)}")


def objective(metrics: dict[str, Any], metric: str) -> float | dict[str, Any] | None:
    """The value of ``optimized_metric`` in a run's result; None (a failed trial) when it is not finite; for a
    trial its study pruned, ``{"status": "pruned", "epoch": <the epoch it was pruned after>}`` (what the sweeper
    tells Optuna as a pruned trial)."""
    import math

    record = RunRecord.from_json(metrics)
    if record.status is Status.PRUNED:
        return {STATUS: Status.PRUNED.value, "epoch": record.pruned_epoch}
    names = record.validation_values()
    if names.get(metric) is None:
        available = ", ".join(k for k, v in names.items() if v is not None)
        raise UnknownMetric(f"optimized_metric: no metric {metric!r} in this run; available: {available}")
    value = float(names[metric])
    if not math.isfinite(value):
        print(f"mtlexp: warning: optimized_metric {metric} is {value}: a sweeper records a failed trial",
              file=sys.stderr, flush=True)
        return None
    return value


class OptunaStudy(Callback):
    """``hparams_search``: an Optuna study that rerunning the same command resumes (docs/hpo.md).

    Before the sweeper starts: checks ``optimized_metric``, creates the SQLite file's folder, refuses to resume
    a study that was started with other overrides, and makes ``hydra.sweeper.n_trials`` the study's total (the
    plugin would run that many more on every rerun). After the sweep: writes the best trial to
    ``<sweep dir>/best_trial.yaml`` and its run's resolved config to ``<sweep dir>/best_config.yaml``.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        metric = config.get("optimized_metric")
        try:
            if not metric:
                raise MtlexpError("optimized_metric: hparams_search needs the validation metric to optimise, "
                                  "e.g. optimized_metric=val/norm_loss")
            check_metric_name(str(metric), config)
            validate_run(config)  # range errors would fail every trial: say so once, before the study
        except MtlexpError as error:
            _exit(str(error))
        sweeper = config.hydra.sweeper
        study = _open_study(sweeper)
        if study is None:  # in-memory storage: nothing to resume
            return
        overrides = sorted(redact(str(o)) for o in config.hydra.overrides.task)  # kept in the study's storage
        started = study.user_attrs.get("mtlexp_overrides")
        if started is None:
            study.set_user_attr("mtlexp_overrides", overrides)
        elif list(started) != overrides:
            _exit(f"hydra.sweeper.study_name: study {study.study_name!r} in {sweeper.storage} was started with other "
                  f"overrides ({' '.join(started)}); resume it with those, or start another study "
                  "(hydra.sweeper.study_name=<new name>)")
        done, total = _completed_trials(study), int(sweeper.n_trials)
        with read_write(sweeper):
            sweeper.n_trials = max(0, total - done)
            if study.trials and sweeper.sampler.get("seed") is not None:
                # The same seed again would draw the same random start-up trials again: offset it by the trials
                # the study already has (still reproducible for a given history).
                sweeper.sampler.seed = int(sweeper.sampler.seed) + len(study.trials)
        print(f"optuna study {study.study_name}: {done} of {total} trials complete, {max(0, total - done)} to run "
              f"(storage {sweeper.storage})", flush=True)
        if done >= total:
            best = study.best_trial if done else None
            print("nothing to run" + (f": best trial {best.number}, {metric}={best.value:.6g}, {best.params}" if best else ""))
            raise SystemExit(0)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import shlex

        sweep_dir = Path(str(config.hydra.sweep.dir))
        results = sweep_dir / "optimization_results.yaml"  # the sweeper's: best over the whole study
        if not results.is_file():
            return
        best = OmegaConf.to_container(OmegaConf.load(results))
        assert isinstance(best, dict)
        params = [f"{k}={v}" for k, v in (best.get("best_params") or {}).items()]
        run_dir = _run_with_overrides(sweep_dir, params)
        if run_dir is not None:
            overrides = [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
            (sweep_dir / "best_config.yaml").write_text((run_dir / ".hydra" / "config.yaml").read_text())
        else:
            swept = {p.split("=", 1)[0] for p in params}
            overrides = [o for o in config.hydra.overrides.task if str(o).split("=", 1)[0] not in swept] + params
        summary = {
            "optimized_metric": config.get("optimized_metric"),
            "direction": str(getattr(config.hydra.sweeper.direction, "name", config.hydra.sweeper.direction)),
            "best_value": best.get("best_value"),
            "best_params": best.get("best_params"),
            "run_dir": str(run_dir) if run_dir is not None else None,
            # The best trial again, as a single run (without -m the sweeper config is not used).
            "command": "mtlexp train " + " ".join(shlex.quote(str(o)) for o in overrides),
            "study_name": config.hydra.sweeper.study_name,
            "storage": config.hydra.sweeper.storage,
        }
        OmegaConf.save(OmegaConf.create(redact_values(summary)), sweep_dir / "best_trial.yaml")
        print(f"best trial: {sweep_dir / 'best_trial.yaml'}", flush=True)


# What optuna 2.x's best_trial raises when no trial completed: its SQL storage's and its in-memory storage's.
_NO_COMPLETE_TRIAL = ("Record does not exist.", "No trials are completed yet.")


@contextmanager
def study_errors() -> Iterator[None]:
    """Around a search: a study in which no trial completed ends with one line instead of the traceback of the
    sweeper asking Optuna for its best trial. Hydra prints a sweeper's exceptions itself unless
    HYDRA_FULL_ERROR=1, so it is set for the search, and other exceptions keep their full traceback."""
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except ValueError as error:
        if str(error) not in _NO_COMPLETE_TRIAL:
            raise
        _exit("hparams_search: no trial of the study completed; the errors above, and each trial's run folder, "
              "say why")
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


def _exit(message: str) -> None:
    print(f"mtlexp: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def _open_study(sweeper: DictConfig) -> Any:
    """The sweeper's study in its storage (created if new, as the sweeper would); None for in-memory storage."""
    storage, name = sweeper.get("storage"), sweeper.get("study_name")
    if not isinstance(storage, str) or not name:
        return None
    if storage.startswith("sqlite:///"):  # SQLite creates the file, not its folder
        Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "Using an existing study ..." on every rerun
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per plugin when the SQLite schema is set up
    directions = sweeper.direction if isinstance(sweeper.direction, (list, tuple)) or OmegaConf.is_list(
        sweeper.direction) else [sweeper.direction]
    return optuna.create_study(study_name=str(name), storage=storage, load_if_exists=True,
                               directions=[str(getattr(d, "name", d)) for d in directions])


def _completed_trials(study: Any) -> int:
    """Trials that count towards ``n_trials``: complete ones. Failed trials are run again on a rerun; a trial
    left running by an interrupted command stays so in the storage and is not counted."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _run_with_overrides(sweep_dir: Path, params: list[str]) -> Path | None:
    """The run folder of a trial with these parameters: in this sweep, else in a sibling sweep of the same
    study (an earlier command that the study resumed)."""
    wanted = set(params)
    for pattern in ("[0-9]*/.hydra/overrides.yaml", "*/[0-9]*/.hydra/overrides.yaml"):
        root = sweep_dir if pattern.startswith("[") else sweep_dir.parent
        for path in sorted(root.glob(pattern)):
            run = path.parent.parent
            if wanted <= {str(o) for o in OmegaConf.load(path)} and (read_record(run) or RunRecord()).ok:
                return run
    return None


HPARAMS_SEARCH = re.compile(r"^\+{0,2}hparams_search=(?!null$)")


def optuna_sweeper_installed() -> bool:
    from importlib.util import find_spec

    try:
        return all(find_spec(name) is not None for name in ("optuna", "hydra_plugins.hydra_optuna_sweeper"))
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False
