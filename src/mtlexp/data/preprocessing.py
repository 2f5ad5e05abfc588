"""Preprocessing of parsed tables, fitted on the training split only.

Splits without a file of their own are carved out of another file; labels are extracted per task; numeric
features are standardised (a missing value becomes the training mean, i.e. 0 after standardising); categorical
values are indexed 1..V in sorted order (0 = unseen in training or missing). Every feature is also scored
alone against every label, to catch label leaks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mtlexp.data.readers import ParsedTable
from mtlexp.errors import MtlexpError
from mtlexp.kinds import kind_of
from mtlexp.specs import TaskSpec


class LeakWarning(UserWarning):
    """A single feature predicts a label almost perfectly on the training split."""


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


def task_labels(task: TaskSpec, table: ParsedTable, classes: Sequence[str], whole_file: bool = True) -> np.ndarray:
    """The label of ``task`` for every row: float32 (regression, binary 0/1) or int64 class indices.

    ``whole_file``: ``table`` is a whole file, so a ``positive`` list that matches none of its values is an
    error here (a streamed part of a file may hold no positive row; the stream checks the whole file).
    """
    column, kind = str(task.column), kind_of(task)
    if kind.reads_strings(task):
        codes, values = table.strings[column]
        missing = codes < 0
        labels = kind.labels_from_strings(task, codes, values, classes, f"column {column!r} in {table.path}",
                                          whole_file)
    else:
        values = table.numeric[column]
        missing = np.isnan(values)
        labels = kind.labels_from_numbers(task, values)
    if missing.any():
        raise MtlexpError(
            f"{table.path}: column {column!r} (task {task.name}): {int(missing.sum())} missing label value(s), "
            f"first at {table.locate(int(np.flatnonzero(missing)[0]))}; labels must not be missing"
        )
    return labels


def multiclass_names(task: TaskSpec, tables: Sequence[ParsedTable]) -> list[str]:
    """Class names in index order of a multiclass task, from the values its column holds in ``tables``."""
    return class_names(str(v) for t in tables for v in t.strings[str(task.column)][1])


def class_names(values: Iterable[str]) -> list[str]:
    """The integers 0..K-1 when every value is an integer (K - 1 the largest), else the sorted values."""
    seen = sorted(set(values))
    if seen and all(v.lstrip("-").isdigit() for v in seen):
        return [str(i) for i in range(max(int(v) for v in seen) + 1)]
    return seen


def check_finite(table: ParsedTable, columns: Iterable[str]) -> None:
    """Fail on the first row (in file order) with an infinite value in one of the numeric ``columns``.

    NaN reads as a missing value (standardised to the training mean); an infinity has no such reading, and
    left in it would surface only epochs later as a diverged loss, far from its cause.
    """
    first: tuple[int, str] | None = None
    for name in columns:
        bad = np.flatnonzero(np.isinf(table.numeric[name]))
        if bad.size and (first is None or bad[0] < first[0]):
            first = (int(bad[0]), name)
    if first is not None:
        position, name = first
        raise MtlexpError(f"{table.path}: {table.locate(position)}: column {name!r}: expected a finite number, "
                          f"got {table.numeric[name][position]}")


def fit_standardise(train: np.ndarray) -> tuple[float, float]:
    """The training mean and std of a numeric column, over its finite values: NaN is a missing value, and an
    infinite label must not turn every standardised label into NaN before the label check counts it."""
    observed = train[np.isfinite(train)]
    mean = float(observed.mean()) if observed.size else 0.0
    std = float(observed.std()) if observed.size else 1.0
    return mean, std if std > 0 else 1.0


def apply_standardise(values: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``(x - mean) / std`` as float32, a missing value (NaN) as 0 (the training mean)."""
    return np.nan_to_num((values - mean) / std, nan=0.0).astype(np.float32)


