"""Parquet tables larger than memory: one streaming pass fits the preprocessing, then row groups stream.

The in-memory path (``tabular.py``) parses whole files; this one never holds more than a few row groups.

* **Splits without a permutation.** A row's split comes from a hash of its position in its file and the split
  seed (``row_splits``), so any part of the file can be assigned on its own. The shares follow
  ``val_fraction``/``test_fraction`` up to sampling noise.
* **One fitting pass** (``fit_stream``) reads every file once, row group by row group (pyarrow's dataset API),
  and accumulates what the in-memory path computes from whole columns: numeric means and sds, categorical
  vocabularies, multiclass names and label scaling, all on the training rows, with the same label checks
  (missing labels, a binary split with one class, a ``positive`` value that matches nothing). The validation
  and test rows go into small Parquet files of their own, so evaluation never rereads the training file.
  Statistics and those files form one cache entry (a temporary folder renamed into place).
* **Training** (``StreamingTrainLoader``) reads the training file's row groups in a fresh seeded order each
  epoch, a window of a few row groups at a time (read by a background thread while the previous window
  trains), shuffles the rows within the window and yields the same chunks of batches as the in-memory loader.
  Under DDP each rank takes every ``world_size``-th row group of the epoch's order and all ranks yield the same
  number of rows (a rank short of rows borrows row groups from the start of the order). Evaluation gives each
  rank a contiguous share of the rows, as the in-memory loader does.
* The transform from parsed rows to model inputs is ``preprocessing.TableTransform``, shared with the in-memory
  path, so both give the same inputs for the same rows and statistics.

* The fitting pass is a loop that feeds accumulators (``FeatureStatistics``, ``LabelChecks``, ``LabelMoments``,
  ``LeakSample``) one row group at a time; each turns what it gathered into its part of the statistics.
* The leak scan scores a bounded, seeded sample of the training rows (``LeakSample``) with the in-memory code.

Not done when streaming: ``mtlexp data inspect``'s per-split label table (it reads the tensors).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from mtlexp.data.preprocessing import (
    TableTransform,
    apply_standardise,
    check_finite,
    class_names,
    leak_scores,
    seen_values,
)
from mtlexp.data.readers import ParsedTable, is_parquet, parse_arrow, reading_parquet, sha256_stream
from mtlexp.data.schema import TableSchema, json_default
from mtlexp.data.summary import LabelMoments
from mtlexp.data.tensors import Batch, Chunk, TensorTable, split_batch
from mtlexp.errors import MtlexpError
from mtlexp.kinds import derive_labels, kind_of
from mtlexp.processes import this_host
from mtlexp.specs import TaskSpec

SPLIT_NAMES = ("train", "val", "test")
EVAL_ROW_GROUP = 1 << 17  # rows per row group of the carved validation and test files


def row_splits(positions: np.ndarray, seed: int, carve: Sequence[tuple[int, float]], own: int) -> np.ndarray:
    """The split code (index into ``SPLIT_NAMES``) of the rows at ``positions`` of one file.

    ``carve`` lists ``(split code, fraction)`` parts carved out of this file, in order; the remaining rows belong
    to the file's ``own`` split. A row's draw is a SplitMix64 hash of its position and ``seed``: independent of
    every other row, so a part of the file is assigned without reading the rest.
    """
    draw = uniform_draw(positions, seed)
    codes = np.full(len(positions), own, dtype=np.int8)
    low = 0.0
    for code, fraction in carve:
        codes[(draw >= low) & (draw < low + fraction)] = code
        low += fraction
    return codes


def uniform_draw(positions: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) per position: a SplitMix64 hash of the position and ``seed``."""
    with np.errstate(over="ignore"):
        x = positions.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def carve_plan(files: Mapping[str, Path], val_fraction: float, test_fraction: float, val_from: str
               ) -> dict[str, list[tuple[int, float]]]:
    """Per file (by its split): the splits carved out of it, as ``carve_splits`` does in memory."""
    plan: dict[str, list[tuple[int, float]]] = {split: [] for split in files}
    if "test" not in files:
        plan["train"].append((SPLIT_NAMES.index("test"), test_fraction))
    if "val" not in files:
        plan[val_from].append((SPLIT_NAMES.index("val"), val_fraction))
    return plan


