"""MoCo: multi-objective gradient correction (Fernando et al., ICLR 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlexp.errors import require
from mtlexp.specs import TaskSpec
from mtlexp.weighting.base import StepInputs, mean_across_ranks
from mtlexp.weighting.gradients import SharedGradientWeighting


class MoCo(SharedGradientWeighting):
    """MGDA-like weights from *tracked* task gradients, which removes the bias that stochastic gradients give
    MGDA's min-norm weights.

    At step ``k``, each task gradient is rescaled to the norm of its loss (``L_t g_t / ||g_t||``); the tracked
    gradients ``Y`` follow them, ``Y <- Y - beta_k (Y - G)``; the weights take a step on the min-norm
    objective, ``lambda <- softmax(lambda - gamma_k (Y Y^T + rho I) lambda)``; the update is ``Y^T lambda``.
    ``beta_k = beta / k^beta_sigma`` and ``gamma_k = gamma / k^gamma_sigma``.

    :param beta: the tracking rate (0.5), in (0, 1].
    :param beta_sigma: its decay with the step (0.5).
    :param gamma: the weights' step size (0.1).
    :param gamma_sigma: its decay with the step (0.5).
    :param rho: an L2 regularisation of the weights' objective (0).
    """

    lazy_buffers = ("tracked",)

    def __init__(self, tasks: Sequence[TaskSpec], beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1,
                 gamma_sigma: float = 0.5, rho: float = 0.0, seed: int = 0) -> None:
        super().__init__(tasks, seed)
        require(0 < beta <= 1, "beta", "a number in (0, 1]", beta)
        require(gamma > 0, "gamma", "a number > 0", gamma)
        for name, value in (("beta_sigma", beta_sigma), ("gamma_sigma", gamma_sigma), ("rho", rho)):
            require(value >= 0, name, "a number >= 0", value)
        self.beta, self.beta_sigma, self.gamma, self.gamma_sigma, self.rho = (
            float(beta), float(beta_sigma), float(gamma), float(gamma_sigma), float(rho))
        self.register_buffer("tracked", torch.zeros(0))
        self.register_buffer("lambdas", torch.full((self.num_tasks,), 1.0 / self.num_tasks))

    def direction(self, jacobian: Tensor, inputs: StepInputs) -> tuple[Tensor, Tensor]:
        k = inputs.step + 1
        losses = mean_across_ranks(inputs.losses.detach().float()).to(jacobian)
        rescaled = jacobian / (jacobian.norm(dim=1, keepdim=True) + 1e-8) * losses[:, None]
        if self.tracked.shape != jacobian.shape:
            self.tracked = torch.zeros_like(jacobian)
        self.tracked.sub_(self.beta / k ** self.beta_sigma * (self.tracked - rescaled))
        gram = self.tracked @ self.tracked.T + self.rho * torch.eye(self.num_tasks, device=jacobian.device)
        lambdas = self.lambdas.to(jacobian)
        self.lambdas.copy_(torch.softmax(lambdas - self.gamma / k ** self.gamma_sigma * gram @ lambdas, dim=0))
        applied = self.lambdas.clone()
        return applied @ self.tracked, applied
