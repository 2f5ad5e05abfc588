"""MoDo: multi-objective gradient with double sampling (Chen, Fernando, Ying and Chen, NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mtlexp.errors import require
from mtlexp.specs import TaskSpec
from mtlexp.weighting.gradients import DoubleSampling, project_to_simplex


class MoDo(DoubleSampling):
    """Weights on the simplex that descend the min-norm objective ``|G^T lambda|^2 / 2`` with an unbiased
    two-sample estimate of its gradient: ``lambda <- proj(lambda - gamma (G_1 G_2^T lambda + rho lambda))``;
    the update is ``G_3^T lambda`` (``DoubleSampling`` says which Jacobians play G_1, G_2 and G_3 here).

    :param gamma: the weights' step size (1e-3).
    :param rho: an L2 regularisation of the weights (0.1), which keeps them from collapsing on one task.
    """

    def __init__(self, tasks: Sequence[TaskSpec], gamma: float = 1e-3, rho: float = 0.1, seed: int = 0) -> None:
        super().__init__(tasks, seed)
        require(gamma > 0, "gamma", "a number > 0", gamma)
        require(rho >= 0, "rho", "a number >= 0", rho)
        self.gamma, self.rho = float(gamma), float(rho)

    def update_weights(self, gram: Tensor) -> Tensor:
        weights = self.task_weights.to(gram)
        return project_to_simplex(weights - self.gamma * (gram @ weights + self.rho * weights))
