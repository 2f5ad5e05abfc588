"""Geometric loss strategy (Chennupati et al., CVPR 2019 workshops: MultiNet++)."""

from __future__ import annotations

from torch import Tensor

from mtlexp.weighting.base import LossScalarization, StepInputs


class GeometricLossStrategy(LossScalarization):
    """The geometric mean of the task losses, ``(prod_t L_t)^(1/T)``.

    Its weight on task t is ``GM / (T L_t)``: a task's gradient counts in inverse proportion to its loss, so a
    loss on a large scale (a regression MSE next to a cross-entropy) no longer dominates.
    """

    def scalarize(self, losses: Tensor, inputs: StepInputs) -> Tensor:
        # exp(mean(log)) rather than prod ** (1/T): the product of many small losses underflows.
        return losses.clamp_min(1e-12).log().mean().exp()