@dataclass(frozen=True)
class RowGroup:
    """One row group of a Parquet file: its fragment (pyarrow dataset API) and its first row's position."""

    fragment: ds.ParquetFileFragment
    first_row: int
    num_rows: int

    def read(self, columns: Sequence[str]) -> pa.Table:
        with reading_parquet(Path(self.fragment.path)):
            return self.fragment.to_table(columns=list(columns), use_threads=True)


def row_groups(path: Path) -> list[RowGroup]:
    """The row groups of a Parquet file, in file order."""
    with reading_parquet(path):
        (fragment,) = ds.dataset(str(path), format="parquet").get_fragments()
        groups = fragment.split_by_row_group()
    out, first = [], 0
    for group in groups:
        rows = sum(info.num_rows for info in group.row_groups)
        out.append(RowGroup(group, first, rows))
        first += rows
    return out


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable on Linux, else physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def in_memory_bytes(files: Mapping[str, Path], columns: int) -> int:
    """A rough peak of the in-memory path for these files: parsing holds about 3 x 8 bytes per value."""
    rows = 0
    for path in files.values():
        with reading_parquet(path):
            rows += pq.ParquetFile(path).metadata.num_rows
    return rows * columns * 8 * 3


# --- the fitting pass ---------------------------------------------------------------------------------------

LEAK_SAMPLE_ROWS = 100_000  # training rows the streamed leak scan scores (docs/data.md)
LEAK_SAMPLE_SEED = 0x1EA4  # fixed, so the sample (and its scores) repeats whatever the run's seeds


class _Moments:
    """Count, sum and sum of squares of float64 values, for a mean and a (population) sd."""

    def __init__(self) -> None:
        self.count, self.total, self.squares = 0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        values = values[~np.isnan(values)].astype(np.float64)
        self.count += values.size
        self.total += float(values.sum())
        self.squares += float(np.square(values).sum())

    def mean_std(self) -> tuple[float, float]:
        if self.count == 0:
            return 0.0, 1.0
        mean = self.total / self.count
        std = float(np.sqrt(max(self.squares / self.count - mean * mean, 0.0)))
        return mean, std if std > 0 else 1.0


@dataclass
class StreamSpec:
    """What a streamed table is read and fitted with (the tabular data module's options)."""

    files: dict[str, Path]
    schema: TableSchema
    tasks: list[TaskSpec]
    numeric_features: list[str]
    categorical_features: list[str]
    numeric_columns: list[str]
    string_columns: list[str]
    weight: str | None
    val_fraction: float
    test_fraction: float
    val_from: str
    split_seed: int
    derived: list[TaskSpec] = field(default_factory=list)  # tasks whose labels are computed from the others

    @property
    def wanted(self) -> list[str]:
        """Every column the stream reads, once."""
        return list(dict.fromkeys([*self.numeric_columns, *self.string_columns]))


class FeatureStatistics:
    """Numeric means, sds and missing counts, and categorical vocabularies, of the training rows."""

    def __init__(self, numeric: Sequence[str], categorical: Sequence[str]) -> None:
        self.moments = {name: _Moments() for name in numeric}
        self.missing = dict.fromkeys(numeric, 0)
        self.vocabulary: dict[str, set[str]] = {name: set() for name in categorical}

    def add(self, train: ParsedTable) -> None:
        for name, moments in self.moments.items():
            moments.add(train.numeric[name])
            self.missing[name] += int(np.isnan(train.numeric[name]).sum())
        for name, seen in self.vocabulary.items():
            seen.update(seen_values(*train.strings[name]).tolist())

    def result(self) -> dict[str, Any]:
        numeric = {}
        for name, moments in self.moments.items():
            mean, std = moments.mean_std()
            numeric[name] = {"mean": mean, "std": std, "missing_in_train": self.missing[name]}
        return {
            "numeric": numeric,
            "vocabulary": {name: sorted(values) for name, values in self.vocabulary.items()},
            "categorical": {name: len(values) + 1 for name, values in self.vocabulary.items()},
        }


