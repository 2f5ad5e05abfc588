"""A schema-driven tabular data module: CSV (plain or .gz) or Parquet files in, cached tensor splits out.

A YAML schema (format reference: docs/data.md) says how to read the files and what every column is: a numeric
feature, a categorical feature, a label, the sample weight, or dropped. Preprocessing is fitted on the training
split only: numeric features are standardised (a missing value becomes the training mean, i.e. 0 after
standardising), categorical values are indexed 1..V in sorted order (0 = unseen in training or missing).

The result is cached as ``.npy`` files under ``cache_dir``, keyed by the input files (path, size, mtime), the
schema and every option that changes the tensors; a later run memory-maps them instead of parsing again.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import gzip
import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import torch
import yaml

from mtlexp.data.base import SPLITS, MTLDataModule
from mtlexp.data.features import CategoricalFeature, FeatureSpec
from mtlexp.data.tensors import TensorTable
from mtlexp.errors import MtlexpError, require
from mtlexp.tasks import TaskSpec

log = logging.getLogger(__name__)

# Bump when the preprocessing changes, so that old cache entries are not reused.
CACHE_VERSION = 1
PARQUET_SUFFIXES = (".parquet", ".pq")
_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe", " ": "space"}
_DICTIONARY = pa.dictionary(pa.int32(), pa.string())


class LeakWarning(UserWarning):
    """A single feature predicts a label almost perfectly on the training split."""


def auto_embedding_dim(num_values: int) -> int:
    """The ``auto`` embedding size of a categorical feature with ``num_values`` known values."""
    return max(1, min(16, round(1.6 * num_values**0.56)))


# ------------------------------------------------------------------------------------------------
# Schema
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableSchema:
    """A validated schema file: how to read the files, and the role of every column.

    :param source: the schema's file name (or ``schema``), for error messages.
    :param content: the parsed YAML, hashed into the cache key.
    """

    source: str
    content: dict[str, Any]
    columns: tuple[str, ...] | None = None
    header: bool = True
    delimiter: str = ","
    strip: bool = True
    missing: tuple[str, ...] = ("",)
    numeric: tuple[str, ...] = ()
    categorical: dict[str, int | str | None] = field(default_factory=dict)
    embedding_dim: int | str = 4
    tasks: dict[str, Any] = field(default_factory=dict)
    weight: str | None = None
    drop: tuple[str, ...] = ()
    known_leaks: dict[str, str] = field(default_factory=dict)

    @property
    def described(self) -> set[str]:
        """Every column the schema gives a role to."""
        named = {*self.numeric, *self.categorical, *self.drop, *self.known_leaks}
        named |= {str(node.get("column", name)) for name, node in self.tasks.items()}
        return named | ({self.weight} if self.weight else set())


_SCHEMA_KEYS = (
    "format", "columns", "numeric", "categorical", "embedding_dim", "tasks", "weight", "drop", "known_leaks"
)
_FORMAT_KEYS = ("header", "delimiter", "strip", "missing")


def _check_embedding_dim(value: Any, where: str) -> int | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise MtlexpError(f"{where}: expected a positive integer or 'auto', got {value!r}")


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise MtlexpError(f"{where}: expected a list of column names, got {value!r}")
    names = tuple(str(v) for v in value)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MtlexpError(f"{where}: column {twice[0]!r} is listed twice")
    return names


def load_schema(schema: str | Path | Mapping[str, Any]) -> TableSchema:
    """Read and validate a schema (a YAML file, or the mapping itself); errors name the file and key."""
    if isinstance(schema, Mapping):
        source, content = "schema", json.loads(json.dumps(dict(schema), default=_plain))
    else:
        path = Path(schema)
        source = str(path)
        if not path.is_file():
            raise MtlexpError(f"data.schema: {path}: file not found")
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise MtlexpError(f"{source}: {where}invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(content, dict):
        raise MtlexpError(f"{source}: expected a mapping of schema keys, got {type(content).__name__}")
    unknown = sorted(set(content) - set(_SCHEMA_KEYS))
    if unknown:
        raise MtlexpError(f"{source}: {unknown[0]}: unknown key; expected one of {list(_SCHEMA_KEYS)}")

    fmt = content.get("format") or {}
    if not isinstance(fmt, dict) or set(fmt) - set(_FORMAT_KEYS):
        bad = sorted(set(fmt) - set(_FORMAT_KEYS)) if isinstance(fmt, dict) else [fmt]
        raise MtlexpError(f"{source}: format.{bad[0]}: unknown key; expected one of {list(_FORMAT_KEYS)}")
    header, strip = fmt.get("header", True), fmt.get("strip", True)
    for key, value in (("header", header), ("strip", strip)):
        if not isinstance(value, bool):
            raise MtlexpError(f"{source}: format.{key}: expected true or false, got {value!r}")
    delimiter = fmt.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise MtlexpError(f"{source}: format.delimiter: expected one character, got {delimiter!r}")
    missing = fmt.get("missing", [""])
    missing = [missing] if isinstance(missing, str) else missing
    if not isinstance(missing, list):
        raise MtlexpError(f"{source}: format.missing: expected a list of strings, got {missing!r}")

    columns = _names(content.get("columns"), f"{source}: columns") or None
    if not header and columns is None:
        raise MtlexpError(f"{source}: columns: expected the list of column names (format.header is false)")
    numeric = _names(content.get("numeric"), f"{source}: numeric")
    embedding_dim = _check_embedding_dim(content.get("embedding_dim", 4), f"{source}: embedding_dim")
    raw_categorical = content.get("categorical") or {}
    if isinstance(raw_categorical, list):
        raw_categorical = {name: None for name in _names(raw_categorical, f"{source}: categorical")}
    if not isinstance(raw_categorical, dict):
        raise MtlexpError(f"{source}: categorical: expected a list or mapping of column names")
    categorical: dict[str, int | str | None] = {}
    for name, node in raw_categorical.items():
        node = node or {}
        if not isinstance(node, dict) or set(node) - {"embedding_dim"}:
            raise MtlexpError(f"{source}: categorical.{name}: expected null or {{embedding_dim: ...}}, got {node!r}")
        dim = node.get("embedding_dim")
        where = f"{source}: categorical.{name}.embedding_dim"
        categorical[str(name)] = None if dim is None else _check_embedding_dim(dim, where)

    tasks = content.get("tasks") or {}
    if not isinstance(tasks, dict):
        raise MtlexpError(f"{source}: tasks: expected a mapping {{name: {{kind: ..., column: ...}}}}, got {tasks!r}")
    for name, node in tasks.items():
        _task_spec(str(name), node, source)  # validates kind and keys
    weight = content.get("weight")
    if weight is not None and not isinstance(weight, str):
        raise MtlexpError(f"{source}: weight: expected a column name, got {weight!r}")
    drop = _names(content.get("drop"), f"{source}: drop")
    leaks = content.get("known_leaks") or {}
    if isinstance(leaks, list):
        leaks = {name: "" for name in _names(leaks, f"{source}: known_leaks")}
    if not isinstance(leaks, dict):
        raise MtlexpError(f"{source}: known_leaks: expected a mapping {{column: note}}, got {leaks!r}")
    known_leaks = {str(k): str(v or "") for k, v in leaks.items()}

    # Each column has one role; a label is never also a feature.
    roles: dict[str, str] = {}
    for role, names in (("numeric", numeric), ("categorical", tuple(categorical)), ("drop", drop)):
        for name in names:
            if name in roles:
                raise MtlexpError(f"{source}: {role}: column {name!r} is also listed under {roles[name]}")
            roles[name] = role
    for name, node in tasks.items():
        column = str(node.get("column", name))
        if roles.get(column) in ("numeric", "categorical"):
            raise MtlexpError(
                f"{source}: tasks.{name}.column: {column!r} is also listed under {roles[column]}; "
                "a label column is never a feature"
            )
    if weight is not None and weight in roles:
        raise MtlexpError(f"{source}: weight: column {weight!r} is also listed under {roles[weight]}")
    for name in known_leaks:
        if roles.get(name) not in ("numeric", "categorical"):
            raise MtlexpError(f"{source}: known_leaks: {name!r} is not listed as a numeric or categorical feature")
    if columns is not None:
        task_columns = {str(node.get("column", name)) for name, node in tasks.items()}
        for name in sorted(set(roles) | task_columns | ({weight} if weight else set())):
            if name not in columns:
                raise MtlexpError(
                    f"{source}: column {name!r} is not in the schema's columns list{_did_you_mean(name, columns)}"
                )
    return TableSchema(
        source=source,
        content=content,
        columns=columns,
        header=header,
        delimiter=delimiter,
        strip=strip,
        missing=tuple(str(m) for m in missing),
        numeric=numeric,
        categorical=categorical,
        embedding_dim=embedding_dim,
        tasks={str(k): dict(v or {}) for k, v in tasks.items()},
        weight=weight,
        drop=drop,
        known_leaks=known_leaks,
    )


def _task_spec(name: str, node: Any, source: str | None = None) -> TaskSpec:
    """A task spec whose label column defaults to the task's name; schema errors name the schema file."""
    try:
        spec = TaskSpec.from_config(name, node)
    except MtlexpError as exc:
        raise MtlexpError(f"{source}: {exc}" if source else str(exc)) from None
    return dataclasses.replace(spec, column=spec.column or name)


