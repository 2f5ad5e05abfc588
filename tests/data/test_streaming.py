"""Streaming Parquet (data.streaming): the same preprocessing as the in-memory path, one fitting pass, loaders
that cover every row once per epoch, DDP shards of equal length, and clear errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtlexp.data import streaming
from mtlexp.data.preprocessing import LeakWarning
from mtlexp.data.streaming import StreamingEvalLoader, StreamingTrainLoader, row_splits
from mtlexp.data.tabular import InMemoryTable, StreamedTable, TabularDataModule
from mtlexp.errors import MtlexpError
from tests.data.test_tabular import SCHEMA, make_frame

ROW_GROUP = 150


def write_parquet(path: Path, frame: pd.DataFrame) -> Path:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=ROW_GROUP)
    return path


def load(tmp_path: Path, path: Any, streaming_mode: Any, **kwargs: Any) -> TabularDataModule:
    kwargs.setdefault("schema", SCHEMA)
    dm = TabularDataModule({}, path=path, cache_dir=tmp_path / "cache", streaming=streaming_mode,
                           use_weight=True, batch_size=64, eval_batch_size=100, **kwargs)
    dm.setup()
    return dm


def rows_of(loader: Any) -> dict[str, torch.Tensor]:
    """Every batch of a loader (chunks flattened), concatenated."""
    batches = [b for item in loader for b in (item if isinstance(item, list) else [item])]
    return {
        "numeric": torch.cat([b["numeric"] for b in batches]),
        "categorical": torch.cat([b["categorical"] for b in batches]),
        **{f"label/{k}": torch.cat([b["labels"][k] for b in batches]) for k in batches[0]["labels"]},
        **({"weight": torch.cat([b["weight"] for b in batches])} if "weight" in batches[0] else {}),
    }


def test_row_splits_follow_the_fractions_and_need_no_other_rows() -> None:
    positions = np.arange(200_000)
    codes = row_splits(positions, 3, [(2, 0.1), (1, 0.2)], 0)
    shares = np.bincount(codes, minlength=3) / len(codes)
    assert shares == pytest.approx([0.7, 0.2, 0.1], abs=0.005)
    halves = np.concatenate([row_splits(positions[:70_001], 3, [(2, 0.1), (1, 0.2)], 0),
                             row_splits(positions[70_001:], 3, [(2, 0.1), (1, 0.2)], 0)])
    assert np.array_equal(codes, halves)
    assert not np.array_equal(codes, row_splits(positions, 4, [(2, 0.1), (1, 0.2)], 0))


def test_streaming_gives_the_in_memory_preprocessing(tmp_path: Path) -> None:
    frames = {split: make_frame(rows, seed) for split, rows, seed in (("train", 900, 0), ("val", 300, 1),
                                                                     ("test", 300, 2))}
    files = {split: write_parquet(tmp_path / f"{split}.parquet", f) for split, f in frames.items()}
    memory = load(tmp_path, files, False)
    stream = load(tmp_path, files, True)
    assert isinstance(stream.table, StreamedTable) and isinstance(memory.table, InMemoryTable)
    assert stream.features == memory.features
    assert stream.tasks == memory.tasks
    for name, stats in memory.meta["numeric"].items():
        assert stream.meta["numeric"][name]["mean"] == pytest.approx(stats["mean"], rel=1e-12)
        assert stream.meta["numeric"][name]["std"] == pytest.approx(stats["std"], rel=1e-9)
        assert stream.meta["numeric"][name]["missing_in_train"] == stats["missing_in_train"]
    assert stream.meta["classes"] == memory.meta["classes"]
    assert stream.meta["rows"] == memory.meta["rows"]
    summary, expected = stream.describe(), memory.describe()
    assert summary["label_mean"] == pytest.approx(expected["label_mean"], rel=1e-6)
    assert summary["label_pearson"] == pytest.approx(expected["label_pearson"], rel=1e-6)
    for split in ("val", "test"):  # a split with a file of its own streams in file order
        got = rows_of(getattr(stream, f"{split}_dataloader")())
        want = rows_of(getattr(memory, f"{split}_dataloader")())
        assert got.keys() == want.keys()
        for key in got:
            torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-6, msg=key)


def test_a_train_epoch_covers_every_training_row_once_in_a_new_order(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", make_frame(2000, 0))
    dm = load(tmp_path, path, True)
    assert sum(dm.meta["rows"].values()) == 2000 and dm.meta["rows"]["val"] > 0 and dm.meta["rows"]["test"] > 0
    loader = dm.train_dataloader()
    assert isinstance(loader, StreamingTrainLoader)
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        chunks = list(loader)
        assert len(chunks) == len(loader)
        assert all(len(b["numeric"]) == 64 for c in chunks[:-1] for b in c)
        epochs.append(rows_of(chunks))
    n = dm.meta["rows"]["train"]
    for rows in epochs:
        assert len(rows["numeric"]) == n
        # every row once: the multiset of rows equals the training split's (rows are unique by their weight)
        assert torch.unique(rows["weight"]).numel() == n
    assert torch.equal(torch.sort(epochs[0]["weight"]).values, torch.sort(epochs[1]["weight"]).values)
    assert not torch.equal(epochs[0]["weight"], epochs[1]["weight"])
    loader.set_epoch(1)
    assert torch.equal(rows_of(list(loader))["weight"], epochs[1]["weight"])  # seeded: a resumed epoch repeats
    # the carved splits hold the other rows, in the cache entry
    held_out = rows_of(dm.val_dataloader())["weight"].numel() + rows_of(dm.test_dataloader())["weight"].numel()
    assert held_out + n == 2000


def test_ddp_ranks_take_row_group_shards_of_equal_length(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", make_frame(2000, 0))
    dm = load(tmp_path, path, True)
    source, per_group = dm.table.parts["train"], dm.meta["train_rows_per_group"]
    loaders = [StreamingTrainLoader(source, per_group, 64, 1, 0, rank, 2) for rank in range(2)]
    weights = [rows_of(list(loader))["weight"] for loader in loaders]
    assert len(weights[0]) == len(weights[1]) == sum(per_group) // 2
    assert len(loaders[0]) == len(loaders[1])
    overlap = np.intersect1d(weights[0].numpy(), weights[1].numpy()).size
    assert overlap < ROW_GROUP  # only what a short rank borrows
    evaluated = [rows_of(StreamingEvalLoader(dm.table.parts["val"], 7, rank, 2))["weight"] for rank in range(2)]
    assert all(len(w) for w in evaluated)  # the val file is one row group: both ranks still get rows
    assert torch.equal(torch.cat(evaluated), rows_of(dm.val_dataloader())["weight"])


def test_the_fitting_pass_is_cached_and_a_damaged_entry_refitted(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", make_frame(600, 0))
    first = load(tmp_path, path, True)
    assert not first.cache_hit
    second = load(tmp_path, path, True)
    assert second.cache_hit and second.fingerprint() == first.fingerprint()
    entry = Path(first.meta["cache"]["entry"])
    (entry / "val.parquet").write_bytes(b"not parquet")
    with pytest.warns(UserWarning, match="refitting the damaged streaming entry"):
        third = load(tmp_path, path, True)
    assert not third.cache_hit and third.fingerprint() == first.fingerprint()


def test_auto_streams_only_what_would_not_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_parquet(tmp_path / "t.parquet", make_frame(600, 0))
    assert isinstance(load(tmp_path, path, "auto").table, InMemoryTable)
    monkeypatch.setattr("mtlexp.data.tabular.available_memory", lambda: 1000)
    assert isinstance(load(tmp_path, path, "auto").table, StreamedTable)


def test_streaming_errors_name_the_problem(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    make_frame(300, 0).to_csv(csv, index=False)
    with pytest.raises(MtlexpError, match="data.streaming: streaming reads Parquet files"):
        load(tmp_path, csv, True)
    frame = make_frame(600, 0)
    frame["clicked"] = "no"
    with pytest.raises(MtlexpError, match="tasks.clicked.positive: no value of column 'clicked'.*'no' \\(600\\)"):
        load(tmp_path, write_parquet(tmp_path / "none.parquet", frame), True)
    frame = make_frame(600, 0)
    frame.loc[450, "score"] = np.nan
    with pytest.raises(MtlexpError, match="column 'score' \\(task score\\): 1 missing label value\\(s\\), first at row 451"):
        load(tmp_path, write_parquet(tmp_path / "nan.parquet", frame), True)
    with pytest.raises(MtlexpError, match="streaming: expected true, false or 'auto'"):
        load(tmp_path, csv, "yes")


def test_inspect_reports_a_streamed_table_from_its_fitting_pass(tmp_path: Path) -> None:
    from mtlexp.data.inspect import inspect_report

    dm = load(tmp_path, write_parquet(tmp_path / "t.parquet", make_frame(600, 0)), True)
    report = inspect_report(dm)
    assert f"train {dm.meta['rows']['train']:,}" in report and "(streamed)" in report
    assert "clicked mean" in report and "clicked~score r =" in report


def test_click_and_conversion_stream_with_derived_labels_and_the_same_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    click = rng.random(900) < 0.4
    frame = pd.DataFrame({"x": rng.normal(size=900), "click": click.astype(int),
                          "conversion": (click & (rng.random(900) < 0.3)).astype(int)})
    tasks = {"click": {"kind": "binary"}, "conversion": {"kind": "binary", "observed_if": "click"},
             "ctcvr": {"kind": "binary", "product": ["click", "conversion"]}}
    schema = {"numeric": ["x"]}

    def stream(path: Path, streaming: bool = True) -> TabularDataModule:
        dm = TabularDataModule(tasks, path=path, schema=schema, cache_dir=tmp_path / "cache", streaming=streaming,
                               batch_size=64)
        dm.setup()
        return dm

    dm = stream(write_parquet(tmp_path / "cc.parquet", frame))
    rows = rows_of(list(dm.train_dataloader()))
    assert torch.equal(rows["label/ctcvr"], rows["label/click"] * rows["label/conversion"])
    # The summary the fitting pass accumulated is the training rows' own, the derived task's included, as the
    # in-memory path's is (the two paths carve a single file's rows differently, so compare with the rows).
    summary = dm.describe()
    names = ["click", "conversion", "ctcvr"]
    assert summary["label_mean"] == pytest.approx({n: float(rows[f"label/{n}"].double().mean()) for n in names})
    pearson = np.corrcoef(np.stack([rows[f"label/{n}"].double().numpy() for n in names]))
    assert summary["label_pearson"] == pytest.approx({f"{a}~{b}": pearson[i, j] for i, a in enumerate(names)
                                                      for j, b in enumerate(names) if i < j})
    assert set(stream(tmp_path / "cc.parquet", streaming=False).describe()["label_mean"]) == set(names)
    frame.loc[np.flatnonzero(~click)[:2], "conversion"] = 1
    with pytest.raises(MtlexpError, match=r"tasks.conversion \(column 'conversion'\): \d row\(s\) of the \w+ split have a label where"):
        stream(write_parquet(tmp_path / "bad.parquet", frame))


def test_the_stream_scans_a_sample_for_leaks_as_the_in_memory_path_does(tmp_path: Path) -> None:
    frames = {split: make_frame(rows, seed) for split, rows, seed in (("train", 900, 0), ("val", 300, 1),
                                                                     ("test", 300, 2))}
    for frame in frames.values():
        frame["echo"] = np.where(frame["clicked"] == "yes", "Y", "N")  # a copy of the label
    files = {split: write_parquet(tmp_path / f"{split}.parquet", f) for split, f in frames.items()}
    schema = {**SCHEMA, "categorical": {"colour": None, "size": None, "echo": None}}
    messages, leaks = {}, {}
    for mode in (False, True):
        with pytest.warns(LeakWarning) as record:
            dm = load(tmp_path, files, mode, schema=schema)
        messages[mode] = sorted(str(w.message) for w in record if issubclass(w.category, LeakWarning))
        leaks[mode] = dm.describe()["leaks"]
    # every training row fits in the sample: the same rows give the same scores
    assert leaks[True] == leaks[False] and [(x["feature"], x["task"]) for x in leaks[True]] == [("echo", "clicked")]
    assert messages[True] == messages[False]
    assert "feature 'echo' alone predicts task 'clicked'" in messages[True][0]
    assert dm.meta["leak_sample_rows"] == dm.meta["rows"]["train"]


def test_the_leak_sample_is_bounded_uniform_and_independent_of_the_row_group_order() -> None:
    positions = np.arange(10_000)
    table = pa.table({"p": positions})
    forward, backward = streaming.LeakSample(size=500), streaming.LeakSample(size=500)
    for start in range(0, 10_000, 700):
        forward.add(table.slice(start, 700), positions[start:start + 700])
    for start in reversed(range(0, 10_000, 700)):
        backward.add(table.slice(start, 700), positions[start:start + 700])
    rows, kept = forward.rows()
    assert len(kept) == 500 and np.array_equal(kept, backward.rows()[1])
    assert np.array_equal(rows["p"].to_numpy(), kept) and np.all(np.diff(kept) > 0)  # file order
    assert np.histogram(kept, bins=5, range=(0, 10_000))[0] == pytest.approx([100] * 5, abs=35)
