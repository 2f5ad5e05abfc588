"""Equal weighting: the plain sum of task losses (the MMoE paper's objective)."""

from __future__ import annotations

from torch import Tensor

from mtlexp.weighting.base import Weighting, stack_losses


class EqualWeighting(Weighting):
    """Sum of the per-task losses, each with weight 1."""

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        return stack_losses(losses).sum()