def _plain(value: Any) -> Any:
    """JSON fallback for OmegaConf containers and paths."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    return str(value)


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------------------------------------
# Reading files
# ------------------------------------------------------------------------------------------------
@dataclass
class ParsedTable:
    """The needed columns of one file, parsed: numbers as float64 (NaN = missing), strings as codes.

    A string column is ``(codes, values)``: ``values`` holds the distinct stripped strings and ``codes`` (int32)
    indexes them, with -1 for a missing value. ``rows`` are the rows' positions in the file, for error messages.
    """

    path: Path
    header: bool
    rows: np.ndarray
    numeric: dict[str, np.ndarray]
    strings: dict[str, tuple[np.ndarray, np.ndarray]]
    sha256: str

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index: np.ndarray) -> ParsedTable:
        """The rows at ``index`` (positions in this table)."""
        return ParsedTable(
            self.path,
            self.header,
            self.rows[index],
            {k: v[index] for k, v in self.numeric.items()},
            {k: (codes[index], values) for k, (codes, values) in self.strings.items()},
            self.sha256,
        )

    def locate(self, position: int) -> str:
        """Where row ``position`` of this table sits in its file: ``line N`` (CSV) or ``row N`` (Parquet)."""
        row = int(self.rows[position])
        if is_parquet(self.path):
            return f"row {row + 1}"
        return f"line {_csv_line_number(read_bytes(self.path), row, self.header)}"


def is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(PARQUET_SUFFIXES)


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is gzip (recognised by its magic bytes, not its name)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise MtlexpError(f"{path}: not a valid gzip file ({exc})") from None
    return data


def _csv_line_number(data: bytes, row: int, header: bool) -> int:
    """The 1-based line of data row ``row``, counting the way the CSV reader does (empty lines skipped)."""
    seen = -1 if header else 0
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip(b"\r"):
            if seen == row:
                return number
            seen += 1
    return number


def file_columns(path: Path, schema: TableSchema) -> list[str]:
    """The column names of a data file: its header, the Parquet schema, or the schema's ``columns``."""
    if not path.is_file():
        raise MtlexpError(f"{path}: file not found")
    if is_parquet(path):
        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as exc:
            raise MtlexpError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    if not schema.header:
        return list(schema.columns or ())
    with (gzip.open(path, "rt") if _is_gzip(path) else path.open()) as handle:
        first = handle.readline()
    names = next(csv.reader([first], delimiter=schema.delimiter), [])
    return [n.strip() for n in names] if schema.strip else names


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def read_table(path: Path, schema: TableSchema, numeric: Sequence[str], strings: Sequence[str]) -> ParsedTable:
    """Parse the columns ``numeric`` (as numbers) and ``strings`` (as categorical codes) of one file."""
    columns = file_columns(path, schema)
    wanted = list(dict.fromkeys([*numeric, *strings]))
    if is_parquet(path):
        digest = _sha256_file(path)
        try:
            table = pq.read_table(path, columns=wanted)
        except (pa.ArrowException, OSError) as exc:
            raise MtlexpError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    else:
        data = read_bytes(path)
        digest = hashlib.sha256(data).hexdigest()
        table = _read_csv(path, data, schema, columns, wanted)
    num_rows = table.num_rows
    parsed = ParsedTable(path, schema.header, np.arange(num_rows), {}, {}, digest)
    for name in wanted:
        column = table.column(name)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type):
            if name in numeric:
                parsed.numeric[name] = pc.cast(column, pa.float64()).to_numpy().astype(np.float64, copy=False)
            column = pc.cast(column, pa.string())
            if name not in strings:
                continue
        codes, values = _dictionary_codes(column, schema)
        if name in strings:
            parsed.strings[name] = (codes, values)
        if name in numeric and name not in parsed.numeric:
            parsed.numeric[name] = _parse_numbers(parsed, name, codes, values)
    return parsed


