"""The census and generic tabular paths end to end through the ``mtlexp`` command."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mtlexp.data.tabular import TabularDataModule
from mtlexp.errors import MtlexpError
from mtlexp.models.names import model_configs
from tests.conftest import cli_in_fork

pytestmark = pytest.mark.slow

FAST = ["trainer.max_epochs=2", "data.batch_size=64", "data.chunk_steps=2"]


def mtlexp(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return cli_in_fork(args, cwd, env={**os.environ, "MTLEXP_CACHE_DIR": str(cwd / "cache")})


def test_train_census_group1_on_a_uci_format_file(census_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = mtlexp("train", "data=census_income", "tasks=census_group1", "model=mmoe", f"data.path={census_dir}",
                    *FAST, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert set(metrics["test"]) == {"income", "never_married"}
    for values in metrics["test"].values():
        assert 0.0 <= values["auroc"] <= 1.0 and values["logloss"] > 0
    # The 200-row test file is split 1:1 into validation and test.
    assert metrics["data"]["rows"] == {"train": 300, "val": 100, "test": 100}
    assert "auroc" in result.stdout


def test_paper_experiment_and_group2_through_the_cli(census_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = mtlexp("train", "experiment=paper_census_group2", "model=shared_bottom", f"data.path={census_dir}",
                    *FAST, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) == {"college", "never_married"} and metrics["model"] == "shared_bottom"


def test_data_inspect_prints_rows_rates_and_label_correlation(census_dir: Path, tmp_path: Path) -> None:
    result = mtlexp("data", "inspect", "data=census_income", "tasks=census_group1", f"data.path={census_dir}",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for text in ("train 300", "val 100", "test 100", "income", "never_married", "% positive", "income ~ never_married"):
        assert text in result.stdout, text


def test_missing_census_files_are_one_line(tmp_path: Path) -> None:
    result = cli_in_fork(["train", "data=census_income", f"data.path={tmp_path / 'nowhere'}",
                          f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("mtlexp: error:") and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["status"] == "failed"


SHOP_SCHEMA = {
    "numeric": ["x"],
    "categorical": {"colour": None},
    "tasks": {"bought": {"kind": "binary", "positive": "yes"}, "spend": {"kind": "regression"}},
}


def shop_frame(rows: int = 600) -> pd.DataFrame:
    """A table for SHOP_SCHEMA in which x decides both labels."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=rows)
    return pd.DataFrame({
        "x": x,
        "colour": rng.choice(["red", "green", "blue"], rows),
        "bought": np.where(x + rng.normal(0, 0.5, rows) > 0, "yes", "no"),
        "spend": 3 * x + rng.normal(0, 0.1, rows),
    })


def load_errors(path: Path, cwd: Path) -> list[str]:
    """The error line of each job of ``mtlexp train`` on a SHOP_SCHEMA file loaded in memory (what ``auto`` does
    with a small file) and streamed; both jobs must fail without a traceback."""
    (cwd / "shop.yaml").write_text(yaml.safe_dump(SHOP_SCHEMA))
    sweep = cwd / "sweep"
    result = mtlexp("train", "-m", "data=tabular", f"data.path={path}", f"data.schema={cwd / 'shop.yaml'}",
                    "data.streaming=auto,true", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}", cwd=cwd)
    errors = [line for line in result.stderr.splitlines() if line.startswith("mtlexp: error:")]
    assert result.returncode == 1 and errors[-1] == "mtlexp: error: 2 of 2 jobs failed", result.stderr[-3000:]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "failed"
    return errors[:-1]


