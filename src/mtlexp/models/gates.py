"""Gates: G gates over E experts in one module, so all of a model's task gates cost one op.

A gate maps ``x`` to float32 expert weights ``(B, G, E)`` whose rows sum to 1 (computed in float32 under
mixed precision too, so sparse scatters and thresholds behave), plus an auxiliary loss (or ``None``)
that the model adds to its ``aux_loss``. ``x`` is ``(B, D)``, read by every gate, or ``(G, B, D)``, one
input per gate (CGC/PLE's task gates at deeper levels). The auxiliary loss is computed in training mode
only. Models take a gate *factory* (a ``_partial_`` config node under ``model.gate``) and call it as
``gate(input_dim=..., num_experts=..., num_gates=...)``.

The gate parameters of one gate are rows ``[g * n, (g + 1) * n)`` of each of its fused linear layers
(``n`` outputs per gate), so a model can declare them as the task's own (``MTLModel.sliced_by_task``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlexp.errors import require
from mtlexp.models.blocks import batched_linear


def grouped_linear(x: Tensor, linear: nn.Linear, groups: int) -> Tensor:
    """One linear layer of ``groups * n`` outputs read as ``groups`` layers of ``n``: (B, D) or (G, B, D) ->
    (B, G, n). With a per-group input, group g reads ``x[g]`` through its own rows only. With a replica
    dimension (the layer's weight (R, G * n, D)), every shape gains a leading R."""
    if x.dim() == linear.weight.dim():  # one input read by every group
        return linear(x).unflatten(-1, (groups, -1))
    n = linear.weight.shape[-2] // groups
    weight = linear.weight.unflatten(-2, (groups, n)).transpose(-1, -2)  # (G, D, n)
    bias = linear.bias.unflatten(-1, (groups, 1, n))  # (G, 1, n)
    return batched_linear(x, weight, bias).transpose(-3, -2)  # (G, B, n) -> (B, G, n)


class Gate(nn.Module):
    """Base of the gates: checks the sizes; subclasses implement ``forward(x) -> (weights, aux_loss)``.

    Every gate here carries a replica dimension (``mtlexp.models.blocks``): with (R, ...) parameters and inputs,
    its weights are (R, B, G, E) and its auxiliary loss (R,), each replica's own.
    """

    carries_replicas = True

    def __init__(self, input_dim: int, num_experts: int, num_gates: int) -> None:
        super().__init__()
        require(isinstance(num_experts, int) and num_experts >= 1, "num_experts", "an integer >= 1", num_experts)
        self.num_experts = num_experts
        self.num_gates = num_gates

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


def check_k(k: int, num_experts: int) -> None:
    """A sparse gate's ``k`` (experts per row) against the experts it mixes; in CGC/PLE a task gate mixes its
    task's own and the shared experts, fewer than the model has, so the message names the gate's count."""
    require(isinstance(k, int) and 1 <= k <= num_experts, "gate.k",
            f"an integer in [1, {num_experts}] (a gate of this model mixes {num_experts} experts)", k)


class SoftmaxGate(Gate):
    """Dense softmax gates (MMoE's): every expert gets a positive weight."""

    def __init__(self, input_dim: int, num_experts: int, num_gates: int) -> None:
        super().__init__(input_dim, num_experts, num_gates)
        self.linear = nn.Linear(input_dim, num_gates * num_experts)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return torch.softmax(grouped_linear(x, self.linear, self.num_gates).float(), dim=-1), None  # (B, G, E)


def _cv_squared(values: Tensor) -> Tensor:
    """Squared coefficient of variation along the last dimension, summed over the gates: (..., G, E) -> (...)."""
    return (values.var(dim=-1, unbiased=False) / (values.mean(dim=-1) ** 2 + 1e-10)).sum(-1)


class NoisyTopKGate(Gate):
    """Noisy top-k gating (Shazeer et al., ICLR 2017, "Outrageously Large Neural Networks").

    Tunable Gaussian noise (``softplus(x W_noise)`` scale) is added to the gate logits in training; the top
    ``k`` logits are soft-maxed and the other experts get weight exactly 0. The auxiliary loss is the paper's
    load balancing, ``balance_weight * (CV^2(importance) + CV^2(load))`` per gate, where importance is the
    batch's summed weights per expert and load its smooth estimate of how many rows pick each expert.
    Both linear layers start at zero, as in the paper, so early routing is decided by the noise.

    :param k: experts each row uses (1 <= k <= num_experts).
    :param noisy: add the tunable noise in training (without it, load is the hard count and carries no
        gradient; only importance balances).
    :param balance_weight: weight of the load-balancing loss.
    """

    def __init__(
        self, input_dim: int, num_experts: int, num_gates: int, k: int = 2, noisy: bool = True,
        balance_weight: float = 0.01,
    ) -> None:
        super().__init__(input_dim, num_experts, num_gates)
        check_k(k, num_experts)
        require(balance_weight >= 0, "gate.balance_weight", "a number >= 0", balance_weight)
        self.k, self.noisy, self.balance_weight = k, noisy, balance_weight
        self.linear = nn.Linear(input_dim, num_gates * num_experts)
        self.noise = nn.Linear(input_dim, num_gates * num_experts) if noisy else None
        for layer in (self.linear, self.noise):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        clean = grouped_linear(x, self.linear, self.num_gates).float()  # (B, G, E)
        logits, std = clean, None
        if self.training and self.noise is not None:
            std = F.softplus(grouped_linear(x, self.noise, self.num_gates).float()) + 1e-2
            logits = clean + torch.randn_like(clean) * std
        top = logits.topk(min(self.k + 1, self.num_experts), dim=-1)
        weights = torch.zeros_like(logits).scatter(
            -1, top.indices[..., : self.k], torch.softmax(top.values[..., : self.k], dim=-1)
        )
        if not self.training or self.balance_weight == 0:
            return weights, None
        importance = weights.sum(-3)  # (G, E): summed over the batch
        if std is not None and self.k < self.num_experts:
            # P(expert e stays in the top k if only its own noise were redrawn) (the paper's Eq. 8-9).
            selected = logits > top.values[..., self.k : self.k + 1]
            threshold = torch.where(selected, top.values[..., self.k : self.k + 1], top.values[..., self.k - 1 : self.k])
            load = torch.special.ndtr((clean - threshold) / std).sum(-3)  # the standard normal CDF
        else:
            load = (weights > 0).to(weights.dtype).sum(-3)
        return weights, self.balance_weight * (_cv_squared(importance) + _cv_squared(load))


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """DSelect-k's cubic smooth-step: 0 below -gamma/2, 1 above gamma/2, a C^1 cubic between."""
    cubic = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class DSelectKGate(Gate):
    """DSelect-k, per-example (Hazimeh et al., NeurIPS 2021, "DSelect-k: Differentiable Selection in the
    Mixture of Experts with Applications to Multi-Task Learning").

    Each gate has ``k`` selectors. A selector holds ``m = ceil(log2 E)`` smooth-step "bits" and puts weight
    ``prod_j (s_j if bit j of code c else 1 - s_j)`` on code c; the gate's weights are a softmax-weighted mix
    of its k selectors. Once every smooth-step has saturated (|z| >= gamma/2) each selector picks exactly
    one expert, so a row uses at most k experts; the auxiliary loss (``entropy_weight`` times the mean
    entropy of the selectors) pushes them there. When E is not a power of two, codes past E fold back onto
    expert ``c - E``, so weights still sum to 1 and a saturated selector still picks one expert.

    :param k: selectors (the most experts a row uses once the gate has converged), at most ``num_experts``.
    :param gamma: width of the smooth-step's non-saturated region.
    :param entropy_weight: weight of the selectors' entropy regulariser.
    """

    def __init__(
        self, input_dim: int, num_experts: int, num_gates: int, k: int = 2, gamma: float = 1.0,
        entropy_weight: float = 0.05,
    ) -> None:
        super().__init__(input_dim, num_experts, num_gates)
        check_k(k, num_experts)
        require(gamma > 0, "gate.gamma", "a number > 0", gamma)
        require(entropy_weight >= 0, "gate.entropy_weight", "a number >= 0", entropy_weight)
        self.k, self.gamma, self.entropy_weight = k, float(gamma), entropy_weight
        self.num_bits = max(1, math.ceil(math.log2(num_experts)))
        codes = torch.arange(2**self.num_bits)
        self.register_buffer("bits", ((codes[:, None] >> torch.arange(self.num_bits)) & 1).float(), persistent=False)
        self.selectors = nn.Linear(input_dim, num_gates * k * self.num_bits)
        self.mix = nn.Linear(input_dim, num_gates * k)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        g, k, e = self.num_gates, self.k, self.num_experts
        z = grouped_linear(x, self.selectors, g).float().unflatten(-1, (k, self.num_bits))  # (B, G, k, m)
        s = smooth_step(z, self.gamma).unsqueeze(-2)  # (B, G, k, 1, m)
        codes = (self.bits * s + (1 - self.bits) * (1 - s)).prod(-1)  # (B, G, k, 2^m), sums to 1 over codes
        folded = codes[..., :e] + F.pad(codes[..., e:], (0, 2 * e - codes.shape[-1]))  # (B, G, k, E)
        alpha = torch.softmax(grouped_linear(x, self.mix, g).float(), dim=-1)  # (B, G, k)
        weights = (alpha.unsqueeze(-1) * folded).sum(-2)  # (B, G, E)
        if not self.training or self.entropy_weight == 0:
            return weights, None
        entropy = -(codes * torch.log(codes.clamp_min(1e-12))).sum(-1).flatten(-3).mean(-1)  # over (B, G, k)
        return weights, self.entropy_weight * entropy
