"""Uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlexp.specs import TaskSpec
from mtlexp.weighting.base import LossWeighting, StepInputs


class UncertaintyWeighting(LossWeighting):
    """``sum_t L_t / (2 sigma_t^2) + log sigma_t`` with learned homoscedastic variances.

    The parameters are ``log_variance = log sigma^2`` (stable, unconstrained), initialised at 0, and are
    optimised with the model; the weight of task t is ``1 / (2 sigma_t^2)``, 0.5 at the start.
    """

    # Stacked, each replica keeps its own log-variances, trained with its slice of the stacked model.
    stack_refusal = None

    def __init__(self, tasks: Sequence[TaskSpec], seed: int = 0) -> None:
        super().__init__(tasks, seed)
        self.log_variance = nn.Parameter(torch.zeros(self.num_tasks))

    def weights(self, inputs: StepInputs) -> Tensor:
        return 0.5 * torch.exp(-self.log_variance)

    def regularizer(self) -> Tensor:
        return 0.5 * self.log_variance.sum()  # log sigma = log(sigma^2) / 2
