"""Stacked runs (``stack=K``): every replica is the single run with its seed, folder and all."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch

from mtlexp.errors import MtlexpError
from mtlexp.evaluate import evaluate
from mtlexp.report.sweep import find_runs, run_overrides
from mtlexp.stacking.model import StackedModel
from mtlexp.train import train
from tests.models.test_contract import CASES, IDS, batch, make_model

# Every architecture with its default gate, and MMoE with every gate (the contract tests cover the rest).
STACK_CASES = [(case, case_id) for case, case_id in zip(CASES, IDS) if case[1] in (None, "softmax") or case[0] == "mmoe"]

# Early stopping with patience 1 at a high learning rate, so that replicas stop at different epochs.
STOPPING = ["trainer.max_epochs=6", "callbacks.early_stopping.patience=1", "optimizer.lr=0.03"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def epoch_values(path: Path, column: str) -> list[float]:
    return [float(row[column]) for row in read_csv(path) if row.get(column)]


@pytest.mark.newest
def test_every_replica_is_the_single_run_with_its_seed(make_cfg):
    stacked_cfg = make_cfg("stack=3", "seed=4", *STOPPING)
    record = train(stacked_cfg)
    root = Path(stacked_cfg.paths.output_dir)
    assert record["status"] == "ok" and record["replicas"] == [f"replicas/seed_{s}" for s in (4, 5, 6)]
    trained = set()
    for seed in (4, 5, 6):
        single_cfg = make_cfg(f"seed={seed}", *STOPPING)
        single = train(single_cfg)
        replica_dir = root / "replicas" / f"seed_{seed}"
        replica = json.loads((replica_dir / "metrics.json").read_text())
        assert replica["status"] == "ok" and replica["seed"] == seed
        assert (replica["best_epoch"], replica["epochs_trained"]) == (single["best_epoch"], single["epochs_trained"])
        trained.add(replica["epochs_trained"])
        for split in ("val", "test"):
            for task, values in single[split].items():
                for name, value in values.items():
                    assert replica[split][task][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (seed, split, task, name)
        assert replica["gates"].keys() == single["gates"].keys()
        # The logs hold the same epochs, at the same steps, with the same values.
        single_csv, replica_csv = Path(single_cfg.paths.output_dir) / "csv" / "metrics.csv", replica_dir / "csv" / "metrics.csv"
        for column in ("train/loss_epoch", "val/norm_loss", "val/task1/mse", "train/task2/mse"):
            assert epoch_values(replica_csv, column) == pytest.approx(epoch_values(single_csv, column), rel=1e-4), column
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


def test_a_weighting_with_state_cannot_be_stacked(make_cfg):
    with pytest.raises(MtlexpError, match="stack: weighting UncertaintyWeighting cannot be stacked"):
        train(make_cfg("stack=2", "weighting=uncertainty"))


def test_every_replica_diverging_fails_the_run_and_says_why(make_cfg):
    cfg = make_cfg("stack=2", "optimizer.lr=1e12", "trainer.max_epochs=3")
    with pytest.raises(MtlexpError, match="every replica failed: training diverged"):
        train(cfg)
    replica = json.loads((Path(cfg.paths.output_dir) / "replicas" / "seed_0" / "metrics.json").read_text())
    assert replica["status"] == "running"  # the runner marks the run folder; the replica records how far it got


@pytest.mark.parametrize(("name", "gate", "sizes"), [c for c, _ in STACK_CASES], ids=[i for _, i in STACK_CASES])
def test_every_architecture_stacks_to_its_replicas_outputs(name, gate, sizes):
    first = make_model(name, gate, **sizes).eval()
    second = copy.deepcopy(first)
    with torch.no_grad():  # another replica: other values in every parameter
        for param in second.parameters():
            param.add_(0.1 * torch.randn_like(param))
    models = [first, second]
    stacked = StackedModel(models).eval()
    numeric, categorical, _ = batch(4)
    pair = (torch.stack([numeric, numeric + 1]), torch.stack([categorical, categorical]))
    logits = stacked.vectorised(lambda call, n, c: call(n, c).logits)(*pair)
    for k, model in enumerate(models):
        expected = model(pair[0][k], pair[1][k]).logits
        for task, value in expected.items():
            torch.testing.assert_close(logits[task][k], value, rtol=1e-5, atol=1e-6)
        assert stacked.replica_state_dict(k).keys() == model.state_dict().keys()


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
