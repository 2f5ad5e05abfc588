"""Building blocks shared by every architecture: input block, MLP, expert bank, task towers (gates: ``gates``).

Shapes use B = batch, E = experts, G = gates, D = feature width, T = tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlexp.errors import require
from mtlexp.specs import FeatureSpec, TaskSpec
from mtlexp.tasks import output_dim


def _check_sizes(field: str, sizes: Sequence[int]) -> list[int]:
    sizes = list(sizes)
    require(all(isinstance(s, int) and s >= 1 for s in sizes), field, "a list of integers >= 1", sizes)
    return sizes


class InputBlock(nn.Module):
    """Numeric columns as they are, categorical columns through one embedding each, concatenated: (B, D).

    Features of equal embedding width share one table (with per-feature row offsets), so a data set with
    dozens of categorical columns costs one lookup per distinct width, not one per column.
    """

    def __init__(self, features: FeatureSpec) -> None:
        super().__init__()
        self.num_numeric = features.num_numeric
        self.output_dim = features.input_dim
        cats = features.categorical
        self.embeddings = nn.ModuleList()
        for g, width in enumerate(sorted({c.embedding_dim for c in cats})):
            members = [i for i, c in enumerate(cats) if c.embedding_dim == width]
            sizes = [cats[i].cardinality for i in members]
            offsets = [sum(sizes[:k]) for k in range(len(sizes))]
            self.embeddings.append(nn.Embedding(sum(sizes), width))
            self.register_buffer(f"columns_{g}", torch.tensor(members, dtype=torch.long), persistent=False)
            self.register_buffer(f"offsets_{g}", torch.tensor(offsets, dtype=torch.long), persistent=False)

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        parts = [numeric] if self.num_numeric else []
        for g, table in enumerate(self.embeddings):
            idx = categorical[:, getattr(self, f"columns_{g}")] + getattr(self, f"offsets_{g}")  # (B, F_g)
            # index_select, not table(idx): its backward is a scatter-add, 1.3x faster than the embedding's
            # sorting backward on CPU, and 4x under the vmap of a stacked run (docs/benchmarks.md).
            rows = table.weight.index_select(0, idx.flatten())
            parts.append(rows.view(idx.shape[0], -1))  # (B, F_g * width)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class TaskInputs(nn.ModuleList):
    """One ``InputBlock`` per task, for architectures whose tasks keep their own embeddings: (T, B, D)."""

    def __init__(self, features: FeatureSpec, num_tasks: int) -> None:
        super().__init__(InputBlock(features) for _ in range(num_tasks))
        self.output_dim = features.input_dim

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        return torch.stack([block(numeric, categorical) for block in self])


class MLP(nn.Sequential):
    """Linear + ReLU layers of the given widths (an empty list is the identity)."""

    def __init__(self, input_dim: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        super().__init__(*layers)
        self.output_dim = width


class ExpertBank(nn.Module):
    """E independent ReLU MLP experts of the same shape, computed together: (B, D) -> (B, E, H).

    Weights are stacked with a leading expert dimension; the first layer is one matmul over all experts
    at once, deeper layers one batched matmul, so there is no Python loop over experts.
    """

    def __init__(self, input_dim: int, num_experts: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        require(isinstance(num_experts, int) and num_experts >= 1, "num_experts", "an integer >= 1", num_experts)
        hidden = _check_sizes("expert_hidden", hidden)
        require(len(hidden) >= 1, "expert_hidden", "at least one layer width", hidden)
        self.num_experts = num_experts
        self.output_dim = hidden[-1]
        widths = [input_dim, *hidden]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            # Same init as nn.Linear, drawn per expert.
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(num_experts, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_experts, 1, fan_out).uniform_(-bound, bound)))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return [self.weights[-1], self.biases[-1]]

    def layer(self, h: Tensor, index: int) -> Tensor:
        """Layer ``index`` of every expert: (B, D) read by all experts, or (E, B, D) one input per expert ->
        (E, B, H)."""
        weight, bias = self.weights[index], self.biases[index]
        if h.dim() == 3:
            out = torch.baddbmm(bias, h, weight)  # (E, B, H)
        else:  # one matmul over all experts at once
            out = h @ weight.permute(1, 0, 2).reshape(weight.shape[1], -1)  # (B, E*H)
            out = out.view(h.shape[0], self.num_experts, -1).transpose(0, 1) + bias  # (E, B, H)
        return self.dropout(torch.relu(out))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` is (B, D), shared by all experts, or (E, B, D), one input per expert; returns (B, E, H)."""
        h = x
        for index in range(self.num_layers):
            h = self.layer(h, index)
        return h.transpose(0, 1)  # (B, E, H)


def mix_experts(gates: Tensor, experts: Tensor) -> Tensor:
    """Gate-weighted sums of expert outputs: (B, G, E) x (B, E, H) -> (B, G, H)."""
    return torch.bmm(gates, experts)


class TaskTowers(nn.Module):
    """One tower per task: an MLP then a linear layer to the task's logits, keyed by task name."""

    def __init__(self, input_dim: int, tasks: Sequence[TaskSpec], hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        hidden = _check_sizes("tower_hidden", hidden)
        self.towers = nn.ModuleDict()
        for task in tasks:
            body = MLP(input_dim, hidden, dropout)
            self.towers[task.name] = nn.Sequential(body, nn.Linear(body.output_dim, output_dim(task)))

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """``inputs[task]`` is (B, D); returns ``{task: (B,)}`` (or (B, C) for multiclass)."""
        out = {}
        for name, tower in self.towers.items():
            logits = tower(inputs[name])
            out[name] = logits.squeeze(-1) if logits.shape[-1] == 1 else logits
        return out
