"""Stacked runs (``stack=K``): every replica is the single run with its seed, folder and all (each architecture's
replicas on both routes: ``test_routes.py``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from mtlexp.errors import MtlexpError
from mtlexp.evaluate import evaluate
from mtlexp.report.sweep import find_runs, run_overrides
from mtlexp.train import train

# Early stopping with patience 1 at a high learning rate, so that replicas stop at different epochs.
STOPPING = ["trainer.max_epochs=6", "callbacks.early_stopping.patience=1", "optimizer.lr=0.03"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def epoch_values(path: Path, column: str) -> list[float]:
    return [float(row[column]) for row in read_csv(path) if row.get(column)]


@pytest.mark.newest
def test_every_replica_is_the_single_run_with_its_seed(make_cfg, caplog):
    singles = {}
    for seed in (4, 5, 6):
        single_cfg = make_cfg(f"seed={seed}", *STOPPING)
        singles[seed] = (train(single_cfg), Path(single_cfg.paths.output_dir) / "csv" / "metrics.csv")
    for route in ("native", "vmap"):  # mmoe runs on both; auto picks native
        stacked_cfg = make_cfg("stack=3", "seed=4", f"stack_route={route}", *STOPPING)
        with caplog.at_level("INFO", logger="mtlexp.stacking.module"):
            record = train(stacked_cfg)
        assert f"stack: 3 replicas of model mmoe on the {route} route" in caplog.text
        caplog.clear()
        root = Path(stacked_cfg.paths.output_dir)
        assert record["status"] == "ok" and record["replicas"] == [f"replicas/seed_{s}" for s in (4, 5, 6)]
        trained = set()
        for seed, (single, single_csv) in singles.items():
            replica_dir = root / "replicas" / f"seed_{seed}"
            replica = json.loads((replica_dir / "metrics.json").read_text())
            assert replica["status"] == "ok" and replica["seed"] == seed
            assert (replica["best_epoch"], replica["epochs_trained"]) == (single["best_epoch"],
                                                                          single["epochs_trained"])
            trained.add(replica["epochs_trained"])
            for split in ("val", "test"):
                for task, values in single[split].items():
                    for name, value in values.items():
                        assert replica[split][task][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (
                            route, seed, split, task, name)
            assert replica["gates"].keys() == single["gates"].keys()
            # The logs hold the same epochs, at the same steps, with the same values.
            replica_csv = replica_dir / "csv" / "metrics.csv"
            for column in ("train/loss_epoch", "val/norm_loss", "val/task1/mse", "train/task2/mse"):
                expected = epoch_values(single_csv, column)
                assert epoch_values(replica_csv, column) == pytest.approx(expected, rel=1e-4), (route, column)
            assert epoch_values(replica_csv, "step") [:2] == epoch_values(single_csv, "step")[:2]
            assert any((replica_dir / "tensorboard").glob("events.out.tfevents.*"))
            # The replica's best checkpoint is an ordinary one: mtlexp eval reads it and finds the same test metrics.
            eval_cfg = make_cfg(f"ckpt_path={replica_dir / 'checkpoints' / 'best.ckpt'}",
                                config_name="eval")
            evaluated = evaluate(eval_cfg)
            assert evaluated["seed"] == seed
            for task, values in replica["test"].items():
                assert evaluated["test"][task]["mse"] == pytest.approx(values["mse"], rel=1e-5)
        assert min(trained) < 6, "no replica stopped early: the test does not exercise per-replica early stopping"


def test_replica_folders_read_like_sequential_runs(make_cfg):
    cfg = make_cfg("stack=2", "seed=1")
    record = train(cfg)
    root = Path(cfg.paths.output_dir)
    replicas = [json.loads((root / "replicas" / f"seed_{s}" / "metrics.json").read_text()) for s in (1, 2)]
    # The stacked run's own record: the means over its replicas, which a sweeper optimises (hparams_search).
    assert record["val_norm_loss"] == pytest.approx(sum(r["val_norm_loss"] for r in replicas) / 2)
    assert record["val"]["task1"]["mse"] == pytest.approx(sum(r["val"]["task1"]["mse"] for r in replicas) / 2)
    assert record["directions"] == replicas[0]["directions"] == replicas[1]["directions"]
    assert replicas[0]["directions"]["task1"] == {"mse": "min", "mae": "min", "r2": "max", "norm_loss": "min"}
    runs = find_runs([root])
    assert runs == [root / "replicas" / "seed_1", root / "replicas" / "seed_2"]  # the stacked run itself is not one
    for seed, run in zip((1, 2), runs):
        assert f"seed={seed}" in run_overrides(run) and not any(o.startswith("stack=") for o in run_overrides(run))
        config = (run / ".hydra" / "config.yaml").read_text()
        assert f"seed: {seed}\n" in config and "stack: 1\n" in config
        assert (run / "provenance.json").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert (root / "checkpoints" / "last.ckpt").is_file()
    # One gate figure for the run, of the replicas' mean gates; the replicas' gates are in their records.
    assert (root / "figures" / "gates.png").read_bytes()[:4] == b"\x89PNG"
    assert not any(root.glob("replicas/*/figures")) and all(r["gates"] for r in replicas)


def test_a_stacked_run_resumes_where_it_stopped(make_cfg):
    straight = make_cfg("stack=2", "trainer.max_epochs=3", "callbacks=no_early_stopping")
    expected = train(straight)
    first = make_cfg("stack=2", "trainer.max_epochs=2", "callbacks=no_early_stopping")
    train(first)
    resumed = make_cfg("stack=2", "trainer.max_epochs=3", "callbacks=no_early_stopping",
                       f"ckpt_path={Path(first.paths.output_dir) / 'checkpoints' / 'last.ckpt'}")
    train(resumed)
    for seed in (0, 1):
        a, b = (json.loads((Path(c.paths.output_dir) / "replicas" / f"seed_{seed}" / "metrics.json").read_text())
                for c in (straight, resumed))
        assert b["epochs_trained"] == 3 and b["best_epoch"] == a["best_epoch"]
        assert b["test"]["task1"]["mse"] == pytest.approx(a["test"]["task1"]["mse"], rel=1e-5)
    assert expected["status"] == "ok"


def test_a_weighting_that_reads_task_gradients_cannot_be_stacked(make_cfg):
    with pytest.raises(MtlexpError, match="stack: weighting GradNorm cannot be stacked: its update needs each task's"):
        train(make_cfg("stack=2", "weighting=gradnorm"))


def test_every_replica_diverging_fails_the_run_and_says_why(make_cfg):
    cfg = make_cfg("stack=2", "optimizer.lr=1e12", "trainer.max_epochs=3")
    with pytest.raises(MtlexpError, match="every replica failed: training diverged"):
        train(cfg)
    replica = json.loads((Path(cfg.paths.output_dir) / "replicas" / "seed_0" / "metrics.json").read_text())
    assert replica["status"] == "running"  # the runner marks the run folder; the replica records how far it got


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_a_model_that_draws_random_numbers_is_named_in_a_warning(make_cfg, caplog, dropout):
    record = train(make_cfg("stack=2", f"model.dropout={dropout}", "trainer.max_epochs=1"))
    assert record["status"] == "ok"
    warned = "draws random numbers in training" in caplog.text
    assert warned == (dropout > 0), caplog.text[-2000:]


def test_replicas_stop_by_the_early_stopping_callback_whatever_its_config_name(make_cfg):
    # The callback under another key, with its own patience: each replica stops where its single run stops.
    renamed = ["~callbacks.early_stopping", "+callbacks.stop_early._target_=pytorch_lightning.callbacks.EarlyStopping",
               "+callbacks.stop_early.monitor=val/norm_loss", "+callbacks.stop_early.patience=1",
               "trainer.max_epochs=6", "optimizer.lr=0.03"]
    stacked = make_cfg("stack=2", "seed=4", *renamed)
    train(stacked)
    for seed in (4, 5):
        single = train(make_cfg(f"seed={seed}", *renamed))
        replica = json.loads((Path(stacked.paths.output_dir) / "replicas" / f"seed_{seed}" / "metrics.json").read_text())
        assert (replica["epochs_trained"], replica["best_epoch"]) == (single["epochs_trained"], single["best_epoch"])
        assert single["epochs_trained"] < 6, "the single run did not stop early: the test exercises nothing"


def test_a_weighting_stacks_when_it_declares_fixed_weights(make_cfg):
    from mtlexp.stacking.module import StackedModule
    from mtlexp.components import build_components
    from mtlexp.weighting.base import LossWeighting

    class Halves(LossWeighting):  # written tomorrow: stacks without a line in mtlexp.stacking
        def weights(self, inputs):
            return torch.full((self.num_tasks,), 0.5)

        def fixed_weights(self):
            return torch.full((self.num_tasks,), 0.5)

    class Drawn(Halves):
        def fixed_weights(self):
            return None

    modules = [build_components(make_cfg(f"seed={seed}"))[1] for seed in (0, 1)]
    data = build_components(make_cfg("seed=0"))[0]
    for module in modules:
        module.weighting = Halves(module.tasks)
    stacked = StackedModule(modules, data.features, monitor="val/norm_loss", mode="min")
    assert stacked.task_weights.tolist() == [[0.5, 0.5], [0.5, 0.5]]
    modules[1].weighting = Drawn(modules[1].tasks)
    with pytest.raises(MtlexpError, match="cannot be stacked"):
        StackedModule(modules, data.features, monitor="val/norm_loss", mode="min")