def _read_csv(path: Path, data: bytes, schema: TableSchema, columns: list[str], wanted: list[str]) -> pa.Table:
    bad_rows: list[Any] = []

    def on_invalid_row(row: Any) -> str:
        bad_rows.append(row)
        return "skip" if len(bad_rows) < 100 else "error"

    try:
        table = pa_csv.read_csv(
            pa.BufferReader(data),
            read_options=pa_csv.ReadOptions(column_names=columns, skip_rows=1 if schema.header else 0),
            parse_options=pa_csv.ParseOptions(delimiter=schema.delimiter, invalid_row_handler=on_invalid_row),
            # Everything as strings, with no NA guessing ("NA" can be a real category); missing markers are ours.
            convert_options=pa_csv.ConvertOptions(
                column_types={name: _DICTIONARY for name in wanted},
                include_columns=wanted,
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowException as exc:
        if not bad_rows:
            raise MtlexpError(f"{path}: could not parse as CSV ({str(exc).splitlines()[0]})") from None
    if bad_rows:
        # The reader is multi-threaded: report the earliest of the rows it rejected.
        def line_of(row: Any) -> int:
            text = row.text.encode()
            start = 0  # a candidate line start: the file's start, then just after each "\n" + text
            while start >= 0:
                end = start + len(text)
                if data.startswith(text, start) and data[end : end + 1] in (b"", b"\n", b"\r"):
                    return data.count(b"\n", 0, start) + 1
                found = data.find(b"\n" + text, start)
                start = found + 1 if found >= 0 else -1
            return 0

        first = min(bad_rows, key=line_of)
        kind = _DELIMITER_NAMES.get(schema.delimiter, repr(schema.delimiter))
        raise MtlexpError(
            f"{path}: line {line_of(first)}: expected {first.expected_columns} {kind}-separated fields, "
            f"got {first.actual_columns}"
        )
    return table


def _dictionary_codes(column: pa.ChunkedArray, schema: TableSchema) -> tuple[np.ndarray, np.ndarray]:
    """Codes (int32, -1 = missing) into the distinct stripped values of a string column."""
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    column = column.unify_dictionaries() if column.num_chunks > 1 else column
    if column.num_chunks == 0:
        return np.zeros(0, np.int32), np.array([], dtype=object)
    raw_values = column.chunk(0).dictionary
    if schema.strip:
        raw_values = pc.utf8_trim_whitespace(raw_values)
    values, inverse = np.unique(np.asarray(raw_values.to_pylist(), dtype=object), return_inverse=True)
    present = ~np.isin(values, list(schema.missing))
    renumber = np.where(present, np.cumsum(present) - 1, -1).astype(np.int32)
    remap = np.append(renumber[inverse], np.int32(-1))  # the last position catches null indices
    values = values[present]
    indices = np.concatenate([chunk.indices.fill_null(-1).to_numpy() for chunk in column.chunks])
    return remap[indices], values


def _parse_numbers(parsed: ParsedTable, name: str, codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Numbers from a string column (parsing each distinct value once); a bad value names its line."""
    try:
        numbers = pc.cast(pa.array(values, pa.string()), pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # slow path: Python's float() is a little more lenient, and finds the culprit
        numbers = np.array([_to_float(v) for v in values], dtype=np.float64)
        bad = np.isnan(numbers) & ~np.array([v.strip().lower() == "nan" for v in values], dtype=bool)
        if bad.any():
            position = int(np.flatnonzero((codes >= 0) & bad[np.maximum(codes, 0)])[0])
            raise MtlexpError(
                f"{parsed.path}: {parsed.locate(position)}: column {name!r}: expected a number, "
                f"got {values[codes[position]]!r}"
            ) from None
    return np.append(numbers, np.nan)[codes]  # code -1 (missing) -> NaN


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------
# Preprocessing
# ------------------------------------------------------------------------------------------------
def carve_splits(
    files: Mapping[str, ParsedTable], val_fraction: float, test_fraction: float, val_from: str, seed: int
) -> dict[str, ParsedTable]:
    """Train/val/test tables: a split with its own file keeps it; a split without is carved out of another.

    ``test`` is carved out of the train file; ``val`` out of ``val_from``'s file. The rows are drawn by a
    permutation seeded with ``seed`` and kept in file order within each split.
    """
    carve = {split: files[split] for split in files}
    plan: dict[str, list[tuple[str, float]]] = {}
    if "test" not in files:
        plan.setdefault("train", []).append(("test", test_fraction))
    if "val" not in files:
        plan.setdefault(val_from, []).append(("val", val_fraction))
    rng = np.random.default_rng(seed)
    for source, parts in plan.items():
        table = files[source]
        order = rng.permutation(len(table))
        start = 0
        for split, fraction in parts:
            size = int(round(fraction * len(table)))
            carve[split] = table.take(np.sort(order[start : start + size]))
            start += size
        carve[source] = table.take(np.sort(order[start:]))
    return carve


def task_labels(task: TaskSpec, table: ParsedTable, classes: Sequence[str]) -> np.ndarray:
    """The label of ``task`` for every row: float32 (regression, binary 0/1) or int64 class indices."""
    column = str(task.column)
    if task.kind == "multiclass" or (task.kind == "binary" and task.positive):
        codes, values = table.strings[column]
        missing = codes < 0
        if task.kind == "binary":
            positive = np.isin(values, [p.strip() for p in task.positive]).astype(np.float32)
            labels = np.where(missing, np.float32(np.nan), positive[np.maximum(codes, 0)]).astype(np.float32)
        else:
            index = {v: i for i, v in enumerate(classes)}
            lookup = np.array([index.get(v, -1) for v in values] + [-1], dtype=np.int64)
            labels = lookup[codes]
    else:
        values = table.numeric[column]
        missing = np.isnan(values)
        labels = values if task.threshold is None else np.where(missing, np.nan, values > task.threshold)
        labels = labels.astype(np.float32)
    if missing.any():
        raise MtlexpError(
            f"{table.path}: column {column!r} (task {task.name}): {int(missing.sum())} missing label value(s), "
            f"first at {table.locate(int(np.flatnonzero(missing)[0]))}; labels must not be missing"
        )
    return labels


def multiclass_names(task: TaskSpec, tables: Sequence[ParsedTable]) -> list[str]:
    """Class names in index order: the integers 0..K-1 when the values are integers, else sorted values."""
    seen = sorted({str(v) for t in tables for v in t.strings[str(task.column)][1]})
    if seen and all(v.lstrip("-").isdigit() for v in seen):
        return [str(i) for i in range(max(int(v) for v in seen) + 1)]
    return seen


def standardise(train: np.ndarray, others: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float, float]:
    """Standardise with the training mean/std; missing values (NaN) become the training mean (0)."""
    observed = train[~np.isnan(train)]
    mean = float(observed.mean()) if observed.size else 0.0
    std = float(observed.std()) if observed.size else 1.0
    std = std if std > 0 else 1.0
    out = [np.nan_to_num((x - mean) / std, nan=0.0).astype(np.float32) for x in (train, *others)]
    return out, mean, std


def index_categories(
    train: tuple[np.ndarray, np.ndarray], others: Sequence[tuple[np.ndarray, np.ndarray]]
) -> tuple[list[np.ndarray], int]:
    """Indices 1..V for the values seen in training (sorted), 0 for unseen or missing; returns (indices, V)."""
    codes, values = train
    known = np.unique(values[np.unique(codes[codes >= 0])])
    index = {v: i + 1 for i, v in enumerate(known)}
    out = []
    for codes, values in (train, *others):
        lookup = np.array([index.get(v, 0) for v in values] + [0], dtype=np.int64)
        out.append(lookup[codes])
    return out, len(known)


def grouped_auc(scores: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> float:
    """ROC AUC of a score that is constant within groups (ties count half), from per-group counts."""
    unique, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(inverse, positives, len(unique))
    neg = np.bincount(inverse, negatives, len(unique))
    if pos.sum() == 0 or neg.sum() == 0:
        return 0.5
    below = np.cumsum(neg) - neg
    return float((pos * below + 0.5 * pos * neg).sum() / (pos.sum() * neg.sum()))


def single_feature_score(
    feature: np.ndarray, categorical: bool, task: TaskSpec, labels: np.ndarray
) -> tuple[str, float] | None:
    """How well one feature alone predicts a label on the training split: ``("auc", a)`` or ``("r2", r2)``.

    A categorical feature is scored by its per-category label mean, fitted on one half of the rows and
    applied to the other (two-fold), so that an ID-like column with one row per value is not mistaken for a
    leak. A numeric feature is scored as it is (AUC either way up, or squared Pearson correlation).
    Multiclass labels are not scored.
    """
    if task.kind == "multiclass" or len(labels) < 2:
        return None
    y = labels.astype(np.float64)
    if categorical:
        fold = np.arange(len(y)) % 2
        size = int(feature.max()) + 1
        groups = fold * size + feature  # (fold, category) as one index
        count = np.bincount(groups, minlength=2 * size).reshape(2, size)
        total = np.bincount(groups, y, 2 * size).reshape(2, size)
        overall = y.mean()
        # the mean of each category in the *other* fold (the overall mean where the other fold never saw it)
        other_mean = np.where(count[::-1] > 0, total[::-1] / np.maximum(count[::-1], 1), overall).reshape(-1)
        if task.kind == "binary":
            pos = np.bincount(groups, y, 2 * size)
            return "auc", grouped_auc(other_mean, pos, np.bincount(groups, minlength=2 * size) - pos)
        prediction = other_mean[groups]
    else:
        if task.kind == "binary":
            unique, inverse = np.unique(feature, return_inverse=True)
            pos = np.bincount(inverse, y, len(unique))
            auc = grouped_auc(unique, pos, np.bincount(inverse, minlength=len(unique)) - pos)
            return "auc", max(auc, 1.0 - auc)
        prediction = feature
    if prediction.std() == 0 or y.std() == 0:
        return "r2", 0.0
    return "r2", float(np.corrcoef(prediction, y)[0, 1] ** 2)


# ------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------
def write_cache_entry(entry: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write the arrays and ``meta.json`` into a temporary folder, then rename it into place (atomic)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=_plain))
        try:
            os.replace(tmp, entry)
        except OSError:
            if not (entry / "meta.json").is_file():  # not a concurrent writer that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_array(path: Path) -> np.ndarray:
    """A cached array, memory-mapped copy-on-write (pages are read on first use; nothing is written back)."""
    try:
        return np.load(path, mmap_mode="c")
    except ValueError:  # an array with no elements cannot be mapped
        return np.load(path)


# ------------------------------------------------------------------------------------------------
# The data module
# ------------------------------------------------------------------------------------------------
class TabularDataModule(MTLDataModule):
    """Any table described by a schema: CSV (plain or .gz) or Parquet, one file or one per split.

    :param tasks: the ``tasks`` config node; empty means the schema's own ``tasks``. A task's label column
        defaults to the task's name. A column used as a label by a config task is excluded from the features
        (recorded as ``excluded_as_labels``); in the schema itself, a label column listed as a feature is an error.
    :param path: one data file (carved into train/val/test), or a mapping ``{train: ..., val: ..., test: ...}``
        in which ``train`` is required and a missing split is carved out of another file.
    :param schema: the schema YAML file (or the mapping itself), see docs/data.md.
    :param cache_dir: folder of the preprocessed-tensor cache (``<cache_dir>/tabular/``); ``None``: no cache.
    :param val_fraction: share of ``val_from``'s file carved out as validation split when ``val`` has no file.
    :param test_fraction: share of the train file carved out as test split when ``test`` has no file.
    :param val_from: the split whose file the validation split is carved out of: ``train`` or ``test``.
    :param split_seed: seeds the carving; fixed, so every run sees the same split whatever its ``seed``.
    :param use_weight: pass the schema's ``weight`` column on as per-row sample weight (never a feature).
    :param drop_known_leaks: remove the schema's ``known_leaks`` from the features.
    :param leak_auc_threshold: warn when one feature alone reaches this train AUC (binary) or R^2 (regression)
        on a label, unless it is a known leak.
    :param batch_size: training batch size.
    :param eval_batch_size: validation/test batch size.
    :param chunk_steps: optimizer steps per ``training_step``.
    :param seed: the run seed (training order).
    """

    cache_name = "tabular"

    def __init__(
        self,
        tasks: Mapping[str, Any],
        path: str | Path | Mapping[str, str | Path] | None,
        schema: str | Path | Mapping[str, Any],
        cache_dir: str | Path | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        val_from: str = "train",
        split_seed: int = 0,
        use_weight: bool = False,
        drop_known_leaks: bool = False,
        leak_auc_threshold: float = 0.98,
        batch_size: int = 1024,
        eval_batch_size: int = 16384,
        chunk_steps: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(tasks, batch_size, eval_batch_size, chunk_steps, seed)
        if path is not None:
            files = dict(path) if isinstance(path, Mapping) else {"train": path}
            require(
                "train" in files and set(files) <= set(SPLITS),
                "path",
                "a file, or a mapping with a 'train' file and optional 'val'/'test' files",
                files,
            )
            path = {split: Path(str(p)).expanduser() for split, p in files.items()}
        self.path: dict[str, Path] | None = path
        require(val_from in ("train", "test"), "val_from", "'train' or 'test'", val_from)
        require(
            val_from == "train" or path is None or "test" in path or "val" in path,
            "val_from",
            "'train' unless data.path names a test file",
            val_from,
        )
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            require(isinstance(fraction, (int, float)) and 0 < fraction < 1, name, "a fraction in (0, 1)", fraction)
        both_from_train = val_from == "train" and (path is None or not {"val", "test"} & set(path))
        require(
            not both_from_train or val_fraction + test_fraction < 1,
            "val_fraction",
            f"val_fraction + test_fraction < 1 (both carved out of the train file; test_fraction is {test_fraction})",
            val_fraction,
        )
        require(0 < leak_auc_threshold <= 1, "leak_auc_threshold", "a number in (0, 1]", leak_auc_threshold)
        self.schema = load_schema(schema)
        self.cache_dir = None if cache_dir is None else Path(str(cache_dir)).expanduser()
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.val_from = val_from
        self.split_seed = split_seed
        self.use_weight = use_weight
        self.drop_known_leaks = drop_known_leaks
        self.leak_auc_threshold = float(leak_auc_threshold)

        if not self.tasks:
            self.tasks = [_task_spec(name, node, self.schema.source) for name, node in self.schema.tasks.items()]
        self.tasks = [dataclasses.replace(t, column=t.column or t.name) for t in self.tasks]
        weight = self.schema.weight
        for task in self.tasks:
            if task.column == weight:
                raise MtlexpError(f"tasks.{task.name}.column: {weight!r} is the schema's weight column, not a label")
            if task.kind == "binary" and task.positive and task.threshold is not None:
                raise MtlexpError(f"tasks.{task.name}: give either positive or threshold, not both")
        require(
            not use_weight or weight is not None, "use_weight", "false: the schema names no weight column", use_weight
        )
        labels = {str(t.column) for t in self.tasks}
        removed = labels | (set(self.schema.known_leaks) if drop_known_leaks else set())
        self.numeric_features = [c for c in self.schema.numeric if c not in removed]
        self.categorical_features = [c for c in self.schema.categorical if c not in removed]
        features = {*self.schema.numeric, *self.schema.categorical}
        self.excluded_as_labels = sorted(labels & features)
        # columns in the file that are neither features nor labels of this run
        dropped_leaks = set(self.schema.known_leaks) if drop_known_leaks else set()
        self.dropped = sorted((set(self.schema.drop) | dropped_leaks) - labels)
        self.meta: dict[str, Any] = {}
        self.cache_hit = False

    # --- where the files are -----------------------------------------------------------------------
    def input_files(self) -> dict[str, Path]:
        """The data file of each split that has one (``train`` at least)."""
        if self.path is None:
            raise MtlexpError("data.path: expected a data file or a {train: ..., test: ...} mapping, got None")
        return self.path

    def cache_stem(self, files: Mapping[str, Path]) -> str:
        """A readable prefix for this data's cache entries."""
        return files["train"].name.split(".")[0] or "table"

    # --- loading ------------------------------------------------------------------------------------
    def cache_key(self, files: Mapping[str, Path]) -> str:
        """A hash of everything the tensors depend on: files (path, size, mtime), schema and options."""
        stats = {}
        for split, path in sorted(files.items()):
            if not path.is_file():
                raise MtlexpError(f"{path}: file not found (the {split} file)")
            info = path.stat()
            stats[split] = [str(path.resolve()), info.st_size, info.st_mtime_ns]
        options = {
            "version": CACHE_VERSION,
            "files": stats,
            "schema": self.schema.content,
            "tasks": [dataclasses.asdict(t) for t in self.tasks],
            "numeric": self.numeric_features,
            "categorical": self.categorical_features,
            "split": [self.val_fraction, self.test_fraction, self.val_from, self.split_seed],
            "use_weight": self.use_weight,
        }
        return hashlib.sha256(json.dumps(options, sort_keys=True, default=_plain).encode()).hexdigest()

    def load(self) -> tuple[dict[str, TensorTable], FeatureSpec]:
        files = self.input_files()
        key = self.cache_key(files)
        entry = None
        if self.cache_dir is not None:
            entry = self.cache_dir / self.cache_name / f"{self.cache_stem(files)}-{key[:16]}"
        if entry is not None and (entry / "meta.json").is_file():
            arrays = {p.stem: load_array(p) for p in entry.glob("*.npy")}
            self.meta = json.loads((entry / "meta.json").read_text())
            self.cache_hit = True
        else:
            arrays, self.meta = self.preprocess(files)
            self.cache_hit = False
            if entry is not None:
                try:
                    write_cache_entry(entry, arrays, self.meta)
                except OSError as exc:
                    warnings.warn(f"data.cache_dir: could not write the cache entry {entry} ({exc})", stacklevel=2)
        self.meta["cache"] = {"entry": None if entry is None else str(entry), "hit": self.cache_hit}
        log.info("data: %s (%s)", "cache hit" if self.cache_hit else "parsed the files", entry or "no cache")
        self._warn_leaks()
        splits = {}
        for split in SPLITS:
            labels = {t.name: torch.from_numpy(arrays[f"{split}.label{i}"]) for i, t in enumerate(self.tasks)}
            weight = arrays.get(f"{split}.weight")
            splits[split] = TensorTable(
                numeric=torch.from_numpy(arrays[f"{split}.numeric"]),
                categorical=torch.from_numpy(arrays[f"{split}.categorical"]),
                labels=labels,
                weight=None if weight is None else torch.from_numpy(weight),
            )
        return splits, self.feature_spec()

    def preprocess(self, files: Mapping[str, Path]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Parse the files and build every split's arrays (fitted on train) and the metadata to cache."""
        numeric_columns = list(self.numeric_features)
        string_columns = list(self.categorical_features)
        for task in self.tasks:
            strings = task.kind == "multiclass" or (task.kind == "binary" and bool(task.positive))
            (string_columns if strings else numeric_columns).append(str(task.column))
        if self.use_weight:
            numeric_columns.append(str(self.schema.weight))
        for path in files.values():
            self._check_columns(path)
        numeric_columns, string_columns = list(dict.fromkeys(numeric_columns)), list(dict.fromkeys(string_columns))
        parsed = {split: read_table(p, self.schema, numeric_columns, string_columns) for split, p in files.items()}
        tables = carve_splits(parsed, self.val_fraction, self.test_fraction, self.val_from, self.split_seed)
        order = [tables[s] for s in SPLITS]
        arrays: dict[str, np.ndarray] = {}
        classes = {t.name: multiclass_names(t, order) for t in self.tasks if t.kind == "multiclass"}
        for split, table in tables.items():
            for i, task in enumerate(self.tasks):
                arrays[f"{split}.label{i}"] = task_labels(task, table, classes.get(task.name, ()))
            if self.use_weight:
                weight = table.numeric[str(self.schema.weight)]
                if np.isnan(weight).any():
                    raise MtlexpError(
                        f"{table.path}: column {self.schema.weight!r} (the weight): {int(np.isnan(weight).sum())} "
                        "missing value(s); weights must not be missing"
                    )
                arrays[f"{split}.weight"] = weight.astype(np.float32)

        stats, numeric = {}, {s: [] for s in SPLITS}
        for name in self.numeric_features:
            columns, mean, std = standardise(order[0].numeric[name], [t.numeric[name] for t in order[1:]])
            stats[name] = {"mean": mean, "std": std, "missing_in_train": int(np.isnan(order[0].numeric[name]).sum())}
            for split, column in zip(SPLITS, columns):
                numeric[split].append(column)
        cardinality, categorical = {}, {s: [] for s in SPLITS}
        for name in self.categorical_features:
            columns, num_values = index_categories(order[0].strings[name], [t.strings[name] for t in order[1:]])
            cardinality[name] = num_values + 1
            for split, column in zip(SPLITS, columns):
                categorical[split].append(column)
        for split, table in tables.items():
            arrays[f"{split}.numeric"] = _stack(numeric[split], len(table), np.float32)
            arrays[f"{split}.categorical"] = _stack(categorical[split], len(table), np.int64)

        scores = []
        train_features = [(n, c, False) for n, c in zip(self.numeric_features, numeric["train"])]
        train_features += [(n, c, True) for n, c in zip(self.categorical_features, categorical["train"])]
        for name, column, is_categorical in train_features:
            for i, task in enumerate(self.tasks):
                score = single_feature_score(column, is_categorical, task, arrays[f"train.label{i}"])
                if score is not None:
                    scores.append({"feature": name, "task": task.name, "metric": score[0], "score": round(score[1], 4)})
        meta = {
            "files": {
                split: {"path": str(path), "sha256": parsed[split].sha256, "rows": len(parsed[split])}
                for split, path in files.items()
            },
            "rows": {split: len(table) for split, table in tables.items()},
            "numeric": stats,
            "categorical": cardinality,
            "classes": classes,
            "leak_scores": scores,
        }
        return arrays, meta

    def _check_columns(self, path: Path) -> None:
        """Every schema column is in the file, and every file column has a role (a feature, a label, dropped)."""
        columns = file_columns(path, self.schema)
        needed = self.schema.described | {str(t.column) for t in self.tasks}
        for name in sorted(needed):
            if name not in columns:
                hint = _did_you_mean(name, columns)
                raise MtlexpError(f"{path}: no column {name!r}, which {self.schema.source} names{hint}")
        extra = [c for c in columns if c not in needed]
        if extra:
            raise MtlexpError(
                f"{path}: column {extra[0]!r} is not in {self.schema.source}: "
                "list it under numeric, categorical or drop"
            )

    # --- facts ---------------------------------------------------------------------------------------
    def feature_spec(self) -> FeatureSpec:
        """Numeric names and categorical vocabularies, with embedding sizes by the schema's rule."""
        categorical = []
        for name in self.categorical_features:
            cardinality = int(self.meta["categorical"][name])
            dim = self.schema.categorical.get(name) or self.schema.embedding_dim
            dim = auto_embedding_dim(cardinality - 1) if dim == "auto" else int(dim)
            categorical.append(CategoricalFeature(name, cardinality, dim))
        return FeatureSpec(numeric=tuple(self.numeric_features), categorical=tuple(categorical))

    def leaks(self) -> list[dict[str, Any]]:
        """Single-feature scores worth a look: every known leak's, and any other at or above the threshold."""
        found = []
        for entry in self.meta.get("leak_scores", []):
            known = entry["feature"] in self.schema.known_leaks
            if known or entry["score"] >= self.leak_auc_threshold:
                found.append({**entry, "known": known})
        return found

    def _warn_leaks(self) -> None:
        for leak in self.leaks():
            if leak["known"]:
                log.info("data: known leak %(feature)r -> %(task)s: train %(metric)s %(score).4f", leak)
            else:
                warnings.warn(
                    f"data: feature {leak['feature']!r} alone predicts task {leak['task']!r} "
                    f"(train {leak['metric']} {leak['score']:.4f} >= {self.leak_auc_threshold}); a label leak? "
                    f"Drop it, or list it under known_leaks in {self.schema.source}",
                    LeakWarning,
                    stacklevel=3,
                )

    def describe(self) -> dict[str, Any]:
        summary = super().describe()
        features = self.feature_spec() if self.meta else None
        summary.update(
            {
                "files": self.meta.get("files", {}),
                "schema": self.schema.source,
                "features": None
                if features is None
                else {
                    "numeric": features.num_numeric,
                    "categorical": len(features.categorical),
                    "input_dim": features.input_dim,
                },
                "excluded_as_labels": self.excluded_as_labels,
                "dropped": self.dropped,
                "known_leaks": dict(self.schema.known_leaks),
                "leaks": self.leaks(),
                "cache": self.meta.get("cache", {}),
            }
        )
        return summary


def _stack(columns: list[np.ndarray], rows: int, dtype: type) -> np.ndarray:
    if not columns:
        return np.zeros((rows, 0), dtype)
    return np.stack(columns, axis=1).astype(dtype, copy=False)
