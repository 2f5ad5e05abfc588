"""Single-task baseline: one independent network per task, trained side by side (no sharing at all).

The per-task bottoms are held as one expert bank with one expert per task, so T networks cost one
batched op; each task reads only its own expert.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from mtlexp.data.features import FeatureSpec
from mtlexp.models.base import MTLModel, MTLOutput
from mtlexp.models.blocks import ExpertBank, InputBlock
from mtlexp.tasks import TaskSpec


class SingleTask(MTLModel):
    """Independent networks per task.

    :param bottom_hidden: hidden widths of each task's own bottom network.
    :param tower_hidden: hidden widths of each task's tower on top of its bottom.
    """

    def __init__(
        self,
        features: FeatureSpec,
        tasks: Sequence[TaskSpec],
        bottom_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (8,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(features, tasks, tower_hidden, dropout)
        # Embeddings are parameters too: each task gets its own, or the baseline would share them.
        self.input = nn.ModuleList(InputBlock(features) for _ in tasks)
        self.bottoms = ExpertBank(features.input_dim, len(tasks), bottom_hidden, dropout)
        self.towers = self.build_towers(self.bottoms.output_dim)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        # The task's own bottom is a slice of the stacked bank, not a parameter of its own.
        yield from self.input[self.task_names.index(task)].parameters()
        yield from self.towers.towers[task].parameters()

    def shared_parameters(self) -> list[nn.Parameter]:
        """None: no parameter receives gradient from more than one task."""
        return []

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        x = torch.stack([block(numeric, categorical) for block in self.input])  # (T, B, D)
        h = self.bottoms(x)  # (B, T, H)
        return MTLOutput(self.towers({name: h[:, t] for t, name in enumerate(self.task_names)}))
