"""Building blocks shared by every architecture: input block, MLP, expert bank, task towers (gates: ``gates``).

Shapes use B = batch, E = experts, G = gates, D = feature width, T = tasks, R = replicas.

The replica dimension: a stacked run (``stack=K``) may run K replicas of a model as one model whose every
parameter has a leading R (``mtlexp.stacking.model``, the native route). A block that declares
``carries_replicas = True`` has one forward for both: its parameters are its single shapes or (R, ...), and its
inputs then carry the same leading R; every index counts from the end. ``prepare_for_replicas`` gives the
torch layers the blocks compose (``nn.Linear``, ``nn.Embedding``) the same ability.
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


class ReplicaLinear(nn.Linear):
    """``nn.Linear`` whose weight may be (R, out, in) with bias (R, out): replica r maps ``x[r]``, (R, ..., in)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.dim() == 2:
            return super().forward(x)
        rows = x.flatten(1, -2)  # (R, N, in)
        bias = self.bias.unsqueeze(1) if self.bias is not None else rows.new_zeros(())
        return torch.baddbmm(bias, rows, self.weight.transpose(1, 2)).view(*x.shape[:-1], -1)


class ReplicaEmbedding(nn.Embedding):
    """``nn.Embedding`` whose table may be (R, N, W): replica r looks ``idx[r]`` up in its own table."""

    def forward(self, idx: Tensor) -> Tensor:
        if self.weight.dim() == 2:
            return super().forward(idx)
        return replica_rows(self.weight, idx)


def replica_rows(table: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` (..., F) of ``table`` (N, W), or of replica r's table for ``idx[r]`` when it is (R, N, W):
    (..., F, W). One ``index_select`` on the flattened (R * N, W) table, with replica r's rows offset by r * N."""
    if table.dim() == 3:
        idx = idx + torch.arange(table.shape[0], device=idx.device).view(-1, *[1] * (idx.dim() - 1)) * table.shape[1]
        table = table.flatten(0, 1)
    # index_select, not an embedding call: its backward is a scatter-add, 1.3x faster than the embedding's
    # sorting backward on CPU, and 4x under the vmap of a stacked run (docs/benchmarks.md).
    return table.index_select(0, idx.flatten()).view(*idx.shape, table.shape[-1])


# The torch layers the zoo composes, and their versions that carry a replica dimension (a class swap: no new
# parameters, so building a native model draws nothing from the random state the replicas train with).
REPLICA_LEAVES: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: ReplicaLinear, nn.Embedding: ReplicaEmbedding}
# Layers that are elementwise or only hold others: nothing in them sees the replica dimension.
REPLICA_NEUTRAL = (nn.ReLU, nn.Dropout, nn.Identity, nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList)


def prepare_for_replicas(module: nn.Module) -> bool:
    """Swap ``module``'s class for its replica-carrying version when it is a torch layer that has one;
    whether ``module`` (on its own, not its children) then runs with a replica dimension."""
    swapped = REPLICA_LEAVES.get(type(module))
    if swapped is not None:
        module.__class__ = swapped
    return (swapped is not None or type(module) in REPLICA_NEUTRAL or type(module) in REPLICA_LEAVES.values()
            or getattr(type(module), "carries_replicas", False))


def batched_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """N linear layers, each on its own input: (N, B, D) x (N, D, H) + (N, 1, H) -> (N, B, H), where N may be
    several leading dimensions (replicas x experts): one batched product over all of them."""
    return torch.baddbmm(bias.flatten(0, -3), x.flatten(0, -3), weight.flatten(0, -3)).view(*x.shape[:-1], -1)


class InputBlock(nn.Module):
    """Numeric columns as they are, categorical columns through one embedding each, concatenated: (B, D).

    Features of equal embedding width share one table (with per-feature row offsets), so a data set with
    dozens of categorical columns costs one lookup per distinct width, not one per column.
    """

    carries_replicas = True

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
            idx = categorical[..., getattr(self, f"columns_{g}")] + getattr(self, f"offsets_{g}")  # (B, F_g)
            parts.append(replica_rows(table.weight, idx).flatten(-2))  # (B, F_g * width)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class TaskInputs(nn.ModuleList):
    """One ``InputBlock`` per task, for architectures whose tasks keep their own embeddings: (T, B, D)."""

    carries_replicas = True

    def __init__(self, features: FeatureSpec, num_tasks: int) -> None:
        super().__init__(InputBlock(features) for _ in range(num_tasks))
        self.output_dim = features.input_dim

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        return torch.stack([block(numeric, categorical) for block in self], dim=-3)


class MLP(nn.Sequential):
    """Linear + ReLU layers of the given widths (an empty list is the identity)."""

    carries_replicas = True

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
    at once, deeper layers one batched matmul, so there is no Python loop over experts. With a replica
    dimension (weights (R, E, ...)), R replicas of E experts are one batched product of R * E experts.
    """

    carries_replicas = True

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
        weight, bias = self.weights[index], self.biases[index]  # (E, D, H), (E, 1, H)
        if h.dim() == weight.dim():  # one input per expert: one batched product over (replicas x) experts
            out = batched_linear(h, weight, bias)
        else:  # one matmul over all experts at once
            out = h @ weight.transpose(-3, -2).flatten(-2)  # (B, E*H)
            out = out.unflatten(-1, (self.num_experts, -1)).transpose(-3, -2) + bias  # (E, B, H)
        return self.dropout(torch.relu(out))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` is (B, D), shared by all experts, or (E, B, D), one input per expert; returns (B, E, H)."""
        h = x
        for index in range(self.num_layers):
            h = self.layer(h, index)
        return h.transpose(-3, -2)  # (B, E, H)


def mix_experts(gates: Tensor, experts: Tensor) -> Tensor:
    """Gate-weighted sums of expert outputs: (B, G, E) x (B, E, H) -> (B, G, H) (with a leading R or not)."""
    return torch.matmul(gates, experts)


class TaskTowers(nn.Module):
    """One tower per task: an MLP then a linear layer to the task's logits, keyed by task name."""

    carries_replicas = True

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
