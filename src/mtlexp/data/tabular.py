"""A schema-driven tabular data module: CSV (plain or .gz) or Parquet files in, cached tensor splits out.

A YAML schema (``schema.py``; format reference: docs/data.md) says how to read the files and what every column
is. ``readers.py`` parses the files, ``preprocessing.py`` turns them into arrays (fitted on the training split
only), and ``cache.py`` stores the arrays: a later run memory-maps them instead of parsing again.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlexp.data.base import SPLITS, MTLDataModule
from mtlexp.data.cache import CorruptEntry, entry_key, is_complete, read_cache_entry, write_cache_entry
from mtlexp.specs import CategoricalFeature, FeatureSpec, INFER_CLASSES, TaskSpec
from mtlexp.tasks import check_relations
from mtlexp.data.preprocessing import (
    LeakWarning,
    TableTransform,
    carve_splits,
    check_finite,
    fit_standardise,
    leak_scores,
    multiclass_names,
    seen_values,
)
from mtlexp.data.readers import file_columns, is_parquet, read_table
from mtlexp.data.schema import auto_embedding_dim, did_you_mean, load_schema, task_spec
from mtlexp.data.streaming import (
    SplitSource,
    StreamingEvalLoader,
    StreamingTrainLoader,
    StreamSpec,
    available_memory,
    carve_plan,
    check_streamable,
    fit_stream,
    in_memory_bytes,
    read_meta,
    row_groups,
    stream_fingerprint,
    transform_of,
)
from mtlexp.data.tensors import TensorTable
from mtlexp.errors import MtlexpError, require
from mtlexp.kinds import kind_of

log = logging.getLogger(__name__)


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
    :param streaming: ``true``: stream Parquet row groups instead of loading the table (``streaming.py``);
        ``auto``: stream when the in-memory path would need more than half the memory available; ``false``.
    :param stream_window: row groups read and shuffled together when streaming.
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
        streaming: bool | str = "auto",
        stream_window: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(tasks, batch_size, eval_batch_size, chunk_steps, seed)
        require(streaming in (True, False, "auto"), "streaming", "true, false or 'auto'", streaming)
        require(isinstance(stream_window, int) and stream_window >= 1, "stream_window", "an integer >= 1",
                stream_window)
        self.streaming = streaming
        self.stream_window = stream_window
        self.table: TableSource | None = None
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
            self.tasks = check_relations([task_spec(name, node, self.schema.source)
                                          for name, node in self.schema.tasks.items()])
        # A label column defaults to the task's name; a derived task (product) has none.
        self.tasks = [dataclasses.replace(t, column=t.column or (None if t.derived else t.name)) for t in self.tasks]
        weight = self.schema.weight
        for task in self.labelled_tasks:
            if task.column == weight:
                raise MtlexpError(f"tasks.{task.name}.column: {weight!r} is the schema's weight column, not a label")
        require(
            not use_weight or weight is not None, "use_weight", "false: the schema names no weight column", use_weight
        )
        labels = {str(t.column) for t in self.labelled_tasks}
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

    @property
    def labelled_tasks(self) -> list[TaskSpec]:
        """The tasks whose labels are read from a column (derived tasks' labels are computed from them)."""
        return [t for t in self.tasks if not t.derived]

    # --- where the files are -----------------------------------------------------------------------
    def input_files(self) -> dict[str, Path]:
        """The data file of each split that has one (``train`` at least)."""
        if self.path is None:
            raise MtlexpError("data.path: expected a data file or a {train: ..., test: ...} mapping, got None")
        return self.path

    def cache_stem(self, files: Mapping[str, Path]) -> str:
        """A readable prefix for this data's cache entries."""
        return files["train"].name.split(".")[0] or "table"

    # --- the table: in memory or streamed, chosen once --------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        table = self._table_source(self.input_files())
        table.setup(stage)
        self.table = table
        self._warn_leaks()

    def _table_source(self, files: Mapping[str, Path]) -> TableSource:
        if self.streaming is True:
            check_streamable(files)
            return StreamedTable(self, files)
        if self.streaming == "auto" and all(is_parquet(p) and p.is_file() for p in files.values()):
            needed = in_memory_bytes(files, sum(len(c) for c in self.read_columns()))
            if needed > available_memory() / 2:
                log.info("data: streaming the table (about %.1f GiB in memory, more than half of what is "
                         "available; data.streaming=false loads it anyway)", needed / 2**30)
                return StreamedTable(self, files)
        return InMemoryTable(self)

    def stream_spec(self, files: Mapping[str, Path]) -> StreamSpec:
        numeric_columns, string_columns = self.read_columns()
        return StreamSpec(dict(files), self.schema, list(self.labelled_tasks), list(self.numeric_features),
                          list(self.categorical_features), numeric_columns, string_columns,
                          str(self.schema.weight) if self.use_weight else None, self.val_fraction,
                          self.test_fraction, self.val_from, self.split_seed,
                          [t for t in self.tasks if t.derived])

    def train_dataloader(self) -> Any:
        return self._ready().train_loader()

    def val_dataloader(self) -> Any:
        return self._ready().eval_loader("val")

    def test_dataloader(self) -> Any:
        return self._ready().eval_loader("test")

    def fingerprint(self) -> str:
        return self._ready().fingerprint()

    def _ready(self) -> TableSource:
        if self.table is None:
            raise MtlexpError("data: call setup() before asking for the data")
        return self.table

    # --- loading ------------------------------------------------------------------------------------
    def cache_key(self, files: Mapping[str, Path], **extra: Any) -> str:
        """A hash of everything the tensors depend on: files (path, size, mtime), schema and options."""
        options = {
            **extra,
            "schema": self.schema.content,
            "tasks": [dataclasses.asdict(t) for t in self.tasks],
            "numeric": self.numeric_features,
            "categorical": self.categorical_features,
            "split": [self.val_fraction, self.test_fraction, self.val_from, self.split_seed],
            "use_weight": self.use_weight,
        }
        return entry_key(files, options)

    def load(self) -> tuple[dict[str, TensorTable], FeatureSpec]:
        files = self.input_files()
        key = self.cache_key(files)
        entry = None
        if self.cache_dir is not None:
            entry = self.cache_dir / self.cache_name / f"{self.cache_stem(files)}-{key[:16]}"
        cached = None
        if entry is not None and is_complete(entry):
            try:
                cached = read_cache_entry(entry)
            except CorruptEntry as exc:
                warnings.warn(f"data.cache_dir: rebuilding the cache entry {entry}: {exc}", stacklevel=2)
                shutil.rmtree(entry, ignore_errors=True)
        if cached is not None:
            arrays, self.meta = cached
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
        self._fitted_tasks()
        log.info("data: %s (%s)", "cache hit" if self.cache_hit else "parsed the files", entry or "no cache")
        splits = {}
        for split in SPLITS:
            labels = {t.name: torch.from_numpy(arrays[f"{split}.label{i}"]) for i, t in enumerate(self.labelled_tasks)}
            weight = arrays.get(f"{split}.weight")
            splits[split] = TensorTable(
                numeric=torch.from_numpy(arrays[f"{split}.numeric"]),
                categorical=torch.from_numpy(arrays[f"{split}.categorical"]),
                labels=labels,
                weight=None if weight is None else torch.from_numpy(weight),
            )
        return splits, self.feature_spec()

    def _fitted_tasks(self) -> None:
        """Fill in what the task specs learn from the data: counted classes and label scaling."""
        self.tasks = [  # multiclass tasks without num_classes: the classes found in the data
            dataclasses.replace(t, num_classes=len(self.meta["classes"][t.name]))
            if kind_of(t).named_classes and t.num_classes == INFER_CLASSES else t
            for t in self.tasks
        ]
        scaling = self.meta.get("label_scaling", {})
        self.tasks = [  # standardised regression labels: metrics map predictions back to the label's units
            dataclasses.replace(t, label_shift=scaling[t.name]["mean"], label_scale=scaling[t.name]["std"])
            if t.name in scaling else t
            for t in self.tasks
        ]

    def read_columns(self) -> tuple[list[str], list[str]]:
        """The columns to parse as numbers and as strings: the features, the label columns, the weight."""
        numeric_columns = list(self.numeric_features)
        string_columns = list(self.categorical_features)
        for task in self.labelled_tasks:
            (string_columns if kind_of(task).reads_strings(task) else numeric_columns).append(str(task.column))
        if self.use_weight:
            numeric_columns.append(str(self.schema.weight))
        return list(dict.fromkeys(numeric_columns)), list(dict.fromkeys(string_columns))

    def preprocess(self, files: Mapping[str, Path]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Parse the files and build every split's arrays (fitted on train) and the metadata to cache."""
        numeric_columns, string_columns = self.read_columns()
        for path in files.values():
            self._check_columns(path)
        parsed = {split: read_table(p, self.schema, numeric_columns, string_columns) for split, p in files.items()}
        weight = str(self.schema.weight) if self.use_weight else None
        for table in parsed.values():
            check_finite(table, [*self.numeric_features, *filter(None, [weight])])
        tables = carve_splits(parsed, self.val_fraction, self.test_fraction, self.val_from, self.split_seed)
        train = tables["train"]
        classes = {t.name: multiclass_names(t, [tables[s] for s in SPLITS]) for t in self.labelled_tasks
                   if kind_of(t).named_classes}
        label_scaling = {}
        for task in self.labelled_tasks:
            if task.standardize:  # with the training split's mean and sd, like the numeric features
                mean, std = fit_standardise(TableTransform([task], {}, {}, classes).labels(train)["label0"])
                label_scaling[task.name] = {"mean": mean, "std": std}
        transform = TableTransform(
            tasks=self.labelled_tasks,
            numeric={name: fit_standardise(train.numeric[name]) for name in self.numeric_features},
            categories={name: {v: i + 1 for i, v in enumerate(seen_values(*train.strings[name]))}
                        for name in self.categorical_features},
            classes=classes,
            label_scaling=label_scaling,
            weight=weight,
        )
        arrays = {f"{split}.{name}": array for split in SPLITS for name, array in transform.apply(tables[split]).items()}
        stats = {
            name: {"mean": mean, "std": std, "missing_in_train": int(np.isnan(train.numeric[name]).sum())}
            for name, (mean, std) in transform.numeric.items()
        }
        meta = {
            "files": {
                split: {"path": str(path), "sha256": parsed[split].sha256, "rows": len(parsed[split])}
                for split, path in files.items()
            },
            "rows": {split: len(table) for split, table in tables.items()},
            "numeric": stats,
            "categorical": {name: len(index) + 1 for name, index in transform.categories.items()},
            "classes": classes,
            "label_scaling": label_scaling,
            "leak_scores": leak_scores({k.removeprefix("train."): v for k, v in arrays.items() if k.startswith("train.")},
                                       self.labelled_tasks, self.numeric_features, self.categorical_features),
        }
        return arrays, meta

    def _check_columns(self, path: Path) -> None:
        """Every schema column is in the file, and every file column has a role (a feature, a label, dropped)."""
        columns = file_columns(path, self.schema)
        needed = self.schema.described | {str(t.column) for t in self.labelled_tasks}
        for name in sorted(needed):
            if name not in columns:
                hint = did_you_mean(name, columns)
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
        summary = self.table.statistics() if self.table is not None else super().describe()
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


class TableSource(ABC):
    """Where a tabular module's rows live, chosen once in ``setup``: what the module asks of its rows (loaders,
    fingerprint, the summary statistics of ``describe``) never depends on which it is."""

    def __init__(self, dm: TabularDataModule) -> None:
        self.dm = dm

    @abstractmethod
    def setup(self, stage: str | None) -> None:
        """Read or fit the table: fills ``dm.meta``, ``dm.tasks``' fitted facts and ``dm.features``."""

    @abstractmethod
    def train_loader(self) -> Any:
        """The training loader (chunks of batches, shuffled per epoch, sharded under DDP)."""

    @abstractmethod
    def eval_loader(self, split: str) -> Any:
        """The loader of ``val`` or ``test``, in order."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies the data a run saw, for its provenance record."""

    @abstractmethod
    def statistics(self) -> dict[str, Any]:
        """Rows per split and the training labels' means and correlations."""


class InMemoryTable(TableSource):
    """The whole table parsed into tensors (cached): the base data module's splits, loaders and summary."""

    def setup(self, stage: str | None) -> None:
        MTLDataModule.setup(self.dm, stage)

    def train_loader(self) -> Any:
        return MTLDataModule.train_dataloader(self.dm)

    def eval_loader(self, split: str) -> Any:
        return getattr(MTLDataModule, f"{split}_dataloader")(self.dm)

    def fingerprint(self) -> str:
        return MTLDataModule.fingerprint(self.dm)

    def statistics(self) -> dict[str, Any]:
        return MTLDataModule.describe(self.dm)


class StreamedTable(TableSource):
    """Parquet row groups streamed (``streaming.py``): one cached fitting pass, then the training file's row
    groups and the carved validation and test files."""

    # Bump when the fitting pass records something new, so that older entries are refitted.
    FORMAT = 3  # 3: derived tasks in the label summary

    def __init__(self, dm: TabularDataModule, files: Mapping[str, Path]) -> None:
        super().__init__(dm)
        self.files = dict(files)
        self.parts: dict[str, SplitSource] = {}

    def setup(self, stage: str | None) -> None:
        dm, files = self.dm, self.files
        if dm.cache_dir is None:
            raise MtlexpError("data.cache_dir: streaming needs a cache folder (for its statistics and the "
                              "validation and test rows), got null")
        for path in files.values():
            dm._check_columns(path)
        key = dm.cache_key(files, stream_format=self.FORMAT)
        entry = dm.cache_dir / "tabular-stream" / f"{dm.cache_stem(files)}-{key[:16]}"
        meta = read_meta(entry) if (entry / "meta.json").is_file() else None
        dm.cache_hit = meta is not None
        if meta is None:
            if entry.exists():
                warnings.warn(f"data.cache_dir: refitting the damaged streaming entry {entry}", stacklevel=3)
                shutil.rmtree(entry, ignore_errors=True)
            log.info("data: fitting the preprocessing in one pass over %s", ", ".join(str(p) for p in files.values()))
            meta = fit_stream(dm.stream_spec(files), entry)
        dm.meta = {**meta, "cache": {"entry": str(entry), "hit": dm.cache_hit}}
        dm._fitted_tasks()
        spec = dm.stream_spec(files)
        transform = transform_of(spec, dm.meta)
        plan = carve_plan(files, dm.val_fraction, dm.test_fraction, dm.val_from)
        train = SPLITS.index("train")
        self.parts = {
            "train": SplitSource(spec, transform, files["train"], row_groups(files["train"]), train, plan["train"],
                                 train),
            **{split: SplitSource(spec, transform, entry / f"{split}.parquet", row_groups(entry / f"{split}.parquet"))
               for split in ("val", "test")},
        }
        dm.features = dm.feature_spec()
        log.info("data: streaming %s rows (train %d, val %d, test %d) from %s", f"{sum(meta['rows'].values()):,}",
                 meta["rows"]["train"], meta["rows"]["val"], meta["rows"]["test"], entry)

    def train_loader(self) -> Any:
        dm = self.dm
        rank, world = dm._rank()
        return StreamingTrainLoader(self.parts["train"], dm.meta["train_rows_per_group"], dm.batch_size,
                                    dm.chunk_steps if world == 1 else 1, dm.seed, rank, world, dm.stream_window)

    def eval_loader(self, split: str) -> Any:
        return StreamingEvalLoader(self.parts[split], self.dm.eval_batch_size, *self.dm._rank())

    def fingerprint(self) -> str:
        return stream_fingerprint(self.dm.meta)

    def statistics(self) -> dict[str, Any]:
        # the fitting pass counted what the in-memory summary reads off the tensors
        meta = self.dm.meta
        summary = {"rows": dict(meta["rows"]), "label_mean": meta["label_mean"], "streaming": True}
        if "label_pearson" in meta:
            summary["label_pearson"] = meta["label_pearson"]
        return summary
