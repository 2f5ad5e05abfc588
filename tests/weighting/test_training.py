"""Weightings inside a real training run (in process): resume, logging, the cost-free equal path."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from mtlexp.train import train


@pytest.mark.parametrize("method", ["dwa", "gradvac", "uncertainty", "stch weighting.warmup_epochs=1", "famo",
                                    "db_mtl", "moco", "modo", "sdmgrad", "excess_mtl"])
def test_a_resumed_stateful_method_continues_where_it_stopped(make_cfg, method):
    method, *extra = method.split()
    common = [f"weighting={method}", *extra, "model=mmoe", "data.chunk_steps=2"]
    whole = train(make_cfg(*common, "trainer.max_epochs=4"))
    first = make_cfg(*common, "trainer.max_epochs=2")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = train(make_cfg(*common, "trainer.max_epochs=4", f"ckpt_path={last}"))
    assert resumed["weighting"]["weights"] == whole["weighting"]["weights"]
    assert resumed["test"] == whole["test"]
    if method == "dwa":  # by the fourth epoch DWA has a loss history: its weights have left 1
        assert whole["weighting"]["weights"] != {"task1": 1.0, "task2": 1.0}


def test_the_epoch_weights_and_gradient_cosines_reach_the_csv_log_and_metrics_json(make_cfg):
    cfg = make_cfg("weighting=uncertainty", "module.grad_cosine_every_n_steps=3")
    metrics = train(cfg)
    rows = (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for column in ("train/weight/task1", "train/weight/task2", "train/grad_cosine/task1-task2"):
        values = [r.split(",")[header.index(column)] for r in rows[1:] if r.split(",")[header.index(column)]]
        assert len(values) == 2, column  # one per epoch
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved["weighting"] == metrics["weighting"]
    assert saved["weighting"]["method"] == "uncertainty"
    assert 0 < saved["weighting"]["weights"]["task1"] < 0.5  # 1/(2 sigma^2), starting at 0.5 as sigma grows


def test_grad_cosine_every_n_steps_must_be_a_non_negative_integer(make_cfg):
    from mtlexp.errors import MtlexpError

    with pytest.raises(MtlexpError, match="module.grad_cosine_every_n_steps: expected an integer >= 0"):
        train(make_cfg("module.grad_cosine_every_n_steps=-1"))


def test_a_large_loss_scale_gap_between_tasks_warns_at_the_start(make_cfg, tmp_path):
    import numpy as np
    import pandas as pd
    import yaml

    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    pd.DataFrame({"x": x, "clicked": np.where(x + rng.normal(size=400) > 0, "yes", "no"),
                  "score": 10 + 6 * (x + rng.normal(size=400))}).to_csv(tmp_path / "table.csv", index=False)  # MSE ~100 next to BCE ~0.7
    schema = {"numeric": ["x"], "categorical": {},
              "tasks": {"clicked": {"kind": "binary", "positive": "yes"}, "score": {"kind": "regression"}}}
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema))
    cfg = make_cfg("data=tabular", f"data.path={tmp_path / 'table.csv'}", f"data.schema={tmp_path / 'schema.yaml'}",
                   "data.batch_size=64", "trainer.max_epochs=1", fast=False)
    with pytest.warns(UserWarning, match=r"task losses differ in scale by \d+x at the first step \(clicked .*score"):
        train(cfg)


def test_loss_scales_within_a_factor_of_100_do_not_warn():
    import torch

    from mtlexp.weighting.conflict import loss_scale_warning

    assert loss_scale_warning(torch.tensor([0.7, 50.0]), ["a", "b"]) is None
    assert "by 200x" in loss_scale_warning(torch.tensor([0.5, 100.0]), ["a", "b"])


def test_a_standardised_regression_label_trains_in_sd_units_and_reports_in_its_own(make_cfg, tmp_path):
    import numpy as np
    import pandas as pd
    import yaml

    rng = np.random.default_rng(0)
    x = rng.normal(size=600)
    pd.DataFrame({"x": x, "clicked": np.where(x + rng.normal(size=600) > 0, "yes", "no"),
                  "score": 50 + 30 * (x + rng.normal(size=600))}).to_csv(tmp_path / "table.csv", index=False)
    schema = {"numeric": ["x"], "categorical": {},
              "tasks": {"clicked": {"kind": "binary", "positive": "yes"},
                        "score": {"kind": "regression", "standardize": True}}}
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema))
    cfg = make_cfg("data=tabular", f"data.path={tmp_path / 'table.csv'}", f"data.schema={tmp_path / 'schema.yaml'}",
                   "data.batch_size=64", "trainer.max_epochs=3", fast=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # in sd units, the loss scales no longer differ 100x
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        metrics = train(cfg)
    score = metrics["test"]["score"]
    # The label has sd ~42: an MSE in its own units is in the hundreds or thousands, in sd units about 1.
    assert 300 < score["mse"] < 5000
    assert score["norm_loss"] == pytest.approx(1 - score["r2"], abs=1e-5)  # scale-free, unchanged


def test_standardize_is_for_regression_tasks_only():
    from mtlexp.errors import MtlexpError
    from mtlexp.tasks import task_from_config

    with pytest.raises(MtlexpError, match="tasks.c.standardize: expected true or false, and true only for a "
                                          "regression task, got True for a binary task"):
        task_from_config("c", {"kind": "binary", "standardize": True})