class LabelChecks:
    """The label checks of every split (``LabelTally`` per kind), the values of string label columns over the
    whole file (a part may lack a positive value), and the class names of multiclass tasks (all splits)."""

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        self.named = [t for t in tasks if kind_of(t).named_classes]
        self.class_values: dict[str, set[str]] = {t.name: set() for t in self.named}
        # Named classes' labels are -1 in this pass (their names are still being collected), so only the others
        # are tallied; their indices are counted from the names, so they lie in range.
        self.checked = [t for t in tasks if not kind_of(t).named_classes]
        self.tallies = {split: {t.name: kind_of(t).tally(t) for t in self.checked} for split in SPLIT_NAMES}
        self.value_counts: dict[TaskSpec, dict[str, int]] = {t: {} for t in self.checked
                                                             if kind_of(t).reads_strings(t)}

    def add_file_part(self, parsed: ParsedTable) -> None:
        """Rows of any split: class names and label values are counted over whole files."""
        for task in self.named:
            self.class_values[task.name].update(seen_values(*parsed.strings[str(task.column)]).tolist())
        for task, counts in self.value_counts.items():
            codes, values = parsed.strings[str(task.column)]
            found = np.bincount(codes[codes >= 0], minlength=len(values))
            for value, count in zip(values.tolist(), found.tolist()):
                counts[value] = counts.get(value, 0) + count

    def add(self, split: str, labels: Mapping[str, np.ndarray]) -> None:
        """One split's rows of a part: ``labels`` by task name."""
        for task in self.checked:
            observed = None if task.observed_if is None else labels[task.observed_if] > 0.5
            self.tallies[split][task.name].update(labels[task.name], observed)

    def check(self, train_file: Path) -> dict[str, list[str]]:
        """Fail as the in-memory path does; the class names of each multiclass task."""
        for task in self.checked:
            if task in self.value_counts:
                kind_of(task).check_value_counts(task, self.value_counts[task],
                                                 f"column {task.column!r} in {train_file}")
            for split in SPLIT_NAMES:
                self.tallies[split][task.name].check(split)
        return {t.name: class_names(self.class_values[t.name]) for t in self.named}


def fitted_labels(moments: LabelMoments) -> dict[str, Any]:
    """What the fitting pass learns from the training labels' sums: the scaling of ``standardize`` tasks, and
    the label summary in the units the model trains on (a standardised task's mean is that of its scaled
    labels)."""
    mean, cov = moments.mean_cov()
    scaling = {t.name: {"mean": float(mean[i]), "std": float(np.sqrt(max(cov[i, i], 0.0))) or 1.0}
               for i, t in enumerate(moments.tasks) if t.standardize}
    trained = np.array([apply_standardise(np.array([mean[i]]), **scaling[t.name])[0] if t.name in scaling else mean[i]
                        for i, t in enumerate(moments.tasks)])
    return {"label_scaling": scaling, **moments.summary(trained)}


class LeakSample:
    """A uniform sample of at most ``size`` training rows, for the leak scan: the rows with the smallest hash
    draws of their positions, so the sample does not depend on the order the row groups come in."""

    def __init__(self, size: int = LEAK_SAMPLE_ROWS, seed: int = LEAK_SAMPLE_SEED) -> None:
        self.size, self.seed = size, seed
        self.table: pa.Table | None = None
        self.positions = np.zeros(0, dtype=np.int64)
        self.keys = np.zeros(0)

    def add(self, table: pa.Table, positions: np.ndarray) -> None:
        keys = uniform_draw(positions, self.seed)
        if len(self.keys) >= self.size:  # full: only rows that beat the sample's largest draw can enter
            keep = np.flatnonzero(keys < self.keys.max())
            table, positions, keys = table.take(pa.array(keep)), positions[keep], keys[keep]
        if not len(keys):
            return
        merged = table if self.table is None else pa.concat_tables([self.table, table])
        positions, keys = np.concatenate([self.positions, positions]), np.concatenate([self.keys, keys])
        kept = np.sort(np.argsort(keys, kind="stable")[: self.size])
        self.table, self.positions, self.keys = merged.take(pa.array(kept)), positions[kept], keys[kept]

    def rows(self) -> tuple[pa.Table | None, np.ndarray]:
        """The sampled rows in file order, with their positions."""
        if self.table is None:
            return None, self.positions
        order = np.argsort(self.positions, kind="stable")
        return self.table.take(pa.array(order)), self.positions[order]


