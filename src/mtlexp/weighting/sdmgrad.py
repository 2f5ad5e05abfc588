"""SDMGrad: stochastic direction-oriented multi-objective gradient descent (Xiao, Ban and Ji, NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlexp.errors import require
from mtlexp.specs import TaskSpec
from mtlexp.weighting.gradients import DoubleSampling, project_to_simplex

# The inner solver of the authors' code: SGD with momentum on the simplex weights, warm-started every step.
_INNER_LR, _INNER_MOMENTUM = 5.0, 0.5


class SDMGrad(DoubleSampling):
    """MGDA's min-norm direction pulled towards the mean gradient ``g0``: the weights minimise
    ``|G^T w + lam g0|^2 / 2`` on the simplex (``num_iters`` projected momentum-SGD steps on the two-sample
    product, normalised by its mean diagonal), and the update is ``(G^T w + lam g0) / (1 + lam)``, i.e. the
    task weights ``(w + lam / T) / (1 + lam)``, which sum to 1.

    :param lam: the pull towards the mean gradient (0.3); 0 is stochastic MGDA, a large value the mean.
    :param num_iters: the inner solver's steps per optimizer step (20).
    """

    def __init__(self, tasks: Sequence[TaskSpec], lam: float = 0.3, num_iters: int = 20, seed: int = 0) -> None:
        super().__init__(tasks, seed)
        require(lam >= 0, "lam", "a number >= 0", lam)
        require(isinstance(num_iters, int) and num_iters >= 1, "num_iters", "an integer >= 1", num_iters)
        self.lam, self.num_iters = float(lam), num_iters

    def update_weights(self, gram: Tensor) -> Tensor:
        scale = gram.diagonal().clamp_min(0).sqrt().mean() ** 2
        if not bool(scale > 1e-12):
            # The two-sample product is not a Gram matrix: where the two batches' task gradients point apart its
            # diagonal is <= 0, and dividing by ~1e-8 sent the inner solver to inf (NaN weights, seen on
            # shared-bottom). Its largest entry then sets the scale instead.
            scale = gram.abs().max().clamp_min(1e-12)
        gram = gram / scale
        pull = self.lam * gram.mean(dim=1)
        weights = self.task_weights.to(gram)
        velocity = torch.zeros_like(weights)
        for _ in range(self.num_iters):
            velocity = _INNER_MOMENTUM * velocity + gram @ weights + pull
            weights = project_to_simplex(weights - _INNER_LR * velocity)
        return weights

    def combine(self, jacobian: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        effective = (weights + self.lam / self.num_tasks) / (1 + self.lam)
        return effective @ jacobian, effective
