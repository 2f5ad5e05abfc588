"""AITM (Xi et al., KDD 2021, "Modeling the Sequential Dependence among Audience Multi-step Conversions with
Multi-task Learning in Targeted Display Advertising").

Tasks form a sequence (impression -> click -> purchase): every task has its own encoder over the shared
embeddings, and each task after the first also receives what the previous task learned, through the
*adaptive information transfer* (AIT) unit. With ``z_{t-1}`` the previous task's representation, ``p`` a learned
projection of it and ``q_t`` this task's encoding, the unit attends over the two:

    w_u = softmax_u(<h1(u), h2(u)> / sqrt(d)),   z_t = sum_u w_u h3(u),   u in {p, q_t}

Task t's tower reads ``z_t``. The *behavioural expectation calibrator* adds
``calibrator_weight * mean(relu(P_t - P_{t-1}))`` over consecutive binary tasks as an auxiliary loss: a later
step of the funnel should not be more likely than an earlier one. Use it (``model.calibrator_weight=0.6``, the
paper's value) when the tasks are such a funnel. It is off by default, because in the zoo the tasks can be
anything (two census labels are no funnel). Under the click -> conversion objectives
(``model=esmm model@model.bottom=aitm``) the conversion tower is the CVR given a click, and pCTCVR = pCTR x pCVR
never exceeds pCTR by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlexp.errors import require
from mtlexp.kinds import kind_of
from mtlexp.models.base import MTLModel, MTLOutput, Owner
from mtlexp.models.blocks import MLP
from mtlexp.specs import FeatureSpec, TaskSpec


class AdaptiveTransfer(nn.Module):
    """The AIT unit: attention over the transferred information ``p`` and the task's own encoding ``q``."""

    carries_replicas = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, p: Tensor, q: Tensor) -> Tensor:
        inputs = torch.stack([p, q], dim=-2)  # (B, 2, d)
        scores = (self.query(inputs) * self.key(inputs)).sum(-1) * self.scale  # (B, 2)
        weights = torch.softmax(scores, dim=-1)
        return (weights.unsqueeze(-1) * self.value(inputs)).sum(-2)


class AITM(MTLModel):
    """Task encoders in sequence, each after the first fed by the previous one through an AIT unit.

    :param encoder_hidden: hidden widths of every task's encoder (the last one is the AIT width d).
    :param tower_hidden: hidden widths of every task tower after the AIT unit.
    :param calibrator_weight: weight of the behavioural expectation calibrator (0: off).
    """

    carries_replicas = True

    def __init__(
        self,
        features: FeatureSpec,
        tasks: Sequence[TaskSpec],
        encoder_hidden: Sequence[int] = (32, 16),
        tower_hidden: Sequence[int] = (8,),
        calibrator_weight: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(features, tasks, tower_hidden, dropout)
        require(len(encoder_hidden) >= 1, "encoder_hidden", "at least one layer width", list(encoder_hidden))
        require(calibrator_weight >= 0, "calibrator_weight", "a number >= 0", calibrator_weight)
        self.encoders = nn.ModuleList(MLP(self.input.output_dim, encoder_hidden, dropout) for _ in self.tasks)
        width = self.encoders[0].output_dim
        self.transfers = nn.ModuleList(nn.Linear(width, width) for _ in self.tasks[1:])
        self.units = nn.ModuleList(AdaptiveTransfer(width) for _ in self.tasks[1:])
        self.towers = self.build_towers(width)
        self.calibrator_weight = float(calibrator_weight)

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        x = self.input(numeric, categorical)
        representations, previous = {}, None
        for t, name in enumerate(self.task_names):
            z = self.encoders[t](x)
            if previous is not None:
                z = self.units[t - 1](self.transfers[t - 1](previous), z)
            representations[name] = previous = z
        logits = self.towers(representations)
        return MTLOutput(logits, aux_loss=self.calibration(logits))

    def calibration(self, logits: dict[str, Tensor]) -> Tensor | None:
        """The calibrator over consecutive binary tasks (None when it is off or no pair is binary)."""
        if self.calibrator_weight == 0:
            return None
        terms = [torch.relu(kind_of(b).predict(b, logits[b.name]) - kind_of(a).predict(a, logits[a.name])).mean(-1)
                 for a, b in zip(self.tasks, self.tasks[1:]) if kind_of(a).indicator and kind_of(b).indicator]
        return self.calibrator_weight * torch.stack(terms).sum(0) if terms else None

    def declare_ownership(self) -> dict[str, Owner]:
        # Task t's representation feeds every later task through the chain, so what builds it (its encoder, and
        # the transfer and unit in front of it) is shared with them; only the last task's are its own. Towers
        # are their task's.
        owners = super().declare_ownership()
        last = len(self.task_names) - 1
        mine = [f"encoders.{last}"] + ([f"transfers.{last - 1}", f"units.{last - 1}"] if last >= 1 else [])
        owners.update({n: self.task_names[last] for prefix in mine for n in self.names_under(prefix)})
        return owners
