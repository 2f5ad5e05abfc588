"""Hyperparameter search through mtlexp's Optuna sweeper (hparams_search=..., docs/hpo.md): a study on tiny data,
its best trial written out, its SQLite storage resumed by the same command, parallel trials (joblib), a
multi-objective study's Pareto front, a config written for hydra-optuna-sweeper, and the error lines.
tests/test_sweeper.py tests the sweeper in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_in_fork

pytestmark = pytest.mark.slow
optuna = pytest.importorskip("optuna")

TINY = [
    "data.num_train=256", "data.num_val=128", "data.num_test=128", "data.batch_size=64",
    "trainer.max_epochs=1",
]


def mtlexp(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # A forked child (conftest): the tests that need a new interpreter (plugin discovery) start one themselves.
    return cli_in_fork(args, cwd)


def search(tmp_path: Path, sweep: str, n_trials: int, *extra: str) -> subprocess.CompletedProcess:
    return mtlexp(["train", "-m", "hparams_search=mmoe_optuna", f"hydra.sweeper.n_trials={n_trials}", *TINY, *extra,
                   f"hydra.sweep.dir={tmp_path / sweep}", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}"],
                  tmp_path)


def trials(tmp_path: Path, study_name: str = "mmoe_optuna") -> list:
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    return study.get_trials(deepcopy=False)


def test_search_writes_the_best_trial_and_a_rerun_resumes_the_study(tmp_path):
    first = search(tmp_path, "s1", 3)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    done = trials(tmp_path)
    assert [t.state.name for t in done] == ["COMPLETE"] * 3
    values = {t.number: t.value for t in done}

    best = (tmp_path / "s1" / "best_trial.yaml").read_text()
    import yaml

    best = yaml.safe_load(best)
    assert best["optimized_metric"] == "val/norm_loss" and best["direction"] == "minimize"
    assert best["best_value"] == pytest.approx(min(values.values()))
    assert set(best["best_params"]) == {"optimizer.lr", "model.num_experts", "model.expert_hidden"}
    # The best trial's run folder holds that value, and best_config.yaml is its resolved config.
    run = Path(best["run_dir"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_norm_loss"] == pytest.approx(best["best_value"])
    config = yaml.safe_load((tmp_path / "s1" / "best_config.yaml").read_text())
    assert config["optimizer"]["lr"] == pytest.approx(best["best_params"]["optimizer.lr"])
    assert config["model"]["num_experts"] == best["best_params"]["model.num_experts"]
    assert best["command"].startswith("mtlexp train ") and "hparams_search=mmoe_optuna" in best["command"]
    assert yaml.safe_load((tmp_path / "s1" / "optimization_results.yaml").read_text())["best_value"] == best["best_value"]

    # The same command with n_trials=4: the study ends with 4 trials (1 new), not 7; the new one is not a
    # replay of trial 0 (the sampler's seed moves on with the study).
    second = search(tmp_path, "s2", 4)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "3 of 4 trials complete, 1 to run" in second.stdout
    done = trials(tmp_path)
    assert [t.state.name for t in done] == ["COMPLETE"] * 4
    assert done[3].params != done[0].params
    assert sorted(p.name for p in (tmp_path / "s2").iterdir() if p.name.isdigit()) == ["0"]

    # Other overrides would mix two objectives in one study: refused, in one line.
    other = search(tmp_path, "s3", 5, "data.num_train=300")
    assert other.returncode == 1
    assert other.stderr.strip().splitlines()[-1].startswith("mtlexp: error: hydra.sweeper.study_name: study 'mmoe_optuna'")
    assert len(trials(tmp_path)) == 4


def test_an_unknown_metric_is_one_line_naming_the_available_ones(tmp_path):
    # A task the config does not have: refused before the study starts.
    result = search(tmp_path, "s", 3, "optimized_metric=val/nope/mse")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "mtlexp: error: optimized_metric: no task 'nope' in 'val/nope/mse'; the tasks are task1, task2"]
    assert not (tmp_path / "s").exists()

    # A metric the run turns out not to have (regression tasks have no AUROC): the first trial says which ones it
    # has, and the sweep stops there instead of training every trial to fail the same way.
    result = search(tmp_path, "s", 3, "optimized_metric=val/task1/auroc")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["mtlexp: error: optimized_metric: no metric 'val/task1/auroc' in this run; available: "
                      "val/norm_loss, val/task1/mae, val/task1/mse, val/task1/norm_loss, val/task1/r2, val/task2/mae, "
                      "val/task2/mse, val/task2/norm_loss, val/task2/r2"], result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.name.isdigit()) == ["0"]


def test_a_study_in_which_every_trial_fails_ends_with_one_line(tmp_path):
    # A value only the data module checks fails each trial (recorded as failed); Optuna then has no best trial.
    result = search(tmp_path, "s", 2, "data.noise_std=-1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("mtlexp: error")]
    assert errors == ["mtlexp: error: data.noise_std: expected a number >= 0, got -1"] * 2 + [
        "mtlexp: error: hparams_search: no trial of the study completed; the errors above, and each trial's run "
        "folder, say why"], result.stderr[-3000:]
    assert [t.state.name for t in trials(tmp_path)] == ["FAIL", "FAIL"]


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "hparams_search").glob("*.yaml")))
def test_every_search_composes_with_a_metric_its_tasks_have_and_a_search_space_optuna_takes(name):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra_plugins.mtlexp_optuna_sweeper._space import search_space

    from mtlexp.config import register_configs, validate_run
    from mtlexp.hpo import check_metric_name, expose_sweeper_plugin

    register_configs()
    expose_sweeper_plugin()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("mtlexp.conf", version_base="1.3"):
            cfg = compose("config", overrides=[f"hparams_search={name}"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    check_metric_name(cfg.optimized_metric, cfg)
    validate_run(cfg)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.mtlexp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.study_name and sweeper.storage.startswith("sqlite:///")
    space, fixed = search_space(sweeper.params, [])
    assert set(space) == set(sweeper.params) and not fixed


def test_without_the_extra_hparams_search_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['optuna'] = None; from mtlexp.cli import main; "
            "main(['train', '-m', 'hparams_search=mmoe_optuna'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "mtlexp: error: hparams_search needs Optuna: pip install 'mtlexp[hpo]'"


def test_the_official_plugin_installed_beside_it_is_one_line(tmp_path):
    # hydra-optuna-sweeper registers hydra/sweeper=optuna too (on Optuna 2): a stand-in package of that name.
    (tmp_path / "site" / "hydra_plugins" / "hydra_optuna_sweeper").mkdir(parents=True)
    (tmp_path / "site" / "hydra_plugins" / "hydra_optuna_sweeper" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run([sys.executable, "-m", "mtlexp", "train", "-m", "hparams_search=mmoe_optuna"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "mtlexp: error: hparams_search: hydra-optuna-sweeper is installed too, and it also registers "
        "hydra/sweeper=optuna (on Optuna 2); mtlexp has its own: pip uninstall hydra-optuna-sweeper")


def test_parallel_trials_with_the_joblib_launcher_write_one_study(tmp_path):
    result = search(tmp_path, "s", 3, "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    done = trials(tmp_path)
    assert [t.state.name for t in done] == ["COMPLETE"] * 3
    # Each trial's value is its own run's (the jobs ran in other processes, in two batches: 2 + 1).
    runs = [Path(t.user_attrs["mtlexp_run_dir"]) for t in done]
    assert sorted(r.name for r in runs) == ["0", "1", "2"]
    for trial, run in zip(done, runs):
        assert json.loads((run / "metrics.json").read_text())["val_norm_loss"] == pytest.approx(trial.value)
        # The preset prunes: each job was told its trial, and reported to it through the one SQLite file.
        assert f"trial.number={trial.number}" in (run / ".hydra" / "overrides.yaml").read_text()
        assert sorted(trial.intermediate_values) == list(range(json.loads((run / "metrics.json").read_text())["epochs_trained"]))
    assert "launching 2 jobs" in result.stdout.lower() and "launching 1 jobs" in result.stdout.lower()


def test_a_multi_objective_search_writes_the_pareto_front(tmp_path):
    import yaml

    metrics = ["val/task1/mse", "val/task2/mse"]
    result = search(tmp_path, "s", 4, f"optimized_metric=[{','.join(metrics)}]", "hydra.sweeper.study_name=mo",
                    "hydra.sweeper.direction=[minimize,minimize]", "hydra/sweeper/pruner=none")
    assert result.returncode == 0, result.stderr[-3000:]
    done = {t.number: t.values for t in trials(tmp_path, "mo")}
    assert len(done) == 4 and all(v is not None for v in done.values())
    front = yaml.safe_load((tmp_path / "s" / "best_trials.yaml").read_text())
    assert front["optimized_metric"] == metrics and front["directions"] == ["minimize", "minimize"]
    assert front["study_name"] == "mo" and front["storage"] == f"sqlite:///{tmp_path / 'optuna.db'}"

    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and a != b

    numbers = [t["number"] for t in front["trials"]]
    assert numbers and [done[n][0] for n in numbers] == sorted(done[n][0] for n in numbers)
    for entry in front["trials"]:
        assert not any(dominates(values, entry["values"]) for values in done.values())
        run = json.loads((Path(entry["run_dir"]) / "metrics.json").read_text())
        assert entry["values"] == pytest.approx([run["val"]["task1"]["mse"], run["val"]["task2"]["mse"]])
        assert entry["command"].startswith("mtlexp train hparams_search=mmoe_optuna ")
        assert "trial." not in entry["command"]
    assert set(done) - set(numbers) == {n for n, v in done.items() if any(dominates(done[m], v) for m in numbers)}


def test_a_search_config_written_for_hydra_optuna_sweeper_runs_unchanged(tmp_path):
    # lightning-hydra-template's hparams_search/mnist_optuna.yaml, with this project's keys: it names the
    # official plugin's class and keeps its study in memory.
    (tmp_path / "conf" / "hparams_search").mkdir(parents=True)
    (tmp_path / "conf" / "hparams_search" / "template_optuna.yaml").write_text("""\
