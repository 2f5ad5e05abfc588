"""Hyperparameter search through Hydra's Optuna sweeper (hparams_search=..., docs/hpo.md): a study on tiny data,
its best trial written out, its SQLite storage resumed by the same command, and the objective's errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

TINY = [
    "data.num_train=256", "data.num_val=128", "data.num_test=128", "data.batch_size=64",
    "trainer.max_epochs=1",
]


def mtlexp(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "mtlexp", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def search(tmp_path: Path, sweep: str, n_trials: int, *extra: str) -> subprocess.CompletedProcess:
    return mtlexp(["train", "-m", "hparams_search=mmoe_optuna", f"hydra.sweeper.n_trials={n_trials}", *TINY, *extra,
                   f"hydra.sweep.dir={tmp_path / sweep}", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}"],
                  tmp_path)


def trials(tmp_path: Path) -> list:
    study = optuna.load_study(study_name="mmoe_optuna", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
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
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    from mtlexp.hpo import check_metric_name
    from mtlexp.config import register_configs, validate_run

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("mtlexp.conf", version_base="1.3"):
            cfg = compose("config", overrides=[f"hparams_search={name}"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    check_metric_name(cfg.optimized_metric, cfg)
    validate_run(cfg)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.study_name and sweeper.storage.startswith("sqlite:///")
    assert cfg.hydra.callbacks.optuna_study._target_ == "mtlexp.hpo.OptunaStudy"
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert set(space) == set(sweeper.params) and not fixed


def test_without_the_extra_hparams_search_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['optuna'] = None; from mtlexp.cli import main; "
            "main(['train', '-m', 'hparams_search=mmoe_optuna'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "mtlexp: error: hparams_search needs Hydra's Optuna sweeper: pip install 'mtlexp[hpo]'"
