"""CGC and PLE (Tang et al., RecSys 2020, "Progressive Layered Extraction (PLE): A Novel Multi-Task
Learning (MTL) Model for Personalized Recommendations").

A CGC level (``ExtractionLevel``) has, per task, its own experts plus experts shared by all tasks, and per
task a gate over its own and the shared experts. PLE stacks levels: below the top, each task's gate output
is that task's input to the next level, and a shared gate over *all* experts of the level gives the next
level's shared input. CGC is PLE with one level (``model=cgc``).

Gates are named in ``MTLOutput.gates``: the top level's by task (width own + shared experts, own first);
lower levels' as ``level<l>/<task>`` and ``level<l>/shared`` (width: every expert of the level, tasks' own
experts in task order, then the shared ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mtlexp.errors import require
from mtlexp.models.base import MTLModel, MTLOutput, Owner, add_aux
from mtlexp.models.blocks import ExpertBank
from mtlexp.models.gates import Gate, SoftmaxGate
from mtlexp.specs import FeatureSpec, TaskSpec


class ExtractionLevel(nn.Module):
    """One CGC level: T groups of task experts, shared experts, T task gates and optionally a shared gate.

    ``forward(task_inputs, shared_input)`` takes (B, D) read by every task, or (T, B, D) one per task, plus the
    shared input (B, D); it returns the task outputs (T, B, H), the shared output (B, H) or ``None``, the task
    gates (B, T, E_own + E_shared), the shared gate (B, E_all) or ``None``, and the gates' auxiliary loss.
    """

    carries_replicas = True

    def __init__(
        self, input_dim: int, num_tasks: int, num_task_experts: int, num_shared_experts: int,
        hidden: Sequence[int], dropout: float, gate: Callable[..., Gate], with_shared_gate: bool,
    ) -> None:
        super().__init__()
        self.num_tasks, self.num_task_experts, self.num_shared_experts = num_tasks, num_task_experts, num_shared_experts
        self.task_experts = ExpertBank(input_dim, num_tasks * num_task_experts, hidden, dropout) if num_task_experts else None
        self.shared_experts = ExpertBank(input_dim, num_shared_experts, hidden, dropout) if num_shared_experts else None
        self.task_gates = gate(input_dim=input_dim, num_experts=num_task_experts + num_shared_experts, num_gates=num_tasks)
        total = num_tasks * num_task_experts + num_shared_experts
        self.shared_gate = gate(input_dim=input_dim, num_experts=total, num_gates=1) if with_shared_gate else None
        self.output_dim = list(hidden)[-1]

    def forward(self, task_inputs: Tensor, shared_input: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None, Tensor | None]:
        t, own = self.num_tasks, self.num_task_experts
        parts = []  # (B, T, E_own + E_shared, H): each task's candidates, own experts first
        if self.task_experts is not None:
            per_task = task_inputs.dim() > shared_input.dim()
            x = task_inputs.repeat_interleave(own, dim=-3) if per_task else task_inputs
            mine = self.task_experts(x)  # (B, T * E_own, H), task t's experts at [t*E_own, (t+1)*E_own)
            parts.append(mine.unflatten(-2, (t, own)))
        if self.shared_experts is not None:
            shared = self.shared_experts(shared_input)  # (B, E_shared, H)
            parts.append(shared.unsqueeze(-3).expand(*shared.shape[:-2], t, *shared.shape[-2:]))
        candidates = torch.cat(parts, dim=-2) if len(parts) > 1 else parts[0]
        task_gates, aux = self.task_gates(task_inputs)  # (B, T, E_own + E_shared)
        task_out = torch.einsum("...bte,...bteh->...tbh", task_gates, candidates)  # (T, B, H)
        if self.shared_gate is None:
            return task_out, None, task_gates, None, aux
        every = [mine] if self.task_experts is not None else []
        every += [shared] if self.shared_experts is not None else []
        shared_gate, shared_aux = self.shared_gate(shared_input)  # (B, 1, E_all)
        shared_out = torch.matmul(shared_gate, torch.cat(every, dim=-2)).squeeze(-2)  # (B, H)
        return task_out, shared_out, task_gates, shared_gate.squeeze(-2), add_aux(aux, shared_aux)


class PLE(MTLModel):
    """Progressive layered extraction: ``num_levels`` CGC levels, then a tower per task.

    :param num_levels: extraction levels (1: CGC).
    :param num_task_experts: experts of each task's own, per level.
    :param num_shared_experts: experts shared by all tasks, per level.
    :param expert_hidden: hidden widths of every expert (the last is the level's output width).
    :param tower_hidden: hidden widths of every task tower.
    :param gate: the gate factory (``model.gate``); softmax gates when not given.
    """

    carries_replicas = True

    def __init__(
        self,
        features: FeatureSpec,
        tasks: Sequence[TaskSpec],
        num_levels: int = 2,
        num_task_experts: int = 2,
        num_shared_experts: int = 4,
        expert_hidden: Sequence[int] = (16,),
        tower_hidden: Sequence[int] = (8,),
        dropout: float = 0.0,
        gate: Callable[..., Gate] | None = None,
    ) -> None:
        super().__init__(features, tasks, tower_hidden, dropout)
        require(isinstance(num_levels, int) and num_levels >= 1, "num_levels", "an integer >= 1", num_levels)
        for key, value in (("num_task_experts", num_task_experts), ("num_shared_experts", num_shared_experts)):
            require(isinstance(value, int) and value >= 0, key, "an integer >= 0", value)
        require(num_task_experts + num_shared_experts >= 1, "num_task_experts",
                "at least one expert per task gate (num_task_experts + num_shared_experts >= 1)", num_task_experts)
        self.levels = nn.ModuleList()
        width = self.input.output_dim
        for level in range(num_levels):
            self.levels.append(ExtractionLevel(
                width, len(tasks), num_task_experts, num_shared_experts, expert_hidden, dropout,
                # A shared gate only feeds the next level's shared experts: none without them.
                gate or SoftmaxGate, with_shared_gate=level < num_levels - 1 and num_shared_experts > 0,
            ))
            width = self.levels[-1].output_dim
        self.towers = self.build_towers(width)

    def declare_ownership(self) -> dict[str, Owner]:
        owners = super().declare_ownership()
        # From the top down: a task gate's output feeds only that task's experts and gate one level up, so it
        # is the task's own when those are; a task's own experts feed its gate and the level's shared gate,
        # so they are its own when the gate is and there is no shared gate. (Default PLE: the top level's own
        # experts and gates, and the task gates one level below, are a task's; lower own experts are shared.)
        gate_owned = True
        for index in reversed(range(len(self.levels))):
            level = self.levels[index]
            experts_owned = gate_owned and (level.shared_gate is None or level.task_experts is None)
            if gate_owned:
                owners.update(self.sliced_by_task(f"levels.{index}.task_gates"))
            if experts_owned:
                owners.update(self.sliced_by_task(f"levels.{index}.task_experts"))
            gate_owned = experts_owned
        return owners

    def last_shared_layer(self) -> list[nn.Parameter]:
        banks = [level.shared_experts for level in self.levels if level.shared_experts is not None]
        return banks[-1].last_layer_parameters() if banks else super().last_shared_layer()

    def gate_experts(self) -> dict[str, list[str]]:
        names: dict[str, list[str]] = {}
        top = len(self.levels) - 1
        for index, level in enumerate(self.levels):
            prefix = "" if index == top else f"level{index}/"
            shared = [f"{prefix}shared_{j}" for j in range(level.num_shared_experts)]
            own = {t: [f"{prefix}{t}_{i}" for i in range(level.num_task_experts)] for t in self.task_names}
            names.update({f"{prefix}{t}": own[t] + shared for t in self.task_names})
            if level.shared_gate is not None:
                names[f"level{index}/shared"] = [e for t in self.task_names for e in own[t]] + shared
        return names

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        x = self.input(numeric, categorical)  # (B, D)
        task_inputs, shared_input = x, x
        gates: dict[str, Tensor] = {}
        aux_loss = None
        top = len(self.levels) - 1
        for index, level in enumerate(self.levels):
            task_inputs, shared_out, task_gates, shared_gate, aux = level(task_inputs, shared_input)
            aux_loss = add_aux(aux_loss, aux)
            prefix = "" if index == top else f"level{index}/"
            gates.update({f"{prefix}{name}": task_gates[..., t, :] for t, name in enumerate(self.task_names)})
            if shared_gate is not None:
                gates[f"level{index}/shared"] = shared_gate
                shared_input = shared_out
        logits = self.towers({name: task_inputs[..., t, :, :] for t, name in enumerate(self.task_names)})
        return MTLOutput(logits=logits, gates=gates, aux_loss=aux_loss)
