"""The generic schema-driven tabular loader: formats, schema checks, preprocessing, cache, leaks, errors."""

from __future__ import annotations

import gzip
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mtlexp.data.inspect import inspect_report
from mtlexp.data.preprocessing import LeakWarning
from mtlexp.data.schema import auto_embedding_dim, load_schema
from mtlexp.data.tabular import TabularDataModule
from mtlexp.errors import MtlexpError


def make_frame(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(10, 3, rows)
    score = x1 + rng.normal(0, 5, rows)
    x1[[3, rows // 2, rows // 2 + 1]] = np.nan  # missing numbers -> the training mean
    colour = rng.choice(["red", "green", "blue"], rows)
    return pd.DataFrame(
        {
            "id": np.arange(rows),
            "x1": x1,
            "x2": rng.integers(0, 100, rows),
            "colour": colour,
            "size": rng.choice(["S", "M", "L", "XL"], rows),
            "clicked": np.where(rng.random(rows) < 0.3, "yes", "no"),
            "score": score,
            "grade": rng.choice(["a", "b", "c"], rows),
            "w": rng.uniform(0.5, 2.0, rows),
        }
    )


SCHEMA: dict[str, Any] = {
    "numeric": ["x1", "x2"],
    "categorical": {"colour": None, "size": {"embedding_dim": "auto"}},
    "embedding_dim": 3,
    "weight": "w",
    "drop": ["id"],
    "tasks": {
        "clicked": {"kind": "binary", "positive": "yes"},
        "score": {"kind": "regression"},
        "grade": {"kind": "multiclass", "num_classes": 3},
    },
}


@pytest.fixture
def table_csv(tmp_path: Path) -> Path:
    path = tmp_path / "table.csv"
    make_frame().to_csv(path, index=False)
    return path


def write_schema(folder: Path, schema: dict[str, Any], name: str = "schema.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(schema, sort_keys=False))
    return path


def load(tasks: dict[str, Any] | None = None, **kwargs: Any) -> TabularDataModule:
    kwargs.setdefault("schema", SCHEMA)
    dm = TabularDataModule(tasks or {}, **kwargs)
    dm.setup()
    return dm


def test_csv_gzip_and_parquet_give_the_same_tensors(tmp_path: Path) -> None:
    frame = make_frame()
    frame.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress((tmp_path / "t.csv").read_bytes()))
    frame.to_parquet(tmp_path / "t.parquet")
    tables = [load(path=tmp_path / name, use_weight=True) for name in ("t.csv", "t.csv.gz", "t.parquet")]
    fingerprints = {dm.fingerprint() for dm in tables}
    assert len(fingerprints) == 1
    dm = tables[0]
    train = dm.splits["train"]
    assert train.labels["clicked"].dtype == torch.float32
    assert train.labels["score"].dtype == torch.float32
    assert train.labels["grade"].dtype == torch.int64
    assert train.weight is not None and train.weight.dtype == torch.float32
    assert {s: len(t) for s, t in dm.splits.items()} == {"train": 320, "val": 40, "test": 40}


def test_features_and_embedding_sizes_follow_the_schema(table_csv: Path) -> None:
    dm = load(path=table_csv)
    assert dm.features.numeric == ("x1", "x2")
    colour, size = dm.features.categorical
    assert (colour.name, colour.cardinality, colour.embedding_dim) == ("colour", 4, 3)
    assert (size.name, size.cardinality, size.embedding_dim) == ("size", 5, auto_embedding_dim(4))
    assert auto_embedding_dim(4) == 3 and auto_embedding_dim(1000) == 16
    assert dm.features.input_dim == 2 + 3 + auto_embedding_dim(4)
    assert [t.name for t in dm.tasks] == ["clicked", "score", "grade"]


def test_missing_numbers_become_the_training_mean(tmp_path: Path) -> None:
    frame = make_frame()
    frame.iloc[:300].to_csv(tmp_path / "train.csv", index=False)  # holds the three missing x1
    frame.iloc[300:].to_csv(tmp_path / "test.csv", index=False)
    dm = load(path={"train": tmp_path / "train.csv", "test": tmp_path / "test.csv"}, val_from="test", val_fraction=0.5)
    x1 = frame["x1"].iloc[:300]
    assert dm.meta["numeric"]["x1"]["mean"] == pytest.approx(x1.mean())  # pandas skips NaN
    assert dm.meta["numeric"]["x1"]["std"] == pytest.approx(x1.std(ddof=0))
    assert dm.meta["numeric"]["x1"]["missing_in_train"] == 3
    column = dm.splits["train"].numeric[:, 0].numpy()
    assert np.array_equal(column[x1.isna().to_numpy()], np.zeros(3, np.float32))
    expected = ((x1 - x1.mean()) / x1.std(ddof=0)).fillna(0.0).to_numpy(np.float32)
    np.testing.assert_allclose(column, expected, atol=1e-6)


def test_split_files_and_carving(tmp_path: Path) -> None:
    frame = make_frame()
    frame.iloc[:300].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[300:].to_csv(tmp_path / "test.csv", index=False)
    files = {"train": tmp_path / "train.csv", "test": tmp_path / "test.csv"}
    from_train = load(path=files, val_fraction=0.2)
    assert {s: len(t) for s, t in from_train.splits.items()} == {"train": 240, "val": 60, "test": 100}
    from_test = load(path=files, val_from="test", val_fraction=0.5)
    assert {s: len(t) for s, t in from_test.splits.items()} == {"train": 300, "val": 50, "test": 50}
    with pytest.raises(MtlexpError, match="^val_from: expected 'train' unless data.path names a test file"):
        TabularDataModule({}, path=tmp_path / "train.csv", schema=SCHEMA, val_from="test")
    with pytest.raises(MtlexpError, match="^path: expected a file, or a mapping with a 'train' file"):
        TabularDataModule({}, path={"test": tmp_path / "test.csv"}, schema=SCHEMA)


def test_split_seed_fixes_the_split(table_csv: Path) -> None:
    a, b, c = (load(path=table_csv, split_seed=s) for s in (0, 0, 1))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_unseen_category_maps_to_zero(tmp_path: Path) -> None:
    frame = make_frame()
    frame.loc[300:, "colour"] = "purple"  # only in the test file
    frame.iloc[:300].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[300:].to_csv(tmp_path / "test.csv", index=False)
    dm = load(path={"train": tmp_path / "train.csv", "test": tmp_path / "test.csv"})
    assert bool((dm.splits["test"].categorical[:, 0] == 0).all())
    assert bool((dm.splits["train"].categorical[:, 0] > 0).all())


def test_multiclass_labels_are_indices_of_sorted_values(table_csv: Path) -> None:
    dm = load(path=table_csv)
    assert dm.meta["classes"]["grade"] == ["a", "b", "c"]
    frame = make_frame()
    assert set(dm.splits["train"].labels["grade"].tolist()) == {0, 1, 2}
    assert int(torch.cat([dm.splits[s].labels["grade"] for s in ("train", "val", "test")]).eq(0).sum()) == int(
        (frame["grade"] == "a").sum()
    )


def test_config_tasks_take_their_columns_out_of_the_features(table_csv: Path) -> None:
    tasks = {"is_red": {"kind": "binary", "column": "colour", "positive": "red"}, "score": {"kind": "regression"}}
    dm = load(tasks, path=table_csv)
    assert [c.name for c in dm.features.categorical] == ["size"]
    assert dm.describe()["excluded_as_labels"] == ["colour"]
    assert [t.name for t in dm.tasks] == ["is_red", "score"]


# --- schema errors: one line naming the file and the key ---------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"tasks": {"clicked": {"kind": "binar", "positive": "yes"}}},
            r"schema\.yaml: tasks\.clicked\.kind: expected one of \[.*\], got 'binar'",
        ),
        ({"numerics": ["x1"]}, r"schema\.yaml: numerics: unknown key"),
        (
            {"categorical": {"colour": None, "clicked": None}},
            r"schema\.yaml: tasks\.clicked\.column: 'clicked' is also listed under categorical; "
            "a label column is never a feature",
        ),
        ({"numeric": ["x1", "x2", "colour"]}, r"schema\.yaml: categorical: column 'colour' is also listed under"),
        ({"embedding_dim": 0}, r"schema\.yaml: embedding_dim: expected a positive integer or 'auto', got 0"),
        ({"known_leaks": {"id": "x"}}, r"schema\.yaml: known_leaks: 'id' is not listed as a numeric or categorical"),
        ({"format": {"header": False}}, r"schema\.yaml: columns: expected the list of column names"),
    ],
)
def test_schema_errors(tmp_path: Path, table_csv: Path, change: dict[str, Any], message: str) -> None:
    schema = write_schema(tmp_path, {**SCHEMA, **change})
    with pytest.raises(MtlexpError, match=message) as error:
        load(path=table_csv, schema=schema)
    assert "\n" not in str(error.value)


