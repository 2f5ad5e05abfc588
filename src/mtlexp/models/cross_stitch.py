"""Cross-stitch networks (Misra et al., CVPR 2016, "Cross-stitch Networks for Multi-task Learning").

One column per task (the single-task networks, held as one expert bank with an expert per task); after every
layer a learned T x T cross-stitch unit mixes the columns' activations: column t continues with
``sum_s A[t, s] h_s``. The units start near the identity (``stitch_init`` on the diagonal, the rest spread
evenly), so training starts close to independent networks and learns how much to share.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlexp.errors import require
from mtlexp.models.base import MTLModel, MTLOutput, Owner
from mtlexp.models.blocks import ExpertBank, TaskInputs
from mtlexp.specs import FeatureSpec, TaskSpec


class CrossStitch(MTLModel):
    """Task columns joined by cross-stitch units after every layer.

    :param column_hidden: hidden widths of every task's column.
    :param tower_hidden: hidden widths of every task tower, on top of its column.
    :param stitch_init: initial weight a column gives itself (1.0: exactly independent columns).
    """

    carries_replicas = True

    def __init__(
        self,
        features: FeatureSpec,
        tasks: Sequence[TaskSpec],
        column_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (8,),
        dropout: float = 0.0,
        stitch_init: float = 0.9,
    ) -> None:
        super().__init__(features, tasks, tower_hidden, dropout)
        require(0.0 <= stitch_init <= 1.0, "stitch_init", "a number in [0, 1]", stitch_init)
        num_tasks = len(tasks)
        self.input = TaskInputs(features, num_tasks)
        self.columns = ExpertBank(features.input_dim, num_tasks, column_hidden, dropout)
        other = (1.0 - stitch_init) / (num_tasks - 1) if num_tasks > 1 else 0.0
        unit = torch.full((num_tasks, num_tasks), other).fill_diagonal_(stitch_init)
        self.stitches = nn.ParameterList(nn.Parameter(unit.clone()) for _ in range(self.columns.num_layers))
        self.towers = self.build_towers(self.columns.output_dim)

    def declare_ownership(self) -> dict[str, Owner]:
        owners = super().declare_ownership()
        # Row t of the last unit makes column t's output, which only task t's tower reads; every earlier
        # unit's rows reach all tasks through the units after them.
        owners.update(self.sliced_by_task(f"stitches.{len(self.stitches) - 1}"))
        return owners

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        h = self.input(numeric, categorical)  # (T, B, D)
        for index, unit in enumerate(self.stitches):
            h = torch.einsum("...ts,...sbh->...tbh", unit, self.columns.layer(h, index))  # (T, B, H)
        return MTLOutput(self.towers({name: h[..., t, :, :] for t, name in enumerate(self.task_names)}))

    def diagnostics(self) -> dict[str, Tensor]:
        return {f"stitch_{index}": unit.detach() for index, unit in enumerate(self.stitches)}