def test_generic_tabular_parquet_with_a_schema_in_memory_and_streamed(tmp_path: Path) -> None:
    rows = 600
    shop_frame(rows).to_parquet(tmp_path / "shop.parquet", row_group_size=100)  # several row groups to stream
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump(SHOP_SCHEMA))
    sweep = tmp_path / "sweep"
    result = mtlexp("train", "-m", "data=tabular", f"data.path={tmp_path / 'shop.parquet'}",
                    f"data.schema={tmp_path / 'shop.yaml'}", "model=shared_bottom", *FAST, "trainer.max_epochs=10",
                    "optimizer.lr=0.01", "data.streaming=false,true", "data.stream_window=2",
                    f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job, streamed in (("0", False), ("1", True)):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["data"].get("streaming", False) is streamed
        assert metrics["test"]["bought"]["auroc"] > 0.75  # x separates the classes well: the model must find it
        assert metrics["test"]["spend"]["r2"] > 0.5
        assert sum(metrics["data"]["rows"].values()) == rows


def test_an_infinite_feature_fails_at_load_naming_the_column_and_first_row(tmp_path: Path) -> None:
    frame = shop_frame()
    frame.loc[10, "x"] = np.nan  # missing: becomes the training mean, as before
    frame.loc[[250, 400], "x"] = [-np.inf, np.inf]
    path = tmp_path / "shop.parquet"
    frame.to_parquet(path, row_group_size=100)
    expected = f"mtlexp: error: {path}: row 251: column 'x': expected a finite number, got -inf"
    assert load_errors(path, tmp_path) == [expected, expected]


def test_an_infinite_label_fails_at_load_in_memory_and_streamed_alike(tmp_path: Path) -> None:
    frame = shop_frame()
    frame.loc[[250, 299], "spend"] = [np.inf, -np.inf]  # both rows fall in the train split either way
    path = tmp_path / "shop.parquet"
    frame.to_parquet(path, row_group_size=100)
    expected = "mtlexp: error: tasks.spend: 2 NaN/inf label(s) in the train split"
    assert load_errors(path, tmp_path) == [expected, expected]


@pytest.mark.parametrize("damage", ["footer", "pages"])
def test_a_damaged_parquet_file_is_one_line_in_memory_and_streamed(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "shop.parquet"
    shop_frame().to_parquet(path, row_group_size=100)
    data = bytearray(path.read_bytes())
    if damage == "footer":  # the length of the file's metadata: every reader fails on opening it
        data[-8:-4] = b"\xff\xff\xff\x7f"
    else:  # column chunks: the file opens, its rows do not read
        data[100:2000:7] = bytes(len(data[100:2000:7]))
    path.write_bytes(bytes(data))
    memory, streamed = load_errors(path, tmp_path)
    assert memory == streamed and memory.startswith(f"mtlexp: error: {path}: not a readable Parquet file (")


ZOO = model_configs()  # the architectures: the click -> conversion objectives need click tasks


def sweep_metrics(sweep: Path) -> dict[str, dict]:
    """metrics.json of every job of a sweep, by model name."""
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    return {m["model"]: m for m in jobs}


def test_every_model_trains_on_a_table_with_every_task_kind(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = 400
    x = rng.normal(size=rows)
    frame = pd.DataFrame({
        "x": x,
        "z": rng.normal(size=rows),
        "colour": rng.choice(["red", "green", "blue"], rows),
        "bought": np.where(x + rng.normal(0, 0.5, rows) > 0, "yes", "no"),
        "spend": 3 * x + rng.normal(0, 0.1, rows),
        "tier": np.digitize(x, [-0.5, 0.5]),
        "visits": rng.poisson(np.exp(0.5 * x)),
    })
    frame.to_csv(tmp_path / "shop.csv", index=False)
    schema = {
        "numeric": ["x", "z"],
        "categorical": {"colour": None},
        "tasks": {"bought": {"kind": "binary", "positive": "yes"}, "spend": {"kind": "regression"},
                  "tier": {"kind": "multiclass", "num_classes": 3}, "visits": {"kind": "count"}},
    }
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump(schema))
    sweep = tmp_path / "sweep"
    result = mtlexp("train", "-m", "data=tabular", f"data.path={tmp_path / 'shop.csv'}",
                    f"data.schema={tmp_path / 'shop.yaml'}", f"model={','.join(ZOO)}", *FAST,
                    "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # wiring: one epoch
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sweep_metrics(sweep)
    assert set(runs) == set(ZOO)
    for name, metrics in runs.items():
        assert metrics["status"] == "ok", name
        assert set(metrics["test"]) == {"bought", "spend", "tier", "visits"}
        assert "auroc" in metrics["test"]["bought"] and "r2" in metrics["test"]["spend"]
        assert "accuracy" in metrics["test"]["tier"] and "deviance" in metrics["test"]["visits"]


def count_table(folder: Path, rows: int = 600) -> list[str]:
    """A Parquet table of clicks, purchases after a click (a count observed where clicked) and visits (a
    count on every row), all driven by x; the ``mtlexp train`` arguments that read it."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=rows)
    click = rng.random(rows) < 1 / (1 + np.exp(-2 * x))
    pd.DataFrame({
        "x": x,
        "click": click.astype(int),
        "purchases": np.where(click, rng.poisson(np.exp(0.8 * x)), 0),
        "visits": rng.poisson(np.exp(0.8 * x + 0.5)),
    }).to_parquet(folder / "visits.parquet", row_group_size=100)  # several row groups to stream
    schema = {"numeric": ["x"], "tasks": {"click": {"kind": "binary"},
                                          "purchases": {"kind": "count", "observed_if": "click"},
                                          "visits": {"kind": "count"}}}
    (folder / "visits.yaml").write_text(yaml.safe_dump(schema))
    return ["data=tabular", f"data.path={folder / 'visits.parquet'}", f"data.schema={folder / 'visits.yaml'}"]


def test_a_count_task_trains_in_memory_streamed_and_stacked_observed_if_a_click(tmp_path: Path) -> None:
    table = [*count_table(tmp_path), "model=mmoe", *FAST, "trainer.max_epochs=10", "optimizer.lr=0.01"]
    sweep, stacked = tmp_path / "sweep", tmp_path / "stacked"
    result = mtlexp("train", "-m", *table, "data.streaming=false,true", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # Stacked and streamed: every replica streams its own pass (its seed orders the row groups).
    result = mtlexp("train", *table, "data.streaming=true", "stack=2", f"hydra.run.dir={stacked}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    replicas = [json.loads(p.read_text()) for p in sorted(stacked.glob("replicas/*/metrics.json"))]
    assert [run["data"].get("streaming", False) for run in runs] == [False, True] and len(replicas) == 2
    streamed, first = runs[1], replicas[0]  # seed 0 both: the replica is the single streamed run
    for task, values in streamed["test"].items():
        assert first["test"][task] == pytest.approx(values, rel=1e-5, abs=1e-6), task
    for metrics in runs + replicas:
        assert metrics["status"] == "ok"
        assert metrics["directions"]["visits"] == {"deviance": "min", "mae": "min", "norm_loss": "min"}
        for task in ("purchases", "visits"):
            # x drives the rate: each must beat predicting the mean count
            assert metrics["test"][task]["norm_loss"] < 0.9, (task, metrics["test"][task])


def test_a_count_task_trains_with_every_weighting(tmp_path: Path) -> None:
    methods = sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "weighting").glob("*.yaml"))
    sweep = tmp_path / "sweep"
    result = mtlexp("train", "-m", *count_table(tmp_path, rows=300), "model=mmoe", f"weighting={','.join(methods)}",
                    *FAST, "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert sorted(run["weighting"]["method"] for run in runs) == methods
    for run in runs:
        assert run["status"] == "ok" and math.isfinite(run["test"]["visits"]["deviance"]), run["weighting"]["method"]


def test_click_and_conversion_train_with_a_derived_ctcvr_and_bad_conversions_fail_clearly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = 3000
    x = rng.normal(size=rows)
    click = rng.random(rows) < 1 / (1 + np.exp(-2 * x))
    conversion = click & (rng.random(rows) < 1 / (1 + np.exp(-(2 * x - 1))))
    frame = pd.DataFrame({"x": x, "colour": rng.choice(["red", "blue"], rows), "is_click": click.astype(int),
                          "is_buy": conversion.astype(int)})
    frame.to_csv(tmp_path / "cc.csv", index=False)
    schema = {
        "numeric": ["x"],
        "categorical": ["colour"],
        "tasks": {"ctr": {"kind": "binary", "column": "is_click"},
                  "cvr": {"kind": "binary", "column": "is_buy", "observed_if": "ctr"},
                  "ctcvr": {"kind": "binary", "product": ["ctr", "cvr"]}},
    }
    (tmp_path / "cc.yaml").write_text(yaml.safe_dump(schema))
    run_dir = tmp_path / "run"
    common = ["data=tabular", f"data.schema={tmp_path / 'cc.yaml'}", "model=mmoe", *FAST, "optimizer.lr=0.01"]
    result = mtlexp("train", *common, f"data.path={tmp_path / 'cc.csv'}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) == {"ctr", "cvr", "ctcvr"}
    for task in ("ctr", "cvr", "ctcvr"):
        assert metrics["test"][task]["auroc"] > 0.65, task  # x drives both: each must be learned
    frame.loc[np.flatnonzero(~click)[:3], "is_buy"] = 1  # three conversions without a click
    frame.to_csv(tmp_path / "bad.csv", index=False)
    bad = TabularDataModule({}, path=tmp_path / "bad.csv", schema=schema)  # the CLI prints this as one line
    with pytest.raises(MtlexpError, match=r"tasks.cvr \(column 'is_buy'\): \d row\(s\) of the \w+ split have a label where ctr = 0"):
        bad.setup()


def test_esmm_trains_on_the_ali_ccp_and_aliexpress_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(os.environ.get("MTLEXP_SHARED_DIR", Path(__file__).parents[2] / ".." / "shared")) / "data"
    folders = {"ali_ccp": root / "ali-ccp-sample", "aliexpress": root / "aliexpress-sample"}
    if not all(folder.is_dir() for folder in folders.values()):
        pytest.skip(f"the Ali-CCP and AliExpress samples are not in {root}")
    sweep = tmp_path / "sweep"
    monkeypatch.setenv("MTLEXP_ALI_CCP_DIR", str(folders["ali_ccp"]))
    monkeypatch.setenv("MTLEXP_ALIEXPRESS_DIR", str(folders["aliexpress"]))
    result = mtlexp("train", "-m", "data=ali_ccp,aliexpress", "model=esmm", "trainer.max_epochs=2",
                    f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "ok" and set(metrics["test"]) == {"click", "conversion", "ctcvr"}
        assert all(0 <= metrics["test"][t]["auroc"] <= 1 for t in metrics["test"])