def test_duplicate_task_names_in_a_schema_file_are_an_error_naming_the_key_and_line(tmp_path: Path,
                                                                                    table_csv: Path) -> None:
    text = yaml.safe_dump(SCHEMA, sort_keys=False) + "  clicked:\n    kind: regression\n"  # a second 'clicked'
    assert text.count("  clicked:") == 2
    (tmp_path / "schema.yaml").write_text(text)
    line = text.splitlines().index("  clicked:", text.splitlines().index("  clicked:") + 1) + 1
    with pytest.raises(MtlexpError, match=rf"schema\.yaml: line {line}, column 3: invalid YAML \(duplicate key 'clicked'\)"):
        load(path=table_csv, schema=tmp_path / "schema.yaml")


def test_a_multiclass_task_without_num_classes_counts_the_classes(table_csv: Path) -> None:
    dm = load({"grade": {"kind": "multiclass"}}, path=table_csv)
    assert [t.num_classes for t in dm.tasks if t.name == "grade"] == [3]  # a, b, c
    with pytest.raises(MtlexpError, match=r"tasks\.grade: class indices must lie in \[0, 2\), got \[0, 2\]; set "
                                          r"tasks\.grade\.num_classes to at least 3, or leave it out"):
        load({"grade": {"kind": "multiclass", "num_classes": 2}}, path=table_csv)