def seen_values(codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The distinct values that rows actually hold (sorted), of a ``(codes, values)`` string column."""
    return np.unique(values[np.unique(codes[codes >= 0])])


def apply_categories(codes: np.ndarray, values: np.ndarray, index: Mapping[str, int]) -> np.ndarray:
    """Each row's index in ``index`` (value -> 1..V); 0 for a value not in it or missing (code -1)."""
    lookup = np.array([index.get(v, 0) for v in values] + [0], dtype=np.int64)
    return lookup[codes]


@dataclass
class TableTransform:
    """Everything fitted on the training split that turns a parsed table into model inputs, so that the
    in-memory path and the streaming path (``streaming.py``) apply exactly the same preprocessing.

    :param numeric: ``name -> (mean, std)`` of each numeric feature, in feature order.
    :param categories: ``name -> {value: index 1..V}`` of each categorical feature, in feature order.
    :param classes: class names in index order of each multiclass task.
    :param label_scaling: ``task -> {"mean", "std"}`` of each standardised regression task.
    :param weight: the weight column passed on as per-row weight, or None.
    """

    tasks: Sequence[TaskSpec]
    numeric: dict[str, tuple[float, float]]
    categories: dict[str, dict[str, int]]
    classes: dict[str, list[str]] = field(default_factory=dict)
    label_scaling: dict[str, dict[str, float]] = field(default_factory=dict)
    weight: str | None = None

    def labels(self, table: ParsedTable, whole_file: bool = True) -> dict[str, np.ndarray]:
        """``label<i>`` of every task, standardised where the task asks for it."""
        out = {}
        for i, task in enumerate(self.tasks):
            labels = task_labels(task, table, self.classes.get(task.name, ()), whole_file)
            if task.name in self.label_scaling:
                scaling = self.label_scaling[task.name]
                labels = ((labels - scaling["mean"]) / scaling["std"]).astype(np.float32)
            out[f"label{i}"] = labels
        return out

    def apply(self, table: ParsedTable, whole_file: bool = True) -> dict[str, np.ndarray]:
        """``numeric``, ``categorical``, ``label<i>`` and (with a weight column) ``weight`` arrays of a table."""
        arrays = self.labels(table, whole_file)
        if self.weight is not None:
            weight = table.numeric[self.weight]
            if np.isnan(weight).any():
                raise MtlexpError(
                    f"{table.path}: column {self.weight!r} (the weight): {int(np.isnan(weight).sum())} "
                    "missing value(s); weights must not be missing"
                )
            arrays["weight"] = weight.astype(np.float32)
        numeric = [apply_standardise(table.numeric[name], *stats) for name, stats in self.numeric.items()]
        categorical = [apply_categories(*table.strings[name], index) for name, index in self.categories.items()]
        arrays["numeric"] = stack_columns(numeric, len(table), np.float32)
        arrays["categorical"] = stack_columns(categorical, len(table), np.int64)
        return arrays


def stack_columns(columns: list[np.ndarray], rows: int, dtype: type) -> np.ndarray:
    """Columns side by side as one (rows, len(columns)) array; (rows, 0) when there are none."""
    if not columns:
        return np.zeros((rows, 0), dtype)
    return np.stack(columns, axis=1).astype(dtype, copy=False)


def single_feature_score(
    feature: np.ndarray, categorical: bool, task: TaskSpec, labels: np.ndarray
) -> tuple[str, float] | None:
    """How well one feature alone predicts a label on the training split, as the task's kind measures it
    (``TaskKind.leak_score``: AUC for binary, R^2 for quantities; None when the kind is not scanned).

    A categorical feature is scored by its per-category label mean, fitted on one half of the rows and
    applied to the other (two-fold), so that an ID-like column with one row per value is not mistaken for a
    leak. A numeric feature is scored as it is, either way up.
    """
    if len(labels) < 2 or not np.isfinite(labels).all():
        return None  # non-finite labels fail the run after the scan
    y = labels.astype(np.float64)
    if not categorical:
        return kind_of(task).leak_score(task, feature, y, fitted=False)
    fold = np.arange(len(y)) % 2
    size = int(feature.max()) + 1
    groups = fold * size + feature  # (fold, category) as one index
    count = np.bincount(groups, minlength=2 * size).reshape(2, size)
    total = np.bincount(groups, y, 2 * size).reshape(2, size)
    overall = y.mean()
    # the mean of each category in the *other* fold (the overall mean where the other fold never saw it)
    other_mean = np.where(count[::-1] > 0, total[::-1] / np.maximum(count[::-1], 1), overall).reshape(-1)
    return kind_of(task).leak_score(task, other_mean[groups], y, fitted=True)


def leak_scores(arrays: Mapping[str, np.ndarray], tasks: Sequence[TaskSpec], numeric: Sequence[str],
                categorical: Sequence[str]) -> list[dict[str, object]]:
    """Every feature alone scored against every label (``single_feature_score``) on preprocessed training rows:
    ``arrays`` as ``TableTransform.apply`` gives them, whole (in memory) or a sample of them (streamed)."""
    columns = [(n, arrays["numeric"][:, j], False) for j, n in enumerate(numeric)]
    columns += [(n, arrays["categorical"][:, j], True) for j, n in enumerate(categorical)]
    scores: list[dict[str, object]] = []
    for name, column, is_categorical in columns:
        for i, task in enumerate(tasks):
            score = single_feature_score(column, is_categorical, task, arrays[f"label{i}"])
            if score is not None:
                scores.append({"feature": name, "task": task.name, "metric": score[0], "score": round(score[1], 4)})
    return scores
