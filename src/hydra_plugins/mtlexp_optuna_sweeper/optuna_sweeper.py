"""``hydra/sweeper=optuna``: an Optuna study (ask and tell) whose trials are jobs of the chosen launcher.

The study lives in its storage: the same command resumes it, up to ``n_trials`` complete (or pruned) trials in
all. Each batch of ``n_jobs`` trials is asked for, launched as one batch of jobs (basic, joblib, Ray, submitit)
and told its results: a job returns a float, a list of floats (one per objective), None (failed) or
``{"status": "pruned", ...}``. Optuna is imported only when a sweep starts: Hydra imports this module on every
command while it looks for plugins.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.mtlexp_optuna_sweeper._space import override_text, search_space
from hydra_plugins.mtlexp_optuna_sweeper.config import PRUNERS, SAMPLERS
from mtlexp.redact import redact

log = logging.getLogger(__name__)

# The overrides through which a trial's job finds its study (conf/config.yaml's trial node): the pruning
# callback reports to it. Not part of the trial's configuration: left out of the commands that rerun a trial.
TRIAL_KEY = "trial"
NO_PRUNER = PRUNERS["none"]["_target_"]


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, pruner: Any, direction: Any, study_name: str | None, storage: Any,
                 n_trials: int, n_jobs: int, max_failure_rate: float, params: Any) -> None:
        self.sampler = sampler
        self.pruner = pruner
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) else params
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.job_idx = 0
        self.pruning = False

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from optuna.trial import TrialState

        from mtlexp import hpo
        from mtlexp.errors import MtlexpError

        assert self.config is not None
        directions = hpo.check_search(self.config, self.direction)
        self._check_numbers()
        space, fixed = search_space(self.params, arguments)
        study = self._study(directions)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        to_run = max(0, self.n_trials - done)
        if self.storage is not None:
            print(f"optuna study {study.study_name}: {done} of {self.n_trials} trials complete, {to_run} to run "
                  f"(storage {redact(str(self.storage))})", flush=True)
        if to_run == 0:
            print(f"nothing to run: {hpo.best_line(study, self.config)}" if done else "nothing to run", flush=True)
            raise SystemExit(0)
        log.info(f"Optuna study {study.study_name}: directions {directions}, sampler "
                 f"{type(study.sampler).__name__}, search space {', '.join(space) or 'empty'}")

        failed = launched = 0
        while launched < to_run:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, to_run - launched))]
            overrides = [[f"{k}={v}" for k, v in fixed.items()] +
                         [f"{k}={override_text(v)}" for k, v in trial.params.items()] for trial in trials]
            for trial, job in zip(trials, overrides):
                trial.set_user_attr("mtlexp_overrides", [redact(o) for o in job])
            returns = self.launcher.launch([job + self._trial_overrides(study, trial)
                                            for trial, job in zip(trials, overrides)], initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, result in zip(trials, returns):
                state, values = self._outcome(trial.number, result, len(directions))
                run_dir = _run_dir(result)
                if run_dir is not None:
                    trial.set_user_attr("mtlexp_run_dir", run_dir)
                study.tell(trial, values, state=state)
                failed += state == TrialState.FAIL
            launched += len(trials)
            if failed / launched > self.max_failure_rate:
                raise MtlexpError(f"hydra.sweeper.max_failure_rate: {failed} of {launched} trials failed, more than "
                                  f"the {self.max_failure_rate:g} allowed; each trial's run folder says why")
        hpo.write_results(self.config, study, Path(str(self.config.hydra.sweep.dir)))

    def _check_numbers(self) -> None:
        from mtlexp.errors import MtlexpError

        for key in ("n_trials", "n_jobs"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "n_jobs" else 0):
                raise MtlexpError(f"hydra.sweeper.{key}: expected an integer >= {1 if key == 'n_jobs' else 0}, "
                                  f"got {value!r}")
        if not 0.0 <= float(self.max_failure_rate) <= 1.0:
            raise MtlexpError(f"hydra.sweeper.max_failure_rate: expected a share between 0 and 1, got "
                              f"{self.max_failure_rate}")

    def _study(self, directions: list[str]) -> Any:
        """The study, created or loaded, with its sampler seeded past the trials it has, its pruner stored for
        the trials, and the overrides it was started with checked."""
        import optuna

        from mtlexp import hpo
        from mtlexp.errors import MtlexpError

        storage = self.storage
        if storage is not None and not isinstance(storage, str):
            raise MtlexpError(f"hydra.sweeper.storage: expected a database URL (sqlite:///path/optuna.db) or null, "
                              f"got {storage!r}")
        pruner = _plain(self.pruner)
        if pruner is not None and pruner.get("_target_") == NO_PRUNER:
            pruner = None
        if pruner is not None and (storage is None or len(directions) > 1):
            raise MtlexpError("hydra.sweeper.pruner: pruning needs " + (
                "a study in a storage the trials report to (hydra.sweeper.storage=sqlite:///...)" if storage is None
                else "a single objective (one optimized_metric); use hydra/sweeper/pruner=none"))
        if isinstance(storage, str) and storage.startswith("sqlite:///"):  # SQLite creates the file, not its folder
            Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "Using an existing study ..." on every rerun
        logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per step when the SQLite schema is set up
        try:
            study = optuna.create_study(study_name=self.study_name, storage=storage, load_if_exists=True,
                                        directions=directions)
        except ValueError as error:  # e.g. a stored study of other directions
            raise MtlexpError(f"hydra.sweeper.study_name: {error}") from None
        study.sampler = _build("sampler", _plain(self.sampler), len(study.trials), optuna.samplers.BaseSampler,
                               SAMPLERS)
        self.pruning = pruner is not None
        if self.pruning:
            study.pruner = _build("pruner", pruner, 0, optuna.pruners.BasePruner, PRUNERS)
        if storage is not None:
            overrides = sorted(redact(str(o)) for o in self.config.hydra.overrides.task)
            started = study.user_attrs.get("mtlexp_overrides")
            if started is None:
                study.set_user_attr("mtlexp_overrides", overrides)
            elif list(started) != overrides:
                raise MtlexpError(
                    f"hydra.sweeper.study_name: study {study.study_name!r} in {redact(storage)} was started with "
                    f"other overrides ({' '.join(started)}); resume it with those, or start another study "
                    "(hydra.sweeper.study_name=<new name>)")
            study.set_user_attr("mtlexp_pruner", pruner)
        return study

    def _trial_overrides(self, study: Any, trial: Any) -> list[str]:
        """What lets a trial's job report to its study when pruning: where the study is, and which trial it is."""
        if not self.pruning or not isinstance(OmegaConf.select(self.config, TRIAL_KEY), DictConfig):
            return []
        return [f"{TRIAL_KEY}.study_name={Transformer.str(study.study_name)}",
                f"{TRIAL_KEY}.storage={Transformer.str(self.storage)}", f"{TRIAL_KEY}.number={trial.number}"]

    @staticmethod
    def _outcome(number: int, result: JobReturn, n_values: int) -> tuple[Any, list[float] | None]:
        from optuna.trial import TrialState

        if result.status != JobStatus.COMPLETED:
            return TrialState.FAIL, None
        value = result.return_value
        if isinstance(value, dict) and value.get("status") == "pruned":
            return TrialState.PRUNED, None
        if value is None:  # the job failed (its run folder says why) or its metric was not finite
            return TrialState.FAIL, None
        values = list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
        try:
            floats = [float(v) for v in values]
        except (TypeError, ValueError):
            floats = []
        if len(floats) != n_values or not all(math.isfinite(v) for v in floats):
            log.warning(f"trial {number}: the job returned {value!r}, not {n_values} finite number(s): "
                        "recorded as failed")
            return TrialState.FAIL, None
        return TrialState.COMPLETE, floats


