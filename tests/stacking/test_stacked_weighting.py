"""Stacked runs (``stack=K``) with weightings that keep state or draw: each replica's weighting is its own."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml

from mtlexp.train import train
from tests.conftest import cli_in_fork
from tests.stacking.test_stacked import epoch_values
from tests.weighting.test_weighting_cli import TINY, mtlexp

WEIGHTINGS = Path(__file__).resolve().parents[2] / "conf" / "weighting"
STACKED = {"equal", "static", "uncertainty", "dwa", "rlw"}  # docs/weighting.md, "Stacked runs"
# Four epochs without early stopping: DWA's weights leave 1 from the third epoch on.
EPOCHS = ["trainer.max_epochs=4", "callbacks=no_early_stopping"]
SEEDS = (4, 5)


def stacked_and_single_runs(make_cfg, *overrides: str) -> list[tuple[Path, dict, Path, dict]]:
    """(replica folder, its metrics.json, the single run's folder, its record) for each seed of one stacked run
    of ``overrides`` (with 4 epochs, no early stopping) and the single runs of the same seeds."""
    stacked_cfg = make_cfg("stack=2", f"seed={SEEDS[0]}", *overrides, *EPOCHS)
    assert train(stacked_cfg)["status"] == "ok"
    runs = []
    for seed in SEEDS:
        replica_dir = Path(stacked_cfg.paths.output_dir) / "replicas" / f"seed_{seed}"
        single_cfg = make_cfg(f"seed={seed}", *overrides, *EPOCHS)
        single = train(single_cfg)
        runs.append((replica_dir, json.loads((replica_dir / "metrics.json").read_text()),
                     Path(single_cfg.paths.output_dir), single))
    return runs


def assert_replicas_are_their_single_runs(runs: list[tuple[Path, dict, Path, dict]], rel: float = 1e-4) -> None:
    """Each replica's epochs, metrics, recorded weights and logged losses are its single run's, to ``rel``."""
    for replica_dir, replica, single_dir, single in runs:
        assert replica["status"] == "ok" and replica["weighting"]["method"] == single["weighting"]["method"]
        assert (replica["best_epoch"], replica["epochs_trained"]) == (single["best_epoch"], single["epochs_trained"])
        for split in ("val", "test"):
            for task, values in single[split].items():
                for name, value in values.items():
                    assert replica[split][task][name] == pytest.approx(value, rel=rel, abs=1e-6), (split, task, name)
        assert replica["weighting"]["weights"] == pytest.approx(single["weighting"]["weights"], rel=rel)
        # The loss includes what the weighting adds (uncertainty's log-variance term), epoch by epoch.
        for column in ("train/loss_epoch", "train/weight/task1", "train/weight/task2", "val/norm_loss"):
            replica_values = epoch_values(replica_dir / "csv" / "metrics.csv", column)
            assert replica_values == pytest.approx(epoch_values(single_dir / "csv" / "metrics.csv", column), rel=rel)


@pytest.mark.parametrize(("weighting", "clip"), [("uncertainty", None), ("dwa", None), ("rlw", None),
                                             ("uncertainty", 0.05)],
                         ids=["uncertainty", "dwa", "rlw", "uncertainty-clip"])
def test_each_replica_of_a_stateful_weighting_is_the_single_run_with_its_seed(make_cfg, weighting, clip):
    # With a clip norm, the log-variances' gradient counts in each replica's norm, as in its single run.
    clipping = [f"module.grad_clip_norm={clip}"] if clip else []
    runs = stacked_and_single_runs(make_cfg, f"weighting={weighting}", *clipping)
    assert_replicas_are_their_single_runs(runs)
    # What makes each method's state matter was reached, so the equalities above say something.
    last_weights = [epoch_values(replica_dir / "csv" / "metrics.csv", "train/weight/task1")[-1]
                    for replica_dir, *_ in runs]
    start = {"uncertainty": 0.5, "dwa": 1.0, "rlw": None}[weighting]
    if start is not None:
        assert all(abs(w - start) > 1e-4 for w in last_weights), last_weights
    assert last_weights[0] != last_weights[1]


@pytest.mark.slow
def test_random_weights_differ_per_replica_are_positive_and_sum_as_a_single_runs(tmp_path):
    stacked, single = tmp_path / "stacked", tmp_path / "single"
    for args in (["stack=3", f"hydra.run.dir={stacked}"], [f"hydra.run.dir={single}"]):
        result = mtlexp(["train", "weighting=rlw", "trainer.max_epochs=1", *TINY, *args], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    recorded = [json.loads((stacked / "replicas" / f"seed_{s}" / "metrics.json").read_text())["weighting"]["weights"]
                for s in range(3)]
    single_sum = sum(json.loads((single / "metrics.json").read_text())["weighting"]["weights"].values())
    assert len({tuple(weights.values()) for weights in recorded}) == 3
    for weights in recorded:
        assert all(value > 0 for value in weights.values())
        assert sum(weights.values()) == pytest.approx(single_sum, abs=1e-5)


def test_every_weighting_config_stacks_or_says_why_in_one_line():
    for path in sorted(WEIGHTINGS.glob("*.yaml")):
        module, name = yaml.safe_load(path.read_text())["_target_"].rsplit(".", 1)
        refusal = getattr(importlib.import_module(module), name).stack_refusal
        assert (refusal is None) == (path.stem in STACKED), path.stem
        assert refusal is None or (refusal and "\n" not in refusal), path.stem


@pytest.mark.slow
def test_a_weighting_that_needs_task_gradients_is_refused_in_one_line(tmp_path):
    result = cli_in_fork(["train", "stack=2", "weighting=gradnorm", "data.num_train=512", "data.num_val=256",
                          "data.num_test=256", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "mtlexp: error: stack: weighting GradNorm cannot be stacked: its update needs each task's gradient of each "
        "replica, which a stacked step (one backward pass of all replicas' objectives) does not compute; sweep the "
        "seeds instead (seed=0,1,2)")


def test_a_stacked_run_resumes_with_each_replicas_weighting_state(make_cfg):
    # DWA's history after two epochs sets the third epoch's weights: a resume that lost it would restart at 1.
    settings = ["stack=2", "weighting=dwa", "callbacks=no_early_stopping"]
    straight = make_cfg(*settings, "trainer.max_epochs=3")
    train(straight)
    first = make_cfg(*settings, "trainer.max_epochs=2")
    train(first)
    resumed = make_cfg(*settings, "trainer.max_epochs=3",
                       f"ckpt_path={Path(first.paths.output_dir) / 'checkpoints' / 'last.ckpt'}")
    train(resumed)
    for seed in (0, 1):
        a, b = (json.loads((Path(c.paths.output_dir) / "replicas" / f"seed_{seed}" / "metrics.json").read_text())
                for c in (straight, resumed))
        assert b["weighting"]["weights"] == pytest.approx(a["weighting"]["weights"], rel=1e-5)
        assert b["weighting"]["weights"]["task1"] != pytest.approx(1.0, abs=1e-4)
        assert b["test"]["task1"]["mse"] == pytest.approx(a["test"]["task1"]["mse"], rel=1e-5)
