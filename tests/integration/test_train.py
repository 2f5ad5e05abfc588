"""``train(cfg)`` in-process: every model, the run folder, reproducibility, eval, resume, bad input."""

import json
import math
from pathlib import Path

import pytest
import torch

from mtlexp.errors import MtlexpError
from mtlexp.evaluate import evaluate
from mtlexp.models.names import model_configs
from mtlexp.train import train

CONF = Path(__file__).resolve().parents[2] / "conf"
MODELS = model_configs()
GATED = {p.stem for p in (CONF / "model").glob("*.yaml") if "gate:" in p.read_text()}


@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_and_writes_the_run_folder(make_cfg, model):
    cfg = make_cfg(f"model={model}")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["status"] == "ok" and saved["seed"] == 0 and saved["num_params"] > 0
    for split in ("val", "test"):
        assert set(saved[split]) == {"task1", "task2"}
        assert set(saved[split]["task1"]) >= {"mse", "mae", "r2", "norm_loss"}
    assert saved["best_epoch"] in (0, 1)
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "csv" / "metrics.csv").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    provenance = json.loads((run / "provenance.json").read_text())
    assert len(provenance["data"]["sha256"]) == 64 and provenance["versions"]["torch"]
    assert saved["model"] == model  # the config's stable name
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    if model in GATED:
        gates = metrics["gates"]["task1"]
        assert len(gates) == len(saved["gate_experts"]["task1"]) and abs(sum(gates) - 1) < 1e-4
        assert 1 <= saved["gate_active"]["task1"]["per_row_mean"] <= len(gates)
        assert (run / "figures" / "gates.png").stat().st_size > 1000
    if model in ("l2_constrained", "trace_norm"):  # the penalty is the aux loss, logged and recorded
        assert "train/aux_loss" in header and saved["diagnostics"]["penalty"] > 0
    if model == "cross_stitch":  # the learned units are recorded and logged
        unit = saved["diagnostics"]["stitch_0"]
        assert len(unit) == 2 and unit != [[0.9, 0.1], [0.1, 0.9]]
        assert "val/model/stitch_0/1" in header