def _plain(node: Any) -> dict[str, Any] | None:
    if node is None:
        return None
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    assert isinstance(plain, dict)
    return plain


def _build(kind: str, node: dict[str, Any] | None, seed_offset: int, base: type, known: dict[str, Any]) -> Any:
    """The sampler or pruner of a ``_target_`` node. A seeded sampler's seed moves on by the trials the study
    already has: the same seed again would draw a resumed study's random start-up trials again."""
    from hydra.utils import instantiate

    from mtlexp.errors import MtlexpError

    node = dict(node or known["tpe" if kind == "sampler" else "none"])
    if seed_offset and node.get("seed") is not None:
        node["seed"] = int(node["seed"]) + seed_offset
    target = node.get("_target_")
    try:
        built = instantiate(node)
    except Exception as error:  # noqa: BLE001 - a wrong target or argument: one line that names the node
        cause = error.__cause__ or error  # Hydra's own message only says that instantiate failed
        detail = "no such class" if isinstance(cause, ImportError) else (str(cause).strip() or type(cause).__name__)
        raise MtlexpError(f"hydra.sweeper.{kind}: cannot build {target}: {detail.splitlines()[0]}; the {kind}s: "
                          f"{', '.join(known)} (hydra/sweeper/{kind}=<name>)") from None
    if not isinstance(built, base):
        raise MtlexpError(f"hydra.sweeper.{kind}: {target} is not an Optuna {kind}; the {kind}s: {', '.join(known)} "
                          f"(hydra/sweeper/{kind}=<name>)")
    return built


def _run_dir(result: JobReturn) -> str | None:
    hydra_cfg = getattr(result, "hydra_cfg", None)
    if hydra_cfg is None:
        return None
    found = OmegaConf.select(hydra_cfg, "runtime.output_dir") or OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir")
    return str(found) if found else None
