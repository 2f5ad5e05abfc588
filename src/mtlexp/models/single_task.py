"""Independent networks per task: the single-task baseline, and soft parameter sharing between them.

Without a penalty this is the MMoE paper's single-task baseline: one network per task trained side by side,
no parameter shared. With ``penalty`` the networks stay separate but their corresponding weights are pulled
together (``l2_constrained``: L2 distance; ``trace_norm``: nuclear norm), the soft-sharing baselines.

The per-task bottoms are one expert bank with one expert per task, so T networks cost one batched op; each
task reads only its own expert.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlexp.models.base import MTLModel, MTLOutput, Owner
from mtlexp.models.blocks import ExpertBank, TaskInputs
from mtlexp.models.penalties import Penalty
from mtlexp.specs import FeatureSpec, TaskSpec


class SingleTask(MTLModel):
    """Independent networks per task, optionally tied by a soft-sharing penalty.

    :param bottom_hidden: hidden widths of each task's own bottom network.
    :param tower_hidden: hidden widths of each task's tower on top of its bottom.
    :param penalty: soft sharing: a penalty on the corresponding weights of the task networks (embedding
        tables, bottom layers, tower hidden layers; not biases, not the output layers), added to the
        auxiliary loss. ``None``: independent networks.
    """

    carries_replicas = True

    def __init__(
        self,
        features: FeatureSpec,
        tasks: Sequence[TaskSpec],
        bottom_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (8,),
        dropout: float = 0.0,
        penalty: Penalty | None = None,
    ) -> None:
        super().__init__(features, tasks, tower_hidden, dropout)
        # Embeddings are parameters too: each task gets its own, or the baseline would share them.
        self.input = TaskInputs(features, len(tasks))
        self.bottoms = ExpertBank(features.input_dim, len(tasks), bottom_hidden, dropout)
        self.towers = self.build_towers(self.bottoms.output_dim)
        self.penalty = penalty

    def declare_ownership(self) -> dict[str, Owner]:
        owners = super().declare_ownership()
        owners.update(self.indexed_by_task("input"))  # each task's own embeddings
        owners.update(self.sliced_by_task("bottoms"))  # task t's network is expert t of the bank
        return owners

    def coupled_weights(self) -> list[Tensor]:
        """Each layer's weights stacked over tasks, (T, a, b) (with a leading R when the model carries replicas):
        what a soft-sharing penalty ties together."""
        layers = [torch.stack([block.embeddings[g].weight for block in self.input], dim=-3)
                  for g in range(len(self.input[0].embeddings))]
        layers += list(self.bottoms.weights)
        towers = [self.towers.towers[name][0] for name in self.task_names]  # each tower's hidden MLP
        for index, module in enumerate(towers[0]):
            if isinstance(module, torch.nn.Linear):
                layers.append(torch.stack([tower[index].weight for tower in towers], dim=-3))
        return layers

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        h = self.bottoms(self.input(numeric, categorical))  # (T, B, D) -> (B, T, H)
        aux_loss = self.penalty(self.coupled_weights()) if self.penalty is not None and self.training else None
        return MTLOutput(self.towers({name: h[..., t, :] for t, name in enumerate(self.task_names)}), aux_loss=aux_loss)

    def diagnostics(self) -> dict[str, Tensor]:
        if self.penalty is None:
            return {}
        with torch.no_grad():
            return {"penalty": self.penalty(self.coupled_weights())}
