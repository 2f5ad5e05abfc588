"""Soft parameter sharing as penalties on the corresponding weights of per-task networks.

A penalty takes a list of stacked weights, each ``(T, a, b)`` with task t's copy of one layer at index t, and
returns ``weight * value``. With a replica dimension the weights are ``(R, T, a, b)`` and the value ``(R,)``,
each replica's own. ``SingleTask(penalty=...)`` adds it to the model's auxiliary loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlexp.errors import require


class Penalty:
    """Base: ``weight`` times the penalty summed over the layers."""

    def __init__(self, weight: float) -> None:
        require(isinstance(weight, (int, float)) and weight >= 0, "penalty.weight", "a number >= 0", weight)
        self.weight = float(weight)

    def value(self, stacked: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, layers: Sequence[Tensor]) -> Tensor:
        return self.weight * torch.stack([self.value(w) for w in layers]).sum(0)


class L2Distance(Penalty):
    """Sum over task pairs of squared Euclidean distances between corresponding weights (Duong et al., ACL
    2015, "Low Resource Dependency Parsing: Cross-lingual Parameter Sharing in a Neural Network Parser").

    Computed as ``T * sum_t ||W_t - mean_t W||^2``, which equals ``sum_{t<s} ||W_t - W_s||^2``."""

    def value(self, stacked: Tensor) -> Tensor:
        return stacked.shape[-3] * (stacked - stacked.mean(-3, keepdim=True)).pow(2).flatten(-3).sum(-1)


class TraceNorm(Penalty):
    """Trace (nuclear) norm of the weights stacked over tasks (Yang & Hospedales, ICLR-W 2017, "Trace Norm
    Regularised Deep Multi-Task Learning"), in its last-axis-flattening form: task t's layer flattened into
    row t of a (T, N) matrix, penalised by the sum of its singular values (low rank = shared structure)."""

    def value(self, stacked: Tensor) -> Tensor:
        return torch.linalg.svdvals(stacked.flatten(-2).float()).sum(-1)
