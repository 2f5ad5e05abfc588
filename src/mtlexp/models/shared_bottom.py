"""Shared-bottom: hard parameter sharing (Caruana, 1993): one bottom network feeds every task tower."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mtlexp.errors import require
from mtlexp.models.base import MTLModel, MTLOutput
from mtlexp.models.blocks import MLP
from mtlexp.specs import FeatureSpec, TaskSpec


class SharedBottom(MTLModel):
    """One shared bottom MLP, then a tower per task.

    :param bottom_hidden: hidden widths of the shared bottom.
    :param tower_hidden: hidden widths of every task tower.
    """

    carries_replicas = True

    def __init__(
        self,
        features: FeatureSpec,
        tasks: Sequence[TaskSpec],
        bottom_hidden: Sequence[int] = (113,),
        tower_hidden: Sequence[int] = (8,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(features, tasks, tower_hidden, dropout)
        require(len(bottom_hidden) >= 1, "bottom_hidden", "at least one layer width", list(bottom_hidden))
        self.bottom = MLP(self.input.output_dim, bottom_hidden, dropout)
        self.towers = self.build_towers(self.bottom.output_dim)

    def last_shared_layer(self) -> list[nn.Parameter]:
        return list([m for m in self.bottom if isinstance(m, nn.Linear)][-1].parameters())

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        h = self.bottom(self.input(numeric, categorical))  # (B, H)
        return MTLOutput(self.towers({name: h for name in self.task_names}))
