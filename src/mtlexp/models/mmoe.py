"""MMoE and OMoE (Ma et al., KDD 2018, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts").

MMoE: a bank of experts shared by all tasks, and one softmax gate per task that mixes the experts for
that task's tower. OMoE, the paper's one-gate baseline, is the same network with a single gate shared by
every task.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mtlexp.data.features import FeatureSpec
from mtlexp.models.base import MTLModel, MTLOutput
from mtlexp.models.blocks import ExpertBank, SoftmaxGate, mix_experts
from mtlexp.tasks import TaskSpec


class MMoE(MTLModel):
    """Multi-gate mixture of experts.

    :param num_experts: experts in the shared bank.
    :param expert_hidden: hidden widths of every expert (the last is the expert output width).
    :param tower_hidden: hidden widths of every task tower.
    :param shared_gate: one gate for all tasks (OMoE) instead of one per task.
    """

    def __init__(
        self,
        features: FeatureSpec,
        tasks: Sequence[TaskSpec],
        num_experts: int = 8,
        expert_hidden: Sequence[int] = (16,),
        tower_hidden: Sequence[int] = (8,),
        dropout: float = 0.0,
        shared_gate: bool = False,
    ) -> None:
        super().__init__(features, tasks, tower_hidden, dropout)
        self.experts = ExpertBank(self.input.output_dim, num_experts, expert_hidden, dropout)
        num_gates = 1 if shared_gate else len(self.task_names)
        self.gate = SoftmaxGate(self.input.output_dim, num_experts, num_gates)
        self.towers = self.build_towers(self.experts.output_dim)

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        x = self.input(numeric, categorical)  # (B, D)
        gates = self.gate(x)  # (B, G, E)
        mixed = mix_experts(gates, self.experts(x))  # (B, G, H)
        last = gates.shape[1] - 1
        per_task = {name: min(t, last) for t, name in enumerate(self.task_names)}
        return MTLOutput(
            logits=self.towers({name: mixed[:, g] for name, g in per_task.items()}),
            gates={name: gates[:, g] for name, g in per_task.items()},
        )


class OMoE(MMoE):
    """One-gate mixture of experts: MMoE with a single gate shared by all tasks (the paper's baseline)."""

    def __init__(
        self,
        features: FeatureSpec,
        tasks: Sequence[TaskSpec],
        num_experts: int = 8,
        expert_hidden: Sequence[int] = (16,),
        tower_hidden: Sequence[int] = (8,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(features, tasks, num_experts, expert_hidden, tower_hidden, dropout, shared_gate=True)