def fit_stream(spec: StreamSpec, entry: Path) -> dict[str, Any]:
    """One pass over every file: the statistics (returned, and written to ``entry/meta.json``) and the carved
    validation and test rows (``entry/val.parquet``, ``entry/test.parquet``); the entry appears whole."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".{entry.name}.tmp-{this_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        meta = _fit(spec, tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=json_default))
        try:
            os.replace(tmp, entry)
        except OSError:
            if not (entry / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _fit(spec: StreamSpec, folder: Path) -> dict[str, Any]:
    plan = carve_plan(spec.files, spec.val_fraction, spec.test_fraction, spec.val_from)
    features = FeatureStatistics(spec.numeric_features, spec.categorical_features)
    checks = LabelChecks(spec.tasks)
    moments = LabelMoments([*spec.tasks, *spec.derived])
    sample = LeakSample()
    rows = dict.fromkeys(SPLIT_NAMES, 0)
    train_rows_per_group: list[int] = []
    writers: dict[str, pq.ParquetWriter] = {}
    digests, file_rows = {}, {}
    # Labels without scaling, and without class names yet (those tasks' labels are -1 here): what the pass
    # needs is the missing-label check and the other kinds' labels.
    raw = TableTransform(spec.tasks, {}, {})
    finite = [*spec.numeric_features, *filter(None, [spec.weight])]
    try:
        for split, path in spec.files.items():
            with path.open("rb") as handle:
                digests[split] = sha256_stream(handle)
            file_rows[split] = 0
            for group in row_groups(path):
                file_rows[split] += group.num_rows
                table = group.read(spec.wanted)
                positions = np.arange(group.first_row, group.first_row + group.num_rows)
                codes = row_splits(positions, spec.split_seed, plan[split], SPLIT_NAMES.index(split))
                parsed = parse_arrow(table, path, spec.schema, spec.numeric_columns, spec.string_columns, positions)
                check_finite(parsed, finite)
                arrays = raw.labels(parsed, whole_file=False)  # missing labels fail here, naming the row
                labels = {t.name: arrays[f"label{i}"] for i, t in enumerate(spec.tasks)}
                checks.add_file_part(parsed)
                for code, split_name in enumerate(SPLIT_NAMES):
                    rows_of = np.flatnonzero(codes == code)
                    if split_name == "train" and split == "train":
                        train_rows_per_group.append(len(rows_of))
                    if not len(rows_of):
                        continue
                    rows[split_name] += len(rows_of)
                    part_labels = {name: values[rows_of] for name, values in labels.items()}
                    checks.add(split_name, part_labels)
                    if split_name != "train":
                        part = table.take(pa.array(rows_of))
                        if split_name not in writers:
                            writers[split_name] = pq.ParquetWriter(folder / f"{split_name}.parquet", part.schema)
                        writers[split_name].write_table(part, row_group_size=EVAL_ROW_GROUP)
                        continue
                    features.add(parsed.take(rows_of))
                    derive_labels(list(spec.derived), part_labels)  # the in-memory summary has them too
                    moments.add(part_labels, len(rows_of))
                    sample.add(table.take(pa.array(rows_of)), positions[rows_of])
    finally:
        for writer in writers.values():
            writer.close()

    for split, count in rows.items():
        if count == 0:
            raise MtlexpError(f"data: the {split} split is empty")
    meta = {
        "streaming": True,
        "files": {split: {"path": str(path), "sha256": digests[split],
                          "rows": file_rows[split]} for split, path in spec.files.items()},
        "rows": rows,
        "train_rows_per_group": train_rows_per_group,
        **features.result(),
        "classes": checks.check(spec.files["train"]),
        **fitted_labels(moments),
        "eval_files": sorted(writers),
    }
    meta["leak_scores"] = _sample_leak_scores(spec, meta, sample)
    meta["leak_sample_rows"] = len(sample.positions)
    return meta


def _sample_leak_scores(spec: StreamSpec, meta: Mapping[str, Any], sample: LeakSample) -> list[dict[str, Any]]:
    """The in-memory leak scan on the sampled training rows, preprocessed with the fitted statistics."""
    table, positions = sample.rows()
    if table is None:
        return []
    parsed = parse_arrow(table, spec.files["train"], spec.schema, spec.numeric_columns, spec.string_columns,
                         positions)
    arrays = transform_of(spec, meta).apply(parsed, whole_file=False)
    return leak_scores(arrays, spec.tasks, spec.numeric_features, spec.categorical_features)


def read_meta(entry: Path) -> dict[str, Any] | None:
    """The statistics of a complete entry, or None when it is missing or damaged (it is then refitted)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not meta.get("streaming"):
        return None
    for split in meta.get("eval_files", {}):
        try:
            if pq.ParquetFile(entry / f"{split}.parquet").metadata.num_rows != meta["rows"][split]:
                return None
        except (pa.ArrowException, OSError):
            return None
    return meta


