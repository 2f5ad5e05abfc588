"""ExcessMTL: robust multi-task learning with excess risks (He, Zhou, Zhao and Zhang, ICML 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlexp.errors import require
from mtlexp.specs import TaskSpec
from mtlexp.weighting.base import LossWeighting, StepInputs, mean_across_ranks
from mtlexp.weighting.gradients import task_jacobian


class ExcessMTL(LossWeighting):
    """Loss weights that grow with each task's *excess risk* (how far its loss is from the best it can reach),
    rather than with its loss, so a task with large but irreducible noise does not take over.

    The excess risk is estimated from the task's gradient on the shared parameters, preconditioned by
    AdaGrad's running sum of its squares: ``e_t = sum g_t^2 / sqrt(sum_s g_t(s)^2)``, relative to its value at
    the first step. The weights follow exponentiated gradient ascent, ``w_t <- w_t exp(step_size e_t)``,
    normalised to sum to T (kept as log-weights, so that a long run does not overflow).

    :param step_size: the weights' step size (0.01).
    """

    lazy_buffers = ("squared_sum",)

    def __init__(self, tasks: Sequence[TaskSpec], step_size: float = 0.01, seed: int = 0) -> None:
        super().__init__(tasks, seed)
        require(step_size > 0, "step_size", "a number > 0", step_size)
        self.step_size = float(step_size)
        self.register_buffer("squared_sum", torch.zeros(0))
        self.register_buffer("initial_excess", torch.zeros(self.num_tasks))
        self.register_buffer("log_weights", torch.zeros(self.num_tasks))

    def weights(self, inputs: StepInputs) -> Tensor:
        shared = [p for p in inputs.shared if p.requires_grad]
        if shared:
            self.update(mean_across_ranks(task_jacobian(inputs.losses, shared, inputs.grad_scale)))
        return (self.num_tasks * torch.softmax(self.log_weights, dim=0)).to(inputs.losses)

    def update(self, jacobian: Tensor) -> None:
        squares = jacobian.square()
        if self.squared_sum.shape != jacobian.shape:
            self.squared_sum = torch.zeros_like(jacobian)
        self.squared_sum += squares
        excess = (squares / (self.squared_sum + 1e-7).sqrt()).sum(dim=1)
        if not bool((self.initial_excess > 0).any()):  # the first step is the reference, weights stay 1
            self.initial_excess.copy_(excess.clamp_min(1e-12))
            return
        self.log_weights += self.step_size * excess / self.initial_excess