def test_a_positive_value_that_matches_no_row_lists_the_column_values(table_csv: Path) -> None:
    tasks = {"clicked": {"kind": "binary", "positive": "Yes"}}
    with pytest.raises(MtlexpError, match=r"tasks\.clicked\.positive: no value of column 'clicked' in .*table\.csv "
                                          r"is one of \['Yes'\]; its most frequent values are 'no' \(\d+\), 'yes'"):
        load(tasks, path=table_csv)


def test_schema_column_missing_from_the_file(tmp_path: Path, table_csv: Path) -> None:
    schema = write_schema(tmp_path, {**SCHEMA, "categorical": {"colr": None, "size": None}})
    message = r"table\.csv: no column 'colr', which .*schema\.yaml names \(did you mean 'colour'\?\)"
    with pytest.raises(MtlexpError, match=message):
        load(path=table_csv, schema=schema)


def test_file_column_missing_from_the_schema(table_csv: Path) -> None:
    message = r"table\.csv: column 'id' is not in schema: list it under numeric, categorical or drop"
    with pytest.raises(MtlexpError, match=message):
        load(path=table_csv, schema={**SCHEMA, "drop": []})


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(MtlexpError, match=r"nothing\.csv: file not found"):
        load(path=tmp_path / "nothing.csv")
    with pytest.raises(MtlexpError, match=r"data\.schema: .*nothing\.yaml: file not found"):
        TabularDataModule({}, path=tmp_path / "x.csv", schema=tmp_path / "nothing.yaml")


