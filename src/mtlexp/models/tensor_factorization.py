"""Deep multi-task representation learning by tensor factorisation (Yang & Hospedales, ICLR 2017, DMTRL),
Tucker form: the MMoE paper's tensor-factorization baseline.

Every task has its own network, but each layer's weights for all tasks, a (D_in, D_out, T) tensor, are
generated from one Tucker factorisation: a core ``S`` (r, r, T) and factor matrices ``U_in`` (D_in, r),
``U_out`` (D_out, r), ``U_task`` (T, T), i.e. ``W_t = sum_p U_task[t, p] * U_in S_p U_out^T``. The input and
output modes are compressed to rank ``rank``; the task mode is kept at full rank. The factors start
orthogonal and ``U_task`` at the identity, with the core scaled so each ``W_t`` starts with the variance of
an ``nn.Linear`` initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlexp.errors import require
from mtlexp.models.base import MTLModel, MTLOutput, Owner
from mtlexp.models.blocks import TaskInputs, _check_sizes, batched_linear
from mtlexp.specs import FeatureSpec, TaskSpec


class TuckerLayer(nn.Module):
    """T per-task linear layers whose weights come from one Tucker factorisation: (T, B, D_in) -> (T, B, D_out)."""

    carries_replicas = True

    def __init__(self, input_dim: int, output_dim: int, num_tasks: int, rank: int) -> None:
        super().__init__()
        r_in, r_out = min(rank, input_dim), min(rank, output_dim)
        self.in_factor = nn.Parameter(nn.init.orthogonal_(torch.empty(input_dim, r_in)))
        self.out_factor = nn.Parameter(nn.init.orthogonal_(torch.empty(output_dim, r_out)))
        self.task_factor = nn.Parameter(torch.eye(num_tasks))
        # var(W_ij) ~ var(S) * (r_in / D_in) * (r_out / D_out); nn.Linear's is 1 / (3 D_in).
        std = math.sqrt(output_dim / (3.0 * r_in * r_out))
        self.core = nn.Parameter(torch.randn(r_in, r_out, num_tasks) * std)
        bound = 1.0 / math.sqrt(input_dim)
        self.bias = nn.Parameter(torch.empty(num_tasks, 1, output_dim).uniform_(-bound, bound))

    def weight(self) -> Tensor:
        """The per-task weights, (T, D_in, D_out)."""
        per_task = torch.einsum("...tp,...rqp->...trq", self.task_factor, self.core)  # (T, r_in, r_out)
        # (T, D_in, D_out); the factors get a task dimension of 1, so a leading replica dimension lines up.
        return self.in_factor.unsqueeze(-3) @ per_task @ self.out_factor.transpose(-1, -2).unsqueeze(-3)

    def forward(self, h: Tensor) -> Tensor:
        return batched_linear(h, self.weight(), self.bias)


class TensorFactorization(MTLModel):
    """Per-task networks whose layers are generated from shared Tucker factors.

    :param bottom_hidden: hidden widths of each task's network.
    :param tower_hidden: hidden widths of every task tower, on top of its network.
    :param rank: Tucker rank of the input and output modes of every layer (capped at the layer's widths).
    """

    carries_replicas = True

    def __init__(
        self,
        features: FeatureSpec,
        tasks: Sequence[TaskSpec],
        bottom_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (8,),
        dropout: float = 0.0,
        rank: int = 16,
    ) -> None:
        super().__init__(features, tasks, tower_hidden, dropout)
        widths = [features.input_dim, *_check_sizes("bottom_hidden", bottom_hidden)]
        require(len(widths) >= 2, "bottom_hidden", "at least one layer width", list(bottom_hidden))
        require(isinstance(rank, int) and rank >= 1, "rank", "an integer >= 1", rank)
        self.input = TaskInputs(features, len(tasks))
        self.layers = nn.ModuleList(
            TuckerLayer(fan_in, fan_out, len(tasks), rank) for fan_in, fan_out in zip(widths[:-1], widths[1:])
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.towers = self.build_towers(widths[-1])

    def declare_ownership(self) -> dict[str, Owner]:
        owners = super().declare_ownership()
        owners.update(self.indexed_by_task("input"))  # each task's own embeddings
        for index in range(len(self.layers)):
            # W_t reads row t of the task factor and its own bias only; the core and U_in/U_out are shared.
            owners.update(self.sliced_by_task(f"layers.{index}.task_factor"))
            owners.update(self.sliced_by_task(f"layers.{index}.bias"))
        return owners

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        h = self.input(numeric, categorical)  # (T, B, D)
        for layer in self.layers:
            h = self.dropout(torch.relu(layer(h)))  # (T, B, H)
        return MTLOutput(self.towers({name: h[..., t, :, :] for t, name in enumerate(self.task_names)}))
