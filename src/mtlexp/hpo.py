"""Hyperparameter search with mtlexp's Optuna sweeper (``hparams_search=<name>``, docs/hpo.md).

The sweeper is a Hydra plugin (``hydra_plugins.mtlexp_optuna_sweeper``); what is mtlexp's about a search is
here: the checks before a study starts, the train task's ``objective`` (the run's ``optimized_metric``, one
value or one per metric of a list), and the files a search leaves in its sweep folder (best_trial.yaml and
best_config.yaml; best_trials.yaml, the Pareto front, for several metrics).
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from mtlexp.config import validate_run
from mtlexp.errors import MtlexpError, UnknownMetric
from mtlexp.redact import redact, redact_values
from mtlexp.run_record import STATUS, RunRecord, Status


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


def metric_list(metric: Any) -> list[str]:
    """``optimized_metric`` as a list: one name, or one per objective of a multi-objective search."""
    if metric is None:
        return []
    if isinstance(metric, (list, tuple, ListConfig)):
        return [str(m) for m in metric]
    return [str(metric)]


def objective(metrics: dict[str, Any], metric: Any) -> float | list[float] | dict[str, Any] | None:
    """The value of ``optimized_metric`` in a run's result (a list of values for a list of metrics); None (a
    failed trial) when any is not finite; for a trial its study pruned, ``{"status": "pruned", "epoch": <the
    epoch it was pruned after>}`` (what the sweeper tells Optuna as a pruned trial)."""
    record = RunRecord.from_json(metrics)
    if record.status is Status.PRUNED:
        return {STATUS: Status.PRUNED.value, "epoch": record.pruned_epoch}
    names = record.validation_values()
    values = []
    for name in metric_list(metric):
        if names.get(name) is None:
            raise UnknownMetric(name, (k for k, v in names.items() if v is not None))
        value = float(names[name])
        if not math.isfinite(value):
            print(f"mtlexp: warning: optimized_metric {name} is {value}: a sweeper records a failed trial",
                  file=sys.stderr, flush=True)
            return None
        values.append(value)
    return values if isinstance(metric, (list, tuple, ListConfig)) else values[0]


def check_search(config: DictConfig, direction: Any) -> list[str]:
    """Before a study starts: the metrics to optimise, checked against the config, and the study's directions
    (one per metric). Range errors in the run config would fail every trial: they are said once, here."""
    metrics = metric_list(config.get("optimized_metric"))
    if not metrics:
        raise MtlexpError("optimized_metric: hparams_search needs the validation metric to optimise, "
                          "e.g. optimized_metric=val/norm_loss")
    for metric in metrics:
        check_metric_name(metric, config)
    validate_run(config)
    directions = [str(getattr(d, "name", d)) for d in (
        direction if isinstance(direction, (list, tuple, ListConfig)) else [direction])]
    if any(d not in ("minimize", "maximize") for d in directions):
        raise MtlexpError(f"hydra.sweeper.direction: expected minimize or maximize (a list of them for a list "
                          f"optimized_metric), got {direction!r}")
    if len(directions) != len(metrics):
        raise MtlexpError(f"hydra.sweeper.direction: expected one direction per optimized_metric ({len(metrics)}: "
                          f"{', '.join(metrics)}), got {len(directions)}: {', '.join(directions)}")
    return directions


def best_line(study: Any, config: DictConfig) -> str:
    """The study's best trial (or its Pareto front's size) in one line."""
    if len(study.directions) > 1:
        return f"{len(study.best_trials)} trials on the Pareto front"
    try:
        best = study.best_trial
    except ValueError:  # every counted trial was pruned
        return "no trial completed"
    return f"best trial {best.number}, {config.get('optimized_metric')}={best.value:.6g}, {best.params}"


def write_results(config: DictConfig, study: Any, sweep_dir: Path) -> None:
    """The search's outcome, over the whole study, in its sweep folder: optimization_results.yaml (best
    parameters and value, as Hydra's Optuna plugins write it), and best_trial.yaml with best_config.yaml, or for
    several metrics best_trials.yaml (the Pareto front)."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise MtlexpError("hparams_search: no trial of the study completed; the errors above, and each trial's run "
                          "folder, say why")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweeper = config.hydra.sweeper
    where = {"study_name": study.study_name, "storage": redact(str(sweeper.storage)) if sweeper.storage else None}
    if len(study.directions) > 1:
        front = sorted(study.best_trials, key=lambda t: t.values[0])
        _save(sweep_dir / "optimization_results.yaml", {
            "name": "optuna", "solutions": [{"params": t.params, "values": t.values} for t in front]})
        _save(sweep_dir / "best_trials.yaml", {
            "optimized_metric": metric_list(config.optimized_metric),
            "directions": [d.name.lower() for d in study.directions], **where,
            "trials": [{"number": t.number, "values": t.values, "params": t.params, "run_dir": _trial_run(t),
                        "command": _command(t)} for t in front]})
        print(f"Pareto front ({len(front)} trials): {sweep_dir / 'best_trials.yaml'}", flush=True)
        return
    best, metric = study.best_trial, config.get("optimized_metric")
    _save(sweep_dir / "optimization_results.yaml", {"name": "optuna", "best_params": best.params,
                                                     "best_value": best.value})
    run_dir = _trial_run(best)
    if run_dir is not None:
        (sweep_dir / "best_config.yaml").write_text((Path(run_dir) / ".hydra" / "config.yaml").read_text())
    _save(sweep_dir / "best_trial.yaml", {
        "optimized_metric": OmegaConf.to_object(metric) if OmegaConf.is_config(metric) else metric,
        "direction": study.direction.name.lower(),
        "best_value": best.value, "best_params": best.params, "run_dir": run_dir,
        # The best trial again, as a single run (without -m the sweeper config is not used).
        "command": _command(best), **where})
    print(f"best trial: {sweep_dir / 'best_trial.yaml'}", flush=True)