def transform_of(spec: StreamSpec, meta: Mapping[str, Any]) -> TableTransform:
    """The fitted transform a cache entry's statistics describe."""
    return TableTransform(
        tasks=spec.tasks,
        numeric={name: (meta["numeric"][name]["mean"], meta["numeric"][name]["std"]) for name in spec.numeric_features},
        categories={name: {v: i + 1 for i, v in enumerate(meta["vocabulary"][name])} for name in spec.categorical_features},
        classes={k: list(v) for k, v in meta["classes"].items()},
        label_scaling=dict(meta["label_scaling"]),
        weight=spec.weight,
    )


def stream_fingerprint(meta: Mapping[str, Any]) -> str:
    """Identifies the data of a streamed run: the files' contents and the fitted statistics."""
    facts = {k: v for k, v in meta.items() if k != "cache"}  # where the entry is and whether it was a hit
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=json_default).encode()).hexdigest()


# --- reading ------------------------------------------------------------------------------------------------


@dataclass
class SplitSource:
    """The rows of one split in one file: all of them, or those whose ``row_splits`` code is ``code``."""

    spec: StreamSpec
    transform: TableTransform
    path: Path
    groups: list[RowGroup]
    code: int | None = None
    carve: Sequence[tuple[int, float]] = ()
    own: int = 0

    def read(self, indices: Sequence[int]) -> TensorTable:
        """The rows of this split in the row groups ``indices``, transformed, as one table."""
        parts = []
        for index in indices:
            group = self.groups[index]
            table = group.read(self.spec.wanted)
            positions = np.arange(group.first_row, group.first_row + group.num_rows)
            if self.code is not None:
                keep = row_splits(positions, self.spec.split_seed, self.carve, self.own) == self.code
                table, positions = table.filter(pa.array(keep)), positions[keep]
            parsed = parse_arrow(table, self.path, self.spec.schema, self.spec.numeric_columns,
                                 self.spec.string_columns, positions)
            parts.append(self.transform.apply(parsed, whole_file=False))
        return _table({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, self.spec.tasks,
                      self.spec.derived)


def _table(arrays: Mapping[str, np.ndarray], tasks: Sequence[TaskSpec], derived: Sequence[TaskSpec]) -> TensorTable:
    labels = {task.name: torch.from_numpy(arrays[f"label{i}"]) for i, task in enumerate(tasks)}
    derive_labels(list(derived), labels)
    return TensorTable(
        numeric=torch.from_numpy(arrays["numeric"]),
        categorical=torch.from_numpy(arrays["categorical"]),
        labels=labels,
        weight=torch.from_numpy(arrays["weight"]) if "weight" in arrays else None,
    )


def concat(a: TensorTable | None, b: TensorTable) -> TensorTable:
    """Rows of ``a`` then rows of ``b`` (``a`` may be None)."""
    if a is None or len(a) == 0:
        return b
    return TensorTable(
        numeric=torch.cat([a.numeric, b.numeric]),
        categorical=torch.cat([a.categorical, b.categorical]),
        labels={k: torch.cat([a.labels[k], b.labels[k]]) for k in a.labels},
        weight=None if a.weight is None else torch.cat([a.weight, b.weight]),
    )


class StreamingTrainLoader:
    """Training loader over a streamed split: row groups in a seeded order per epoch, read a window at a time
    by a background thread, rows shuffled within the window, yielded as chunks of ``chunk_steps`` batches.

    :param rows_per_group: the split's rows in each row group (from the fitting pass), so that every rank
        knows the epoch's length without reading.
    :param window: row groups read and shuffled together; more mixes better and holds more rows in memory.
    """

    def __init__(self, source: SplitSource, rows_per_group: Sequence[int], batch_size: int, chunk_steps: int,
                 seed: int, rank: int = 0, world_size: int = 1, window: int = 4) -> None:
        self.source = source
        self.rows_per_group = list(rows_per_group)
        self.batch_size = batch_size
        self.chunk_steps = chunk_steps
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.window = window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rows_per_rank(self) -> int:
        return sum(self.rows_per_group) // self.world_size

    def __len__(self) -> int:
        return -(-self._rows_per_rank() // (self.batch_size * self.chunk_steps))

    def _windows(self, generator: torch.Generator) -> Iterator[list[int]]:
        """This rank's row groups, a window at a time; a rank short of rows continues with the whole order."""
        order = torch.randperm(len(self.rows_per_group), generator=generator).tolist()
        mine = [g for g in order[self.rank :: self.world_size] + order if self.rows_per_group[g]]
        need, window = self._rows_per_rank(), []
        for group in mine:
            window.append(group)
            need -= self.rows_per_group[group]
            if len(window) == self.window or need <= 0:
                yield window
                window = []
            if need <= 0:
                return

    def __iter__(self) -> Iterator[Chunk]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        left = self._rows_per_rank()
        rows_per_chunk = self.batch_size * self.chunk_steps
        windows = list(self._windows(generator))
        carry: TensorTable | None = None
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as reader:
            pending = reader.submit(self.source.read, windows[0]) if windows else None
            for i in range(len(windows)):
                table = pending.result()
                pending = reader.submit(self.source.read, windows[i + 1]) if i + 1 < len(windows) else None
                table = concat(carry, table.rows(torch.randperm(len(table), generator=generator)))
                usable = min(len(table), left)
                full = usable - usable % rows_per_chunk if i + 1 < len(windows) else usable
                for start in range(0, full, rows_per_chunk):
                    yield split_batch(table.take(slice(start, min(start + rows_per_chunk, full))), self.batch_size)
                left -= full
                carry = table.rows(slice(full, usable))
                if left <= 0:
                    break
            if pending is not None:
                pending.cancel()


class StreamingEvalLoader:
    """Evaluation loader over a streamed split (a file whose every row belongs to it): consecutive batches of
    ``batch_size`` rows in file order. Under DDP each rank takes a contiguous share of the rows, as the
    in-memory loader does, so every rank gets rows even when the file is one row group."""

    def __init__(self, source: SplitSource, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.source = source
        self.batch_size = batch_size
        total = sum(group.num_rows for group in source.groups)
        per_rank = -(-total // world_size)
        self.start, self.stop = min(total, rank * per_rank), min(total, (rank + 1) * per_rank)

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        carry: TensorTable | None = None
        for index, group in enumerate(self.source.groups):
            first, last = group.first_row, group.first_row + group.num_rows
            if last <= self.start or first >= self.stop:
                continue
            part = self.source.read([index]).rows(slice(max(self.start - first, 0), min(self.stop, last) - first))
            table = concat(carry, part)
            full = len(table) - len(table) % self.batch_size
            for begin in range(0, full, self.batch_size):
                yield table.take(slice(begin, begin + self.batch_size))
            carry = table.rows(slice(full, len(table)))
        if carry is not None and len(carry):
            yield carry.take(slice(0, len(carry)))


def check_streamable(files: Mapping[str, Path]) -> None:
    for path in files.values():
        if not is_parquet(path):
            raise MtlexpError(f"data.streaming: streaming reads Parquet files, got {path}; convert it (e.g. "
                              "pyarrow.csv.read_csv + pyarrow.parquet.write_table) or set data.streaming=false")
