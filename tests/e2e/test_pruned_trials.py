"""Pruning without a sweeper: a study made here with Optuna (its pruner in the ``mtlexp_pruner`` attribute, as the
sweeper stores it, and finished trials as the pruner's baseline), then ``mtlexp train trial.number=<n> ...`` run
as the sweeper's job would be, reporting to that trial through the SQLite storage (docs/hpo.md, "Pruning")."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_in_fork

pytestmark = pytest.mark.slow
optuna = pytest.importorskip("optuna")

EPOCHS = 4
TINY = ["data.num_train=256", "data.num_val=128", "data.num_test=128", "data.batch_size=64",
        f"trainer.max_epochs={EPOCHS}"]
STUDY = "pruning"
MEDIAN = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 1}


def study_with_baseline(tmp_path: Path, baseline: float, pruner: dict | None = MEDIAN) -> tuple[str, int]:
    """An SQLite study minimising val/norm_loss whose three finished trials reported ``baseline`` at every epoch;
    returns its storage and the number of a new running trial."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="minimize")
    study.set_user_attr("mtlexp_pruner", pruner)
    for _ in range(3):
        study.add_trial(optuna.trial.create_trial(
            value=baseline, intermediate_values={epoch: baseline for epoch in range(EPOCHS)}))
    return storage, study.ask().number


def arguments(tmp_path: Path, storage: str, number: int, *extra: str) -> list[str]:
    return ["train", *TINY, "optimized_metric=val/norm_loss", f"trial.study_name={STUDY}", f"trial.storage={storage}",
            f"trial.number={number}", f"hydra.run.dir={tmp_path / 'run'}", *extra]


def train(tmp_path: Path, storage: str, number: int, *extra: str) -> subprocess.CompletedProcess:
    return cli_in_fork(arguments(tmp_path, storage, number, *extra), tmp_path)


def reported(storage: str, number: int) -> dict[int, float]:
    trial = optuna.load_study(study_name=STUDY, storage=storage).trials[number]
    assert trial.state.name == "RUNNING"  # the sweeper, not the run, tells the study how the trial ended
    return trial.intermediate_values


def logged_val_norm_loss(run: Path) -> dict[int, float]:
    """val/norm_loss per training epoch, as the run's CSV logger wrote it (the final evaluation of the best
    checkpoint logs one more row, at the epoch after the last)."""
    trained = json.loads((run / "metrics.json").read_text())["epochs_trained"]
    with (run / "csv" / "metrics.csv").open() as file:
        return {int(row["epoch"]): float(row["val/norm_loss"]) for row in csv.DictReader(file)
                if row["val/norm_loss"] and int(row["epoch"]) < trained}


def test_a_trial_worse_than_the_median_is_pruned_before_its_last_epoch(tmp_path):
    # Every finished trial reached 0.05: a run whose learning rate barely moves it stays near 1 (its label prior).
    storage, number = study_with_baseline(tmp_path, 0.05)
    result = train(tmp_path, storage, number, "optimizer.lr=1e-7")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    # Warm-up is one epoch: the pruner may stop it after its second epoch (1), and it must, at that value.
    assert metrics["status"] == "pruned" and metrics["pruned_epoch"] == 1 < EPOCHS - 1
    assert metrics["epochs_trained"] == 2
    assert not metrics.get("test") and "test_norm_loss" not in metrics  # the test split is skipped
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert reported(storage, number) == pytest.approx(logged_val_norm_loss(run))
    assert sorted(reported(storage, number)) == [0, 1]
    # The objective a sweeper reads says pruned, with the epoch.
    from mtlexp.hpo import objective

    assert objective(metrics, "val/norm_loss") == {"status": "pruned", "epoch": 1}


def test_a_trial_better_than_the_median_reports_every_epoch_and_is_tested(tmp_path):
    storage, number = study_with_baseline(tmp_path, 50.0)
    result = train(tmp_path, storage, number)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and "pruned_epoch" not in metrics and metrics["test"]
    assert sorted(reported(storage, number)) == list(range(EPOCHS))
    assert reported(storage, number) == pytest.approx(logged_val_norm_loss(run))


def test_a_stacked_trial_reports_the_mean_of_its_replicas_and_is_pruned_as_one(tmp_path):
    storage, number = study_with_baseline(tmp_path, 0.05)
    result = train(tmp_path, storage, number, "stack=2", "optimizer.lr=1e-7")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "pruned" and metrics["pruned_epoch"] == 1
    replicas = [run / r for r in metrics["replicas"]]
    for replica in replicas:
        record = json.loads((replica / "metrics.json").read_text())
        assert record["status"] == "pruned" and record["pruned_epoch"] == 1 and not record.get("test")
    per_replica = [logged_val_norm_loss(r) for r in replicas]
    means = {epoch: sum(p[epoch] for p in per_replica) / len(per_replica) for epoch in per_replica[0]}
    assert sorted(means) == [0, 1]
    assert reported(storage, number) == pytest.approx(means)


def test_a_missing_trial_or_storage_is_one_line_naming_the_key(tmp_path):
    storage, number = study_with_baseline(tmp_path, 0.05)
    result = cli_in_fork(arguments(tmp_path, storage, number + 5), tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == \
        f"mtlexp: error: trial.number: study '{STUDY}' has no trial {number + 5}"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"

    missing = tmp_path / "nowhere" / "optuna.db"
    result = cli_in_fork(arguments(tmp_path, f"sqlite:///{missing}", number, "overwrite=true"), tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"mtlexp: error: trial.storage: no SQLite database at {missing}"
    assert not missing.parent.exists()


def test_a_run_outside_a_study_does_not_import_optuna():
    code = ("import sys; from omegaconf import OmegaConf; from mtlexp.pruning import trial_pruning; "
            "assert trial_pruning(OmegaConf.create({'trial': {'number': None}}), None) is None; "
            "print('optuna' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