def test_an_empty_file_and_a_file_of_garbage_say_so(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(MtlexpError, match=r"empty\.csv: the file is empty \(no header line\)"):
        load(path=tmp_path / "empty.csv")
    rng = np.random.default_rng(0)
    (tmp_path / "garbage.csv").write_bytes(bytes(rng.integers(128, 256, 3000, dtype=np.uint8)))
    with pytest.raises(MtlexpError, match=r"garbage\.csv: not a UTF-8 text table \(byte 0 of the header line"):
        load(path=tmp_path / "garbage.csv")
    good = (tmp_path / "table.csv")
    make_frame().to_csv(good, index=False)
    lines = good.read_bytes().split(b"\n")
    lines[5] = b"\xff\xfe" + lines[5]
    (tmp_path / "body.csv").write_bytes(b"\n".join(lines))
    with pytest.raises(MtlexpError, match=r"body\.csv: line 6: bytes that are not UTF-8 text") as error:
        load(path=tmp_path / "body.csv")
    assert "\\x" not in str(error.value) and "Exception ignored" not in capfd.readouterr().err


# --- data errors ---------------------------------------------------------------------------------------
def test_malformed_rows_name_the_line(tmp_path: Path) -> None:
    lines = make_frame(20).to_csv(index=False).splitlines()
    short = lines.copy()
    short[3] = short[3].rsplit(",", 1)[0]  # file line 4 (the header is line 1)
    (tmp_path / "short.csv").write_text("\n".join(short) + "\n")
    with pytest.raises(MtlexpError, match=r"short\.csv: line 4: expected 9 comma-separated fields, got 8$"):
        load(path=tmp_path / "short.csv")
    frame = make_frame(20).astype({"x2": str})
    frame.loc[6, "x2"] = "seven"  # data row 7 = file line 8
    frame.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(MtlexpError, match=r"text\.csv: line 8: column 'x2': expected a number, got 'seven'$"):
        load(path=tmp_path / "text.csv")


def test_nan_labels_name_the_column_and_count(tmp_path: Path) -> None:
    frame = make_frame()
    frame.loc[[10, 20], "score"] = np.nan
    frame.to_csv(tmp_path / "nan.csv", index=False)
    message = r"nan\.csv: column 'score' \(task score\): 2 missing label value\(s\), first at line 12"
    with pytest.raises(MtlexpError, match=message):
        load(path=tmp_path / "nan.csv")


def test_one_class_label_fails_clearly(table_csv: Path) -> None:
    tasks = {"high": {"kind": "binary", "column": "score", "threshold": 1e9}}  # no row is above it
    with pytest.raises(MtlexpError, match=r"tasks\.high: the train split has only class 0"):
        load(tasks, path=table_csv)


# --- leaks -----------------------------------------------------------------------------------------------
def test_a_leaking_feature_warns_unless_known(tmp_path: Path) -> None:
    frame = make_frame()
    frame["echo"] = np.where(frame["clicked"] == "yes", "Y", "N")
    frame["ident"] = [f"u{i}" for i in range(len(frame))]  # one row per value: no leak, just an ID
    frame.to_csv(tmp_path / "leak.csv", index=False)
    schema = {**SCHEMA, "categorical": {"colour": None, "size": None, "echo": None, "ident": None}}
    with pytest.warns(LeakWarning, match="feature 'echo' alone predicts task 'clicked'") as record:
        dm = load(path=tmp_path / "leak.csv", schema=schema)
    assert not [w for w in record if "ident" in str(w.message)]
    assert "WARNING: not a known leak" in inspect_report(dm)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakWarning)
        known = load(path=tmp_path / "leak.csv", schema={**schema, "known_leaks": {"echo": "a copy of the label"}})
    assert [leak["feature"] for leak in known.describe()["leaks"]] == ["echo", "echo"]  # clicked, and score
    dropped = load(path=tmp_path / "leak.csv", schema={**schema, "known_leaks": ["echo"]}, drop_known_leaks=True)
    assert "echo" not in [c.name for c in dropped.features.categorical]


# --- cache -----------------------------------------------------------------------------------------------
def test_cache_is_reused_and_invalidated_by_a_schema_change(tmp_path: Path, table_csv: Path) -> None:
    schema = write_schema(tmp_path, SCHEMA)
    cache = tmp_path / "cache"
    cold = load(path=table_csv, schema=schema, cache_dir=cache)
    assert not cold.cache_hit
    entry = Path(cold.meta["cache"]["entry"])
    stamps = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    warm = load(path=table_csv, schema=schema, cache_dir=cache)
    assert warm.cache_hit and warm.fingerprint() == cold.fingerprint()
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == stamps
    # the cached arrays are plain .npy files, loadable memory-mapped
    numeric = np.load(entry / "train.numeric.npy", mmap_mode="r")
    assert isinstance(numeric, np.memmap) and numeric.shape == (320, 2)

    write_schema(tmp_path, {**SCHEMA, "numeric": ["x1"], "drop": ["id", "x2"]})
    changed = load(path=table_csv, schema=schema, cache_dir=cache)
    assert not changed.cache_hit and changed.features.numeric == ("x1",)
    assert len(list((cache / "tabular").iterdir())) == 2
    assert not [p for p in (cache / "tabular").iterdir() if ".tmp-" in p.name]  # atomic: no leftovers
    other_split = load(path=table_csv, schema=schema, cache_dir=cache, split_seed=5)
    assert not other_split.cache_hit


