"""Random gradient weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

from torch import Tensor

from mtlexp.weighting.base import StepInputs
from mtlexp.weighting.gradients import SharedGradientWeighting


class RandomGradientWeighting(SharedGradientWeighting):
    """RLW's random weights (``softmax`` of a standard normal draw, every step) applied to the task gradients
    on the shared parameters only: each task's own parameters keep their task's full gradient, where RLW
    scales them too.

    Draws come from a generator seeded by (run seed, step), as RLW's.
    """

    def direction(self, jacobian: Tensor, inputs: StepInputs) -> tuple[Tensor, Tensor]:
        weights = self.random_weights(inputs.step).to(jacobian)
        return weights @ jacobian, weights