def _save(path: Path, content: dict[str, Any]) -> None:
    import yaml

    # Flow style for lists and mappings of plain values ([0.95, 0.98], {optimizer.lr: 0.001}); a command on
    # one line, to copy.
    path.write_text(yaml.safe_dump(redact_values(content), default_flow_style=None, sort_keys=False, width=2**16))


def _trial_run(trial: Any) -> str | None:
    """A trial's run folder, where it still is (a resumed study's trials ran in earlier sweep folders)."""
    run_dir = trial.user_attrs.get("mtlexp_run_dir")
    return run_dir if run_dir and (Path(run_dir) / ".hydra" / "config.yaml").is_file() else None


def _command(trial: Any) -> str:
    return "mtlexp train " + " ".join(shlex.quote(str(o)) for o in trial.user_attrs.get("mtlexp_overrides", []))


class OptunaStudy(Callback):
    """Kept so that search configs written for earlier versions (``hydra.callbacks.optuna_study``) still load:
    what it did (resuming, the best trial's files) is the sweeper's now."""


class OfficialSweeperTarget(Callback):
    """Configs written for hydra-optuna-sweeper (lightning-hydra-template's) name its class as the sweeper's
    ``_target_``; without that package, they get mtlexp's sweeper, which has the same config surface."""

    OFFICIAL = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    OURS = "hydra_plugins.mtlexp_optuna_sweeper.optuna_sweeper.OptunaSweeper"

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        if sweeper.get("_target_") == self.OFFICIAL and not official_sweeper_installed():
            with open_dict(sweeper):
                sweeper._target_ = self.OURS


@contextmanager
def study_errors() -> Iterator[None]:
    """Around a search: the sweeper's errors (a bad search config, a study in which no trial completed) end with
    one line. Hydra prints a sweeper's exceptions itself unless HYDRA_FULL_ERROR=1, so it is set for the search,
    and other exceptions keep their full traceback."""
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except MtlexpError as error:
        print(f"mtlexp: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


HPARAMS_SEARCH = re.compile(r"^\+{0,2}hparams_search=(?!null$)")


def _installed(*modules: str) -> bool:
    from importlib.util import find_spec

    try:
        return all(find_spec(name) is not None for name in modules)
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False


def optuna_sweeper_installed() -> bool:
    return _installed("optuna", "hydra_plugins.mtlexp_optuna_sweeper")


def official_sweeper_installed() -> bool:
    """hydra-optuna-sweeper registers hydra/sweeper=optuna too; whichever Hydra finds last would win."""
    return _installed("hydra_plugins.hydra_optuna_sweeper")


def expose_sweeper_plugin() -> None:
    """Hydra finds plugins by walking the ``hydra_plugins`` namespace's folders. An editable install imports
    ``hydra_plugins.mtlexp_optuna_sweeper`` through setuptools' finder, which that walk does not see (conf/
    ships as ``mtlexp.conf`` from outside src/, so setuptools cannot use a plain path): add its folder."""
    from importlib.util import find_spec

    try:
        import hydra_plugins

        spec = find_spec("hydra_plugins.mtlexp_optuna_sweeper")
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    folder = str(Path(next(iter(spec.submodule_search_locations))).parent)
    if folder not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(folder)
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton

    if Plugins in Singleton._instances:  # scanned before the folder was added (a long-lived process): register it
        from hydra_plugins.mtlexp_optuna_sweeper.optuna_sweeper import OptunaSweeper

        Plugins.instance().register(OptunaSweeper)
