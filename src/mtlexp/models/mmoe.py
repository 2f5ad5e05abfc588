"""MMoE (Ma et al., KDD 2018, "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts"), and OMoE, its one-gate baseline, as a configuration of it (``shared_gate``).

A bank of experts shared by all tasks, and one gate per task that mixes the experts for that task's tower.
The gate is pluggable (``model.gate``: softmax, noisy top-k, DSelect-k).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from mtlexp.models.base import MTLModel, MTLOutput, Owner
from mtlexp.models.blocks import ExpertBank, mix_experts
from mtlexp.models.gates import Gate, SoftmaxGate
from mtlexp.specs import FeatureSpec, TaskSpec


class MMoE(MTLModel):
    """Multi-gate mixture of experts.

    :param num_experts: experts in the shared bank.
    :param expert_hidden: hidden widths of every expert (the last is the expert output width).
    :param tower_hidden: hidden widths of every task tower.
    :param shared_gate: one gate for all tasks (OMoE) instead of one per task.
    :param gate: the gate factory (``model.gate``); softmax gates when not given.
    """

    carries_replicas = True

    def __init__(
        self,
        features: FeatureSpec,
        tasks: Sequence[TaskSpec],
        num_experts: int = 8,
        expert_hidden: Sequence[int] = (16,),
        tower_hidden: Sequence[int] = (8,),
        dropout: float = 0.0,
        shared_gate: bool = False,
        gate: Callable[..., Gate] | None = None,
    ) -> None:
        super().__init__(features, tasks, tower_hidden, dropout)
        self.shared_gate = shared_gate
        self.experts = ExpertBank(self.input.output_dim, num_experts, expert_hidden, dropout)
        num_gates = 1 if shared_gate else len(self.task_names)
        self.gate = (gate or SoftmaxGate)(input_dim=self.input.output_dim, num_experts=num_experts, num_gates=num_gates)
        self.towers = self.build_towers(self.experts.output_dim)

    def declare_ownership(self) -> dict[str, Owner]:
        owners = super().declare_ownership()
        if not self.shared_gate:  # gate t's rows of the fused gate layers reach task t alone
            owners.update(self.sliced_by_task("gate"))
        return owners

    def last_shared_layer(self) -> list[nn.Parameter]:
        return self.experts.last_layer_parameters()

    def gate_experts(self) -> dict[str, list[str]]:
        return {name: [f"expert_{e}" for e in range(self.experts.num_experts)] for name in self.task_names}

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        x = self.input(numeric, categorical)  # (B, D)
        gates, aux_loss = self.gate(x)  # (B, G, E)
        mixed = mix_experts(gates, self.experts(x))  # (B, G, H)
        last = gates.shape[-2] - 1
        per_task = {name: min(t, last) for t, name in enumerate(self.task_names)}
        return MTLOutput(
            logits=self.towers({name: mixed[..., g, :] for name, g in per_task.items()}),
            gates={name: gates[..., g, :] for name, g in per_task.items()},
            aux_loss=aux_loss,
        )