# @package _global_
defaults:
  - override /hydra/sweeper: optuna
optimized_metric: "val/task1/mse"
hydra:
  mode: "MULTIRUN"
  sweeper:
    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper
    storage: null
    study_name: null
    n_jobs: 1
    direction: minimize
    n_trials: 2
    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 1234
      n_startup_trials: 10
    params:
      optimizer.lr: interval(0.0001, 0.1)
      model.num_experts: choice(2, 4)
""")
    result = mtlexp(["train", "--config-dir", str(tmp_path / "conf"), "hparams_search=template_optuna", *TINY,
                     f"hydra.sweep.dir={tmp_path / 's'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    import yaml

    best = yaml.safe_load((tmp_path / "s" / "best_trial.yaml").read_text())
    assert best["storage"] is None and set(best["best_params"]) == {"optimizer.lr", "model.num_experts"}
    run = json.loads((Path(best["run_dir"]) / "metrics.json").read_text())
    assert run["val"]["task1"]["mse"] == pytest.approx(best["best_value"])
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.name.isdigit()) == ["0", "1"]
    assert "trial." not in (Path(best["run_dir"]) / ".hydra" / "overrides.yaml").read_text()  # no storage to report to


@pytest.mark.parametrize(("args", "expected"), [
    (["hydra/sweeper/sampler=nope"], "mtlexp: error: Could not find 'hydra/sweeper/sampler/nope'; the options in "
                                     "hydra/sweeper/sampler: cmaes, gp, nsgaii, random, tpe"),
    (["optimized_metric=[val/task1/mse,val/task2/mse]"],
     "mtlexp: error: hydra.sweeper.direction: expected one direction per optimized_metric (2: val/task1/mse, "
     "val/task2/mse), got 1: minimize"),
    (["hydra/sweeper/pruner=median", "hydra.sweeper.storage=null"],
     "mtlexp: error: hydra.sweeper.pruner: pruning needs a study in a storage the trials report to "
     "(hydra.sweeper.storage=sqlite:///...)"),
    (["optimizer.lr=interval(1, 0)"], "mtlexp: error: hydra.sweeper.params.optimizer.lr: "),
])
def test_a_bad_search_config_is_one_line_without_traceback(tmp_path, args, expected):
    result = cli_in_fork(["train", "-m", "hparams_search=mmoe_optuna", f"hydra.sweep.dir={tmp_path / 's'}", *args],
                         tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(expected), result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "s").exists() and not (tmp_path / "multirun").exists()