def test_a_changed_data_file_is_not_served_from_the_cache(tmp_path: Path, table_csv: Path) -> None:
    cache = tmp_path / "cache"
    load(path=table_csv, cache_dir=cache)
    make_frame(seed=9).to_csv(table_csv, index=False)
    again = load(path=table_csv, cache_dir=cache)
    assert not again.cache_hit


def test_inspect_report(table_csv: Path) -> None:
    report = inspect_report(load(path=table_csv, use_weight=True))
    assert "rows: train 320 | val 40 | test 40" in report
    assert "features: 2 numeric + 2 categorical" in report
    assert "% positive" in report and "mean " in report and "a:" in report
    assert "clicked ~ score: r = " in report
    assert "sample weight" in report


def test_load_schema_accepts_lists_for_categorical_and_known_leaks() -> None:
    schema = load_schema({"numeric": ["a"], "categorical": ["b", "c"], "known_leaks": ["c"]})
    assert schema.categorical == {"b": None, "c": None} and schema.known_leaks == {"c": ""}


@pytest.mark.parametrize("damage", ["overwritten", "truncated", "missing", "empty_meta"])
def test_a_damaged_cache_entry_is_rebuilt_with_a_warning_naming_it(tmp_path: Path, table_csv: Path, damage: str) -> None:
    schema = write_schema(tmp_path, SCHEMA)
    cache = tmp_path / "cache"
    cold = load(path=table_csv, schema=schema, cache_dir=cache)
    entry = Path(cold.meta["cache"]["entry"])
    target = entry / "train.numeric.npy"
    if damage == "overwritten":  # same size, other values: the old cache called this a hit
        array = np.load(target)
        np.save(target, array[::-1].copy())
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:-8])
    elif damage == "missing":
        target.unlink()
    else:
        (entry / "meta.json").write_text("")
    with pytest.warns(UserWarning, match=rf"data\.cache_dir: rebuilding the cache entry {re.escape(str(entry))}: "):
        rebuilt = load(path=table_csv, schema=schema, cache_dir=cache)
    assert not rebuilt.cache_hit and rebuilt.fingerprint() == cold.fingerprint()
    warm = load(path=table_csv, schema=schema, cache_dir=cache)  # and the rebuilt entry is good again
    assert warm.cache_hit and warm.fingerprint() == cold.fingerprint()


def test_a_killed_writers_temporary_folder_is_removed(tmp_path: Path, table_csv: Path) -> None:
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = tmp_path / "cache" / "tabular"
    left = folder / f".table-abc.tmp-{socket.gethostname()}-{gone.pid}-deadbeef"
    alive = folder / f".table-abc.tmp-{socket.gethostname()}-{os.getpid()}-cafef00d"
    for path in (left, alive):
        path.mkdir(parents=True)
        (path / "train.numeric.npy").write_bytes(b"partial")
    load(path=table_csv, schema=write_schema(tmp_path, SCHEMA), cache_dir=tmp_path / "cache")
    assert not left.exists() and alive.exists()  # a writer still running keeps its folder


# --- structure -------------------------------------------------------------------------------------------
def test_tabular_chooses_between_in_memory_and_streamed_once() -> None:
    """Streaming is a strategy (``TableSource``), not a flag: only the method that picks the table source may
    branch on streaming; everything else asks the source."""
    import ast

    import mtlexp.data.tabular as tabular

    tree = ast.parse(Path(tabular.__file__).read_text())
    chooser = "_table_source"
    allowed = {id(node) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef) and fn.name == chooser
               for node in ast.walk(fn)}
    branches = [n for n in ast.walk(tree) if isinstance(n, (ast.If, ast.IfExp, ast.While, ast.match_case))
                and id(n) not in allowed]
    offending = []
    for branch in branches:
        test = branch.pattern if isinstance(branch, ast.match_case) else branch.test
        words = [n.attr for n in ast.walk(test) if isinstance(n, ast.Attribute)]
        words += [n.id for n in ast.walk(test) if isinstance(n, ast.Name)]
        words += [n.value for n in ast.walk(test) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        if any("stream" in w.lower() or w in ("InMemoryTable", "TableSource") for w in words):
            offending.append(f"line {branch.lineno}: {ast.unparse(test)}")
    assert not offending, f"tabular.py branches on streaming outside {chooser}: {offending}"
