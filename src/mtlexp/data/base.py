"""The base data module: splits held as tensor tables, task specs, a feature spec, a data summary.

Subclasses implement ``load()`` and return the three splits; everything else (loaders, sharding, the
fingerprint for provenance) lives here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from mtlexp.data.summary import LabelMoments
from mtlexp.data.tensors import ChunkedShuffleLoader, SequentialLoader, TensorTable
from mtlexp.errors import MtlexpError, require
from mtlexp.kinds import derive_labels, kind_of, observed_rows
from mtlexp.specs import FeatureSpec, TaskSpec
from mtlexp.tasks import tasks_from_config

SPLITS = ("train", "val", "test")


class MTLDataModule(pl.LightningDataModule):
    """Base class of every mtlexp data module.

    :param tasks: the ``tasks`` config node, ``{name: {kind: ..., ...}}``; may be empty where a subclass
        fills ``self.tasks`` itself before ``setup``.
    :param batch_size: training batch size.
    :param eval_batch_size: batch size for validation and test (large: evaluation has no backward pass).
    :param chunk_steps: optimizer steps per ``training_step``: the training loader yields this many batches
        at once so per-step framework overhead is paid once per chunk.
    :param seed: seeds the training order (the run's ``seed``).
    """

    def __init__(
        self,
        tasks: Mapping[str, Any],
        batch_size: int = 128,
        eval_batch_size: int = 8192,
        chunk_steps: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        require(isinstance(batch_size, int) and batch_size >= 1, "batch_size", "an integer >= 1", batch_size)
        require(
            isinstance(eval_batch_size, int) and eval_batch_size >= 1,
            "eval_batch_size",
            "an integer >= 1",
            eval_batch_size,
        )
        require(isinstance(chunk_steps, int) and chunk_steps >= 1, "chunk_steps", "an integer >= 1", chunk_steps)
        # An empty task node lets a data set define its own tasks (a tabular schema's ``tasks:``).
        self.tasks: list[TaskSpec] = tasks_from_config(tasks) if tasks else []
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.chunk_steps = chunk_steps
        self.seed = seed
        self.splits: dict[str, TensorTable] = {}
        self.features = FeatureSpec()

    # --- what subclasses provide -------------------------------------------------------------------
    def load(self) -> tuple[dict[str, TensorTable], FeatureSpec]:
        """Return the three splits (``train``, ``val``, ``test``) and the feature spec."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Facts about the data worth recording in a run folder (sizes, label rates, label correlation)."""
        summary: dict[str, Any] = {"rows": {s: len(t) for s, t in self.splits.items()}}
        train = self.splits.get("train")
        if train is not None:
            moments = LabelMoments(self.tasks)
            moments.add({t.name: train.labels[t.name].double().numpy() for t in moments.tasks}, len(train))
            summary.update(moments.summary())
        return summary

    # --- shared machinery --------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits, self.features = self.load()
        if not self.tasks:
            raise MtlexpError("tasks: expected at least one task, got none")
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise MtlexpError(f"data: the data module produced no {missing[0]!r} split")
        for split, table in splits.items():
            derive_labels(self.tasks, table.labels)
            absent = [t.name for t in self.tasks if t.name not in table.labels]
            if absent:
                raise MtlexpError(f"tasks.{absent[0]}: no label for this task in the {split} split")
            if len(table) == 0:
                raise MtlexpError(f"data: the {split} split is empty")
            for task in self.tasks:
                check_labels(task, table.labels, split)
        self.splits = splits

    def fingerprint(self) -> str:
        """A hash of the tensors actually used (all splits), for the run's provenance record."""
        import hashlib

        digest = hashlib.sha256()
        for split in SPLITS:
            digest.update(self.splits[split].fingerprint().encode())
        return digest.hexdigest()

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> ChunkedShuffleLoader:
        rank, world = self._rank()
        # DDP syncs gradients once per forward of its wrapper, so under DDP each training_step is one step.
        chunk_steps = self.chunk_steps if world == 1 else 1
        return ChunkedShuffleLoader(self.splits["train"], self.batch_size, chunk_steps, self.seed, rank, world)

    def val_dataloader(self) -> SequentialLoader:
        return SequentialLoader(self.splits["val"], self.eval_batch_size, *self._rank())

    def test_dataloader(self) -> SequentialLoader:
        return SequentialLoader(self.splits["test"], self.eval_batch_size, *self._rank())


def check_labels(task: TaskSpec, labels: dict[str, torch.Tensor], split: str) -> None:
    """Fail clearly on labels that would train silently wrong: the kind's checks on the observed rows, and a
    label seen where it cannot be (a conversion without a click)."""
    kind_of(task).check_labels(task, labels[task.name], split, observed_rows(task, labels))
