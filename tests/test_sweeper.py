"""mtlexp's Optuna sweeper (hydra/sweeper=optuna, src/hydra_plugins/mtlexp_optuna_sweeper) in process: the search
space grammar against the official plugin's documented forms, the ask/tell loop driven through a stand-in
launcher (batches, resuming, pruned and failed trials, the trial overrides, the files written), and the error
lines. tests/e2e/test_hpo.py runs searches through the CLI."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from mtlexp.config import register_configs
from mtlexp.errors import MtlexpError
from mtlexp.hpo import expose_sweeper_plugin

optuna = pytest.importorskip("optuna")
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from hydra_plugins.mtlexp_optuna_sweeper._space import search_space  # noqa: E402
from hydra_plugins.mtlexp_optuna_sweeper.config import PRUNERS, SAMPLERS  # noqa: E402


@pytest.mark.parametrize(("line", "expected"), [
    # The forms the official plugin's documentation shows, as Optuna >= 4 names them.
    ("x=choice(1, 2)", CategoricalDistribution([1, 2])),
    ("x=choice(-5, 0, 5)", CategoricalDistribution([-5, 0, 5])),
    ("x=1,2,3", CategoricalDistribution([1, 2, 3])),
    ("x=choice(adam, sgd)", CategoricalDistribution(["adam", "sgd"])),
    ("x=choice([8], [16, 16])", CategoricalDistribution(["[8]", "[16,16]"])),
    ("x=choice(true, false)", CategoricalDistribution([True, False])),
    ("x=range(1, 10, 2)", IntDistribution(1, 9, step=2)),
    ("x=range(1, 4)", IntDistribution(1, 4)),
    ("x=range(-5.5, 5.5, step=0.5)", FloatDistribution(-5.5, 5.5, step=0.5)),
    ("x=range(0.1, 0.45, 0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
    ("x=shuffle(range(1, 4))", CategoricalDistribution([1, 2, 3])),
    ("x=interval(0, 1)", FloatDistribution(0.0, 1.0)),
    ("x=interval(-5.0, 5.0)", FloatDistribution(-5.0, 5.0)),
    ("x=tag(log, interval(1e-4, 1e-1))", FloatDistribution(1e-4, 1e-1, log=True)),
    ("x=int(interval(1, 8))", IntDistribution(1, 8)),
    ("x=tag(log, int(interval(1, 64)))", IntDistribution(1, 64, log=True)),
])
def test_each_sweep_form_is_the_official_plugins_distribution(line, expected):
    space, fixed = search_space({}, [line])
    assert fixed == {}
    if line.startswith("x=shuffle"):  # the choices, in a random order
        assert sorted(space["x"].choices) == sorted(expected.choices)
    elif isinstance(expected, FloatDistribution) and expected.step:
        got = space["x"]
        assert (got.low, got.step, got.log) == (expected.low, expected.step, expected.log)
        assert got.high == pytest.approx(expected.high)
    else:
        assert space == {"x": expected}


def test_the_command_line_overrides_the_configs_params_and_plain_values_are_fixed():
    params = {"optimizer.lr": "tag(log, interval(1e-4, 1e-1))", "model.num_experts": "choice(2, 4)"}
    space, fixed = search_space(params, ["model.num_experts=8", "model.dropout=interval(0, 0.3)",
                                         "hparams_search=mmoe_optuna", "+extra=a"])
    assert set(space) == {"optimizer.lr", "model.dropout"}
    assert fixed == {"model.num_experts": "8", "hparams_search": "mmoe_optuna", "+extra": "a"}


@pytest.mark.parametrize(("line", "message"), [
    ("x=interval(2, 1)", "hydra.sweeper.params.x: "),
    ("x=tag(log, interval(0, 1))", "hydra.sweeper.params.x: "),
    ("x=range(5, 1)", "hydra.sweeper.params.x: expected range(start, stop, step) with start <= stop"),
    ("x=choice(1,", "hydra.sweeper.params: 'x=choice(1,' is not Hydra's override grammar"),
    ("x=glob(*)", "hydra.sweeper.params.x: "),
])
def test_a_bad_search_space_is_one_line_naming_the_parameter(line, message):
    with pytest.raises(MtlexpError) as error:
        search_space({}, [line])
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_builds_with_a_seed_and_samples_past_its_start_up_trials(name):
    from hydra_plugins.mtlexp_optuna_sweeper.optuna_sweeper import _build

    node = {**SAMPLERS[name], "seed": 3, **({"n_startup_trials": 1} if "n_startup_trials" in SAMPLERS[name] else {})}
    sampler = _build("sampler", node, 0, optuna.samplers.BaseSampler, SAMPLERS)
    assert type(sampler).__name__ == SAMPLERS[name]["_target_"].rsplit(".", 1)[1]
    study = optuna.create_study(sampler=sampler)
    space = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "dropout": FloatDistribution(0, 0.5)}
    for _ in range(3):  # CMA-ES and GP import their own dependencies only here
        trial = study.ask(space)
        study.tell(trial, trial.params["lr"] + trial.params["dropout"])
    assert len({t.params["lr"] for t in study.trials}) == 3


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_pruner_builds(name):
    from hydra_plugins.mtlexp_optuna_sweeper.optuna_sweeper import _build

    assert isinstance(_build("pruner", PRUNERS[name], 0, optuna.pruners.BasePruner, PRUNERS), optuna.pruners.BasePruner)


class Launcher:
    """The launcher's part of a sweep, without training: each job returns what ``results`` gives for its
    overrides, and gets a run folder with the overrides and config Hydra would have written."""

    def __init__(self, sweep_dir: Path, results) -> None:
        self.sweep_dir, self.results, self.batches = sweep_dir, results, []

    def launch(self, job_overrides, initial_job_idx):
        self.batches.append((initial_job_idx, [list(o) for o in job_overrides]))
        returns = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            run = self.sweep_dir / str(idx)
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
            (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"job": idx}))
            value = self.results(dict(o.split("=", 1) for o in overrides))
            if isinstance(value, Exception):
                returns.append(JobReturn(status=JobStatus.FAILED, _return_value=value,
                                         hydra_cfg=OmegaConf.create({"runtime": {"output_dir": str(run)}})))
            else:
                returns.append(JobReturn(status=JobStatus.COMPLETED, _return_value=value,
                                         hydra_cfg=OmegaConf.create({"runtime": {"output_dir": str(run)}})))
        return returns


@pytest.fixture
def sweeper_for(tmp_path):
    """``sweeper_for(*overrides, results=...)``: the sweeper of ``hparams_search=mmoe_optuna`` with these
    overrides (its study in tmp_path), set up with a stand-in launcher."""
    register_configs()
    expose_sweeper_plugin()
    counter = iter(range(100))

    def make(*overrides, results=lambda o: float(o["optimizer.lr"])):
        sweep_dir = tmp_path / f"sweep{next(counter)}"
        GlobalHydra.instance().clear()
        with initialize_config_module("mtlexp.conf", version_base="1.3"):
            cfg = compose("config", overrides=["hparams_search=mmoe_optuna", f"hydra.sweep.dir={sweep_dir}",
                                               f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
                                               *overrides], return_hydra_config=True)
        GlobalHydra.instance().clear()
        hydra_keys = ("hydra.", "hydra/", "~hydra")
        task = ["hparams_search=mmoe_optuna", *(o for o in overrides if not o.startswith(hydra_keys))]
        with open_dict(cfg):
            cfg.hydra.overrides.task = task  # as Hydra records the command line
        sweeper = instantiate(cfg.hydra.sweeper)
        sweeper.config, sweeper.launcher = cfg, Launcher(sweep_dir, results)
        sweeper.arguments = task  # what Hydra hands a sweeper
        return sweeper, sweep_dir

    yield make
    GlobalHydra.instance().clear()


def load(tmp_path, name="mmoe_optuna"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def test_trials_run_in_batches_of_n_jobs_and_each_job_knows_its_trial_when_pruning(sweeper_for, tmp_path):
    sweeper, sweep_dir = sweeper_for("hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=2",
                                     "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_warmup_steps=1")
    sweeper.sweep(sweeper.arguments)
    assert [(idx, len(jobs)) for idx, jobs in sweeper.launcher.batches] == [(0, 2), (2, 2), (4, 1)]
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    for trial, job in zip(study.trials, (j for _, jobs in sweeper.launcher.batches for j in jobs)):
        assert job[-3:] == ["trial.study_name=mmoe_optuna", f"trial.storage=sqlite\\:///{tmp_path / 'optuna.db'}",
                            f"trial.number={trial.number}"]
        assert trial.value == pytest.approx(trial.params["optimizer.lr"])
    # The pruner the trials' jobs build, as a plain _target_ node.
    assert study.user_attrs["mtlexp_pruner"] == {
        "_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 1, "interval_steps": 1}

    best = yaml.safe_load((sweep_dir / "best_trial.yaml").read_text())
    winner = min(study.trials, key=lambda t: t.value)
    assert best["best_value"] == winner.value and best["run_dir"] == str(sweep_dir / str(winner.number))
    assert best["command"].startswith("mtlexp train hparams_search=mmoe_optuna ") and "trial." not in best["command"]
    assert f"optimizer.lr={winner.params['optimizer.lr']}" in best["command"]
    assert yaml.safe_load((sweep_dir / "best_config.yaml").read_text()) == {"job": winner.number}


def test_a_rerun_resumes_to_n_trials_counting_pruned_trials_and_moves_the_seed_on(sweeper_for, tmp_path):
    def results(overrides):
        return {"status": "pruned", "epoch": 1} if float(overrides["optimizer.lr"]) > 3e-3 else 0.5

    sweeper, _ = sweeper_for("hydra.sweeper.n_trials=3", results=results)
    sweeper.sweep(sweeper.arguments)
    first = load(tmp_path).trials
    assert len(first) == 3
    assert TrialState.PRUNED in {t.state for t in first}  # the seeded draws include a large learning rate

    sweeper, sweep_dir = sweeper_for("hydra.sweeper.n_trials=5", results=results)
    sweeper.sweep(sweeper.arguments)
    trials = load(tmp_path).trials
    assert len(trials) == 5 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    # The same seed again would have drawn trial 0's parameters again.
    assert trials[3].params != trials[0].params
    assert [idx for idx, _ in sweeper.launcher.batches] == [0, 1]

    sweeper, _ = sweeper_for("hydra.sweeper.n_trials=5", results=results)
    with pytest.raises(SystemExit) as stop:
        sweeper.sweep(sweeper.arguments)
    assert stop.value.code == 0 and sweeper.launcher.batches == []


def test_failed_trials_are_told_failed_and_made_up_for_by_a_rerun(sweeper_for, tmp_path):
    outcomes = iter([None, RuntimeError("boom"), math.nan, "not a number", 0.25])
    sweeper, _ = sweeper_for("hydra.sweeper.n_trials=5", results=lambda o: next(outcomes))
    sweeper.sweep(sweeper.arguments)  # mmoe_optuna allows any share of failures (max_failure_rate: 1.0)
    assert [t.state for t in load(tmp_path).trials] == [TrialState.FAIL] * 4 + [TrialState.COMPLETE]

    sweeper, _ = sweeper_for("hydra.sweeper.n_trials=2", results=lambda o: 0.5)
    sweeper.sweep(sweeper.arguments)
    assert [t.state for t in load(tmp_path).trials][5:] == [TrialState.COMPLETE]
    assert len(sweeper.launcher.batches) == 1


def test_a_multi_objective_study_writes_its_pareto_front(sweeper_for, tmp_path):
    def results(overrides):  # two objectives that pull the learning rate in opposite directions
        lr, experts = float(overrides["optimizer.lr"]), int(overrides["model.num_experts"])
        return [lr * experts, 1 / lr]

    sweeper, sweep_dir = sweeper_for("optimized_metric=[val/task1/mse,val/task2/mse]",
                                     "hydra.sweeper.direction=[minimize,minimize]", "hydra.sweeper.n_trials=8",
                                     "hydra/sweeper/sampler=nsgaii", "~hydra.sweeper.sampler.n_startup_trials",
                                     "hydra.sweeper.sampler.population_size=4",
                                     "hydra.sweeper.sampler.seed=0", "hydra/sweeper/pruner=none", results=results)
    sweeper.sweep(sweeper.arguments)
    study = load(tmp_path)
    front = yaml.safe_load((sweep_dir / "best_trials.yaml").read_text())
    assert list(front) == ["optimized_metric", "directions", "study_name", "storage", "trials"]
    assert front["optimized_metric"] == ["val/task1/mse", "val/task2/mse"]
    assert front["directions"] == ["minimize", "minimize"]
    values = {t.number: t.values for t in study.trials}
    on_front = [t["number"] for t in front["trials"]]
    assert on_front and [values[n][0] for n in on_front] == sorted(values[n][0] for n in on_front)

    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and a != b

    for number in on_front:  # nothing dominates a trial on the front, and every trial off it is dominated
        assert not any(dominates(v, values[number]) for v in values.values())
    for number in set(values) - set(on_front):
        assert any(dominates(values[n], values[number]) for n in on_front)
    for trial in front["trials"]:
        assert trial["values"] == values[trial["number"]]
        assert trial["run_dir"] == str(sweep_dir / str(trial["number"]))
        assert "trial." not in trial["command"]
        assert "'optimized_metric=[val/task1/mse,val/task2/mse]'" in trial["command"]
    assert "{optimizer.lr: " in (sweep_dir / "best_trials.yaml").read_text()  # the brief's flow style


def test_without_a_pruner_the_jobs_get_no_trial_overrides(sweeper_for, tmp_path):
    sweeper, _ = sweeper_for("hydra.sweeper.n_trials=2", "hydra/sweeper/pruner=none")
    sweeper.sweep(sweeper.arguments)
    jobs = [job for _, batch in sweeper.launcher.batches for job in batch]
    assert len(jobs) == 2 and not any(o.startswith("trial.") for job in jobs for o in job)
    assert load(tmp_path).user_attrs["mtlexp_pruner"] is None


@pytest.mark.parametrize(("overrides", "message"), [
    (["hydra.sweeper.direction=up"],
     "hydra.sweeper.direction: expected minimize or maximize (a list of them for a list optimized_metric), got 'up'"),
    (["optimized_metric=[val/task1/mse,val/task2/mse]"],
     "hydra.sweeper.direction: expected one direction per optimized_metric (2: val/task1/mse, val/task2/mse), "
     "got 1: minimize"),
    (["optimized_metric=[val/task1/mse,val/nope/mse]", "hydra.sweeper.direction=[minimize,minimize]"],
     "optimized_metric: no task 'nope' in 'val/nope/mse'; the tasks are task1, task2"),
    (["hydra/sweeper/pruner=median", "hydra.sweeper.storage=null"],
     "hydra.sweeper.pruner: pruning needs a study in a storage the trials report to "
     "(hydra.sweeper.storage=sqlite:///...)"),
    (["hydra/sweeper/pruner=hyperband", "optimized_metric=[val/task1/mse,val/task2/mse]",
      "hydra.sweeper.direction=[minimize,maximize]"],
     "hydra.sweeper.pruner: pruning needs a single objective (one optimized_metric); use hydra/sweeper/pruner=none"),
    (["hydra.sweeper.sampler._target_=optuna.samplers.NopeSampler"],
     "hydra.sweeper.sampler: cannot build optuna.samplers.NopeSampler: no such class; the samplers: tpe, random, "
     "cmaes, nsgaii, gp (hydra/sweeper/sampler=<name>)"),
    (["hydra/sweeper/sampler=random"],  # mmoe_optuna's sampler sets TPE's n_startup_trials
     "hydra.sweeper.sampler: cannot build optuna.samplers.RandomSampler: RandomSampler.__init__() got an "
     "unexpected keyword argument 'n_startup_trials'; the samplers: "),
    (["hydra.sweeper.sampler._target_=optuna.pruners.MedianPruner", "~hydra.sweeper.sampler.n_ei_candidates",
      "~hydra.sweeper.sampler.seed"],
     "hydra.sweeper.sampler: optuna.pruners.MedianPruner is not an Optuna sampler; the samplers: tpe, random, "
     "cmaes, nsgaii, gp (hydra/sweeper/sampler=<name>)"),
    (["hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs: expected an integer >= 1, got 0"),
    (["hydra.sweeper.max_failure_rate=2"], "hydra.sweeper.max_failure_rate: expected a share between 0 and 1, got 2"),
])
def test_a_bad_search_config_is_one_line_before_any_trial(sweeper_for, overrides, message):
    sweeper, sweep_dir = sweeper_for(*overrides)
    with pytest.raises(MtlexpError) as error:
        sweeper.sweep(sweeper.arguments)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert sweeper.launcher.batches == [] and not sweep_dir.exists()


def test_too_many_failures_stop_the_search_and_other_overrides_are_refused(sweeper_for, tmp_path):
    sweeper, _ = sweeper_for("hydra.sweeper.max_failure_rate=0.0", "hydra.sweeper.n_trials=3", results=lambda o: None)
    with pytest.raises(MtlexpError, match=r"^hydra.sweeper.max_failure_rate: 1 of 1 trials failed, more than the 0 "):
        sweeper.sweep(sweeper.arguments)
    sweeper, _ = sweeper_for("data.num_train=300")
    with pytest.raises(MtlexpError) as error:
        sweeper.sweep(sweeper.arguments)
    assert str(error.value) == (
        f"hydra.sweeper.study_name: study 'mmoe_optuna' in sqlite:///{tmp_path / 'optuna.db'} was started with other "
        "overrides (hparams_search=mmoe_optuna); resume it with those, or start another study "
        "(hydra.sweeper.study_name=<new name>)")


def test_the_installed_versions_are_todays():
    from importlib.metadata import version

    from packaging.version import Version

    assert Version(version("optuna")) >= Version("4")
    assert Version(version("sqlalchemy")) >= Version("2")
    import mlflow  # noqa: F401 - the mlflow extra resolves beside hpo's, in one environment


def test_hydra_discovers_the_sweeper_from_this_install(tmp_path):
    code = ("from mtlexp.hpo import expose_sweeper_plugin; expose_sweeper_plugin(); "
            "from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; "
            "print(sorted(f'{c.__module__}.{c.__name__}' for c in Plugins.instance().discover(Sweeper)))")
    found = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "'hydra_plugins.mtlexp_optuna_sweeper.optuna_sweeper.OptunaSweeper'" in found.stdout, found.stderr


def test_outcomes_of_a_job_as_optuna_states():
    from hydra_plugins.mtlexp_optuna_sweeper.optuna_sweeper import OptunaSweeper

    def outcome(value, status=JobStatus.COMPLETED, n=1):
        return OptunaSweeper._outcome(0, JobReturn(status=status, _return_value=value), n)

    assert outcome(0.5) == (TrialState.COMPLETE, [0.5])
    assert outcome([0.5, 2]) == (TrialState.FAIL, None)
    assert outcome([0.5, 2], n=2) == (TrialState.COMPLETE, [0.5, 2.0])
    assert outcome({"status": "pruned", "epoch": 2}) == (TrialState.PRUNED, None)
    assert outcome(None) == (TrialState.FAIL, None)
    assert outcome(math.inf) == (TrialState.FAIL, None)
    assert outcome(ValueError("x"), status=JobStatus.FAILED) == (TrialState.FAIL, None)


def test_the_objective_of_a_list_metric_is_one_value_per_metric():
    from mtlexp.errors import UnknownMetric
    from mtlexp.hpo import objective

    # A run's record as metrics.json holds it (a stacked run's holds its replicas' means).
    record = {"val": {"task1": {"mse": 1.5, "r2": 0.2}, "task2": {"mse": 2.5}}, "val_norm_loss": 0.5}
    assert objective(record, "val/norm_loss") == 0.5
    assert objective(record, ["val/task1/mse", "val/task2/mse"]) == [1.5, 2.5]
    assert objective(record, OmegaConf.create(["val/task2/mse"])) == [2.5]
    assert objective({**record, "val": {**record["val"], "task2": {"mse": math.nan}}},
                     ["val/task1/mse", "val/task2/mse"]) is None  # a failed trial
    with pytest.raises(UnknownMetric, match="no metric 'val/task2/r2' in this run"):
        objective(record, ["val/task1/mse", "val/task2/r2"])


def test_a_list_optimized_metric_is_checked_like_one(make_cfg):
    from mtlexp.config import validate_run

    validate_run(make_cfg("optimized_metric=[val/task1/mse,val/norm_loss]"))
    with pytest.raises(MtlexpError, match=r"^optimized_metric: expected a validation metric \('val/norm_loss' or "
                                          r"'val/<task>/<metric>'\) or a list of them, "
                                          r"got \['val/task1/mse', 'test/x'\]"):
        validate_run(make_cfg("optimized_metric=[val/task1/mse,test/x]"))


def test_search_configs_written_before_the_plugin_still_load_their_callback():
    # hparams_search files of earlier versions carry hydra.callbacks.optuna_study; the sweeper does its work now.
    callback = instantiate({"_target_": "mtlexp.hpo.OptunaStudy"})
    config = OmegaConf.create({"hydra": {"sweeper": {"n_trials": 3}}})
    callback.on_multirun_start(config=config)
    callback.on_multirun_end(config=config)
    assert config.hydra.sweeper.n_trials == 3
