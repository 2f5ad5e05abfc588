"""What every architecture returns and exposes: logits keyed by task, gate weights, the shared parameters."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from mtlexp.data.features import FeatureSpec
from mtlexp.models.blocks import InputBlock, TaskTowers
from mtlexp.tasks import TaskSpec


@dataclass
class MTLOutput:
    """A forward pass of a multi-task model.

    :param logits: ``{task: (B,) or (B, C)}``: raw scores, never probabilities, so losses stay stable under
        mixed precision (BCE-with-logits, cross-entropy).
    :param gates: ``{task: (B, E)}`` the expert weights each task used, for models with gates.
    :param aux_loss: an auxiliary loss the model wants added to the task losses (load balancing of sparse
        gates, later); ``None`` when there is none.
    """

    logits: dict[str, Tensor]
    gates: dict[str, Tensor] = field(default_factory=dict)
    aux_loss: Tensor | None = None


class MTLModel(nn.Module):
    """Base of the architectures: input block and task towers, plus the parameter split that gradient
    weighting methods need (``shared_parameters`` vs ``task_parameters``).

    :param features: the data's feature spec (filled in by the train function, never written in YAML).
    :param tasks: the task specs (likewise).
    :param tower_hidden: hidden widths of every task tower.
    :param dropout: dropout after every hidden layer.
    """

    def __init__(
        self, features: FeatureSpec, tasks: Sequence[TaskSpec], tower_hidden: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        self.task_names = [t.name for t in tasks]
        self.input = InputBlock(features)
        self._tower_args = (tasks, tower_hidden, dropout)

    def build_towers(self, input_dim: int) -> TaskTowers:
        tasks, hidden, dropout = self._tower_args
        return TaskTowers(input_dim, tasks, hidden, dropout)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters that only ``task``'s loss reaches (its tower, and its own bottom where it has one)."""
        yield from self.towers.towers[task].parameters()

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters that more than one task's loss reaches: where per-task gradients conflict."""
        own = {id(p) for name in self.task_names for p in self.task_parameters(name)}
        return [p for p in self.parameters() if id(p) not in own]

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        raise NotImplementedError