def test_metrics_json_records_which_way_every_metric_improves(make_cfg):
    cfg = make_cfg("data=selection_bias_sim", "model=esmm")
    train(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert {task: set(d) for task, d in saved["directions"].items()} == {t: set(v) for t, v in saved["test"].items()}
    assert saved["directions"]["conversion"] == {"auroc": "max", "logloss": "min", "norm_loss": "min",
                                                 "accuracy": "max", "auroc_entire": "max", "pcvr_bias": "zero"}


def test_metric_names_in_the_csv_log(make_cfg):
    cfg = make_cfg()
    train(cfg)
    header = (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("train/loss_step", "val/task1/mse", "val/task2/r2", "val/norm_loss", "train/task1/mse",
                 "test/task1/mse", "val/gate/task1/expert_0"):
        assert name in header, name


def test_same_config_and_seed_give_identical_metrics(make_cfg):
    first = train(make_cfg("seed=7"))
    second = train(make_cfg("seed=7"))
    assert first["test"] == second["test"] and first["val"] == second["val"]
    assert train(make_cfg("seed=8"))["test"] != first["test"]


def test_val_metrics_are_the_best_checkpoints(make_cfg):
    cfg = make_cfg("trainer.max_epochs=3")
    metrics = train(cfg)
    rows = [line.split(",") for line in (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").read_text().splitlines()]
    header, body = rows[0], rows[1:]
    col = header.index("val/norm_loss")
    logged = [float(r[col]) for r in body if r[col]]
    # The fit's per-epoch values plus the final re-validation of the best checkpoint.
    assert metrics["val_norm_loss"] == pytest.approx(min(logged[:-1]), rel=1e-5)


def test_mmoe_learns_well_below_predicting_the_mean(make_cfg):
    cfg = make_cfg(
        "model=mmoe", "data.num_train=8000", "data.num_val=1000", "data.num_test=1000",
        "data.batch_size=128", "trainer.max_epochs=6", fast=False,
    )
    cfg.trainer.enable_progress_bar = False
    metrics = train(cfg)
    # norm_loss = MSE / Var(y): 1.0 is exactly the predict-the-mean baseline.
    for task in ("task1", "task2"):
        assert metrics["test"][task]["norm_loss"] < 0.5, metrics["test"]


def test_eval_reproduces_the_test_metrics_in_its_own_folder(make_cfg):
    cfg = make_cfg()
    metrics = train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    eval_cfg = make_cfg(f"ckpt_path={ckpt}", config_name="eval")
    result = evaluate(eval_cfg)
    for task, values in metrics["test"].items():
        for name, value in values.items():
            assert result["test"][task][name] == pytest.approx(value, rel=1e-5, abs=1e-6)
    assert Path(eval_cfg.paths.output_dir, "metrics.json").is_file()
    assert json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["test"] == metrics["test"]


def test_resume_from_last_checkpoint_continues_training(make_cfg):
    cfg = make_cfg("trainer.max_epochs=2")
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = make_cfg("trainer.max_epochs=3", f"ckpt_path={last}")
    metrics = train(resumed)
    assert metrics["epochs_trained"] == 3
    # The best checkpoint is the best over both runs, not only over the epochs after the resume.
    logged = []
    for run in (cfg, resumed):
        rows = (Path(run.paths.output_dir) / "csv" / "metrics.csv").read_text().splitlines()
        col = rows[0].split(",").index("val/norm_loss")
        logged += [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert metrics["val_norm_loss"] == pytest.approx(min(logged), rel=1e-5)
    state = torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["epoch"] == 2


@pytest.mark.parametrize(
    "override,expected",
    [
        ("data.correlation=1.5", "data.correlation: expected a cosine in [-1, 1], got 1.5"),
        ("model.num_experts=0", "model.num_experts: expected an integer >= 1, got 0"),
        ("model.num_experts=abc", "model.num_experts: expected int, got 'abc'"),
        ("+model.num_expert=3", "model.num_expert: unknown key"),
        ("seed=-1", "seed: expected an integer >= 0"),
        ("tasks.task1.kind=ranking", "tasks.task1.kind: expected one of"),
        ("optimizer.lr=-1", "optimizer: "),
        ("optimizer.lr=abc", "optimizer.lr: expected float or Tensor, got 'abc'"),
        ("trainer.max_epochs=abc", "trainer.max_epochs: expected int, got 'abc'"),
        ("trainer.max_epochs=0", "trainer.max_epochs: expected an integer >= 1 (or -1 for no limit), got 0"),
        ("model=single_task model.penalty=l2", "model.penalty: expected Penalty, got 'l2'"),
    ],
)
def test_bad_config_values_fail_before_training_naming_the_key(make_cfg, override, expected):
    cfg = make_cfg(*override.split())
    with pytest.raises(MtlexpError) as error:
        train(cfg)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_a_diverging_run_stops_with_a_clear_error(make_cfg):
    cfg = make_cfg("optimizer=sgd", "optimizer.lr=1e6", "optimizer.momentum=0.99")
    with pytest.raises(MtlexpError, match="training diverged"):
        train(cfg)


def test_lightning_optimizer_path_matches_the_plain_step(make_cfg):
    # Clipping takes Lightning's manual_backward + LightningOptimizer.step path instead of the plain
    # optimizer step; with a bound that never binds, both paths must give the same model.
    plain = train(make_cfg())
    lightning_path = train(make_cfg("module.grad_clip_norm=1e9"))
    for task, values in plain["test"].items():
        for name, value in values.items():
            assert lightning_path["test"][task][name] == pytest.approx(value, rel=1e-4, abs=1e-5)
    assert lightning_path["best_epoch"] == plain["best_epoch"]


@pytest.mark.parametrize("model", [
    ("model=mmoe",), ("model=mmoe", "model/gate=topk", "model.gate.noisy=false"), ("model=ple", "model/gate=dselect_k"),
    ("model=trace_norm",), ("model=tensor_factorization",),
], ids=["mmoe", "mmoe-topk-noiseless", "ple-dselect_k", "trace_norm", "tensor_factorization"])
def test_mixed_precision_on_cpu(make_cfg, model):
    metrics = train(make_cfg("trainer.precision=bf16-mixed", *model))
    assert metrics["status"] == "ok"
    assert all(math.isfinite(v["mse"]) for v in metrics["test"].values())


@pytest.mark.parametrize("mode,new_score,expect_old", [("min", 0.5, True), ("min", 0.05, False), ("max", 0.5, False)])
def test_resumed_run_keeps_the_earlier_best_checkpoint_when_it_is_better(tmp_path, mode, new_score, expect_old):
    from mtlexp.train import best_across_resume

    old_best = tmp_path / "old" / "best.ckpt"
    old_best.parent.mkdir()
    old_best.write_bytes(b"x")
    last = tmp_path / "old" / "last.ckpt"
    state = {"best_model_path": str(old_best), "best_model_score": torch.tensor(0.1)}
    torch.save({"callbacks": {"ModelCheckpoint{'monitor': 'val/norm_loss'}": state}}, last)
    new_best = str(tmp_path / "new" / "best.ckpt")
    chosen = best_across_resume(str(last), new_best, torch.tensor(new_score), mode)
    assert chosen == (str(old_best) if expect_old else new_best)


def test_the_progress_bar_shows_the_train_loss_and_the_monitored_metric(make_cfg):
    from mtlexp.instantiate import build_all
    from mtlexp.components import build_components, build_trainer

    cfg = make_cfg("trainer.max_epochs=1", "monitor=val/task1/mse")
    data, module = build_components(cfg)
    trainer = build_trainer(cfg, build_all(cfg.callbacks, "callbacks"))
    trainer.fit(module, datamodule=data)
    assert set(trainer.progress_bar_metrics) == {"train/loss_step", "val/task1/mse"}
