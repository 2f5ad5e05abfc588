"""Equal weighting: the plain sum of task losses (the MMoE paper's objective)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlexp.specs import TaskSpec
from mtlexp.weighting.base import LossWeighting, StepInputs, StepResult


class EqualWeighting(LossWeighting):
    """Sum of the per-task losses, each with weight 1."""

    stack_refusal = None

    def __init__(self, tasks: Sequence[TaskSpec], seed: int = 0) -> None:
        super().__init__(tasks, seed)
        self.register_buffer("ones", torch.ones(self.num_tasks), persistent=False)

    def weights(self, inputs: StepInputs) -> Tensor:
        return self.ones

    def fixed_weights(self) -> Tensor:
        return self.ones

    def step(self, inputs: StepInputs) -> StepResult:
        # The sum itself rather than ones * losses: the same values bit for bit, one kernel fewer per step.
        loss = inputs.objective(inputs.losses.sum())
        inputs.backward(loss)
        return StepResult(loss.detach(), self.ones)
