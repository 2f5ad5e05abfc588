"""Dual-balancing multi-task learning (Lin et al., 2023: DB-MTL)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlexp.errors import require
from mtlexp.specs import TaskSpec
from mtlexp.weighting.base import StepInputs
from mtlexp.weighting.gradients import SharedGradientWeighting


class DualBalancing(SharedGradientWeighting):
    """Balances the tasks twice: in loss scale, by training on ``log L_t`` (whose gradient does not change
    when a loss is multiplied by a constant), and in gradient magnitude, by rescaling every task's gradient
    on the shared parameters to the norm of the largest before summing them.

    The gradients rescaled are an exponential moving average of the log-losses' gradients,
    ``m <- g + beta / k^beta_sigma (m - g)`` at step ``k``; the recorded weights are the rescaling factors.

    :param beta: the average's memory, in [0, 1) (0.9; 0: this step's gradients only).
    :param beta_sigma: the decay of ``beta`` with the step, >= 0 (0: constant).
    """

    lazy_buffers = ("memory",)

    def __init__(self, tasks: Sequence[TaskSpec], beta: float = 0.9, beta_sigma: float = 0.0, seed: int = 0) -> None:
        super().__init__(tasks, seed)
        require(0 <= beta < 1, "beta", "a number in [0, 1)", beta)
        require(beta_sigma >= 0, "beta_sigma", "a number >= 0", beta_sigma)
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.register_buffer("memory", torch.zeros(0))

    def objectives(self, losses: Tensor) -> Tensor:
        return (losses + 1e-8).log()

    def direction(self, jacobian: Tensor, inputs: StepInputs) -> tuple[Tensor, Tensor]:
        if self.memory.shape != jacobian.shape:
            self.memory = torch.zeros_like(jacobian)
        rate = self.beta / (inputs.step + 1) ** self.beta_sigma
        self.memory.copy_(jacobian + rate * (self.memory - jacobian))
        norms = self.memory.norm(dim=1)
        scales = norms.max() / (norms + 1e-8)
        return scales @ self.memory, scales
