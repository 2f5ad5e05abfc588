"""The model contract: what every architecture returns, and which task owns which parameter.

Every architecture is an ``MTLModel``: built from the data's feature spec and the task specs, it returns
an ``MTLOutput`` (logits keyed by task, the gate weights it used, an optional auxiliary loss) and declares
the *ownership* of each of its parameters:

* a task's name: only that task's loss reaches the parameter (its tower, its own column);
* ``TaskSlices``: a fused tensor whose slices along one dimension each belong to one task (one task's rows
  of a fused gate layer, one task's expert in a stacked bank); every entry is reached by at most one task;
* ``SHARED``: two or more tasks' losses reach it; this is where task gradients can conflict;
* ``AUX_ONLY``: no task loss reaches it, only the auxiliary loss (ESCM2-DR's imputation tower).

Ownership describes the task losses only: the auxiliary loss (penalties, gate balancing) may reach any
parameter. Gradient-weighting methods rely on this being exact (``tests/models/test_contract.py`` checks it against
per-task gradients for every model): ``shared_parameters()`` is what they aggregate, and a fused
``TaskSlices`` tensor gets each task's own gradient from the plain sum of task losses, because its slices
are disjoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from mtlexp.models.blocks import InputBlock, TaskTowers
from mtlexp.specs import FeatureSpec, TaskSpec


@dataclass
class MTLOutput:
    """A forward pass of a multi-task model.

    :param logits: ``{task: (B,) or (B, C)}``: raw scores, never probabilities, so losses stay stable under
        mixed precision (BCE-with-logits, cross-entropy).
    :param gates: ``{gate name: (B, E_g)}`` the expert weights each gate gave; the gate feeding a task's tower
        is named after the task. Widths may differ between gates (CGC/PLE).
    :param aux_loss: a loss the model adds to the task losses (a soft-sharing penalty, a gate's load-balancing
        or entropy term); ``None`` when there is none.
    :param extras: what the model's ``extra_loss`` needs beyond the logits (ESCM2-DR's imputed conversion
        logits), by name.
    """

    logits: dict[str, Tensor]
    gates: dict[str, Tensor] = field(default_factory=dict)
    aux_loss: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


SHARED = _Marker("SHARED")
AUX_ONLY = _Marker("AUX_ONLY")


@dataclass(frozen=True)
class TaskSlices:
    """A fused tensor split between tasks: ``slices[task]`` along ``dim`` belongs to ``task``."""

    dim: int
    slices: Mapping[str, slice]


Owner = str | TaskSlices | _Marker


def add_aux(*terms: Tensor | None) -> Tensor | None:
    """Sum of the auxiliary losses that are present (``None`` when none is)."""
    present = [t for t in terms if t is not None]
    return sum(present[1:], present[0]) if present else None


class MTLModel(nn.Module):
    """Base of the architectures: input block, task towers and the ownership bookkeeping.

    :param features: the data's feature spec (filled in by the train function, never written in YAML).
    :param tasks: the task specs (likewise).
    :param tower_hidden: hidden widths of every task tower.
    :param dropout: dropout after every hidden layer.
    """

    # The model config's name (``model=naive_cvr``), which errors must use: the user never typed the class or
    # its arguments. Set by the instantiation helper from ``_name_``; None for a model built by hand.
    config_name: str | None = None
    # Whether ``forward`` runs with a replica dimension (``mtlexp.models.blocks``); each architecture that does
    # says so, since a subclass's forward is its own.
    carries_replicas = False

    def __init__(
        self, features: FeatureSpec, tasks: Sequence[TaskSpec], tower_hidden: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.task_names = [t.name for t in tasks]
        self.input = InputBlock(features)
        self._tower_args = (tower_hidden, dropout)

    def build_towers(self, input_dim: int) -> TaskTowers:
        hidden, dropout = self._tower_args
        return TaskTowers(input_dim, self.tasks, hidden, dropout)

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        raise NotImplementedError

    # --- ownership ---------------------------------------------------------------------------------
    def declare_ownership(self) -> dict[str, Owner]:
        """Owners of the parameters that are not shared, by parameter name; architectures extend this.

        The base declares each task's tower as the task's own.
        """
        return {name: task for task in self.task_names for name in self.names_under(f"towers.towers.{task}")}

    def ownership(self) -> dict[str, Owner]:
        """The owner of every parameter, by name (undeclared ones are shared)."""
        declared = self.declare_ownership()
        names = [name for name, _ in self.named_parameters()]
        unknown = sorted(set(declared) - set(names))
        if unknown:
            raise ValueError(f"{type(self).__name__} declares owners of unknown parameters: {unknown}")
        owners: dict[str, Owner] = {name: declared.get(name, SHARED) for name in names}
        if len(self.task_names) == 1:  # nothing is reached by two tasks when there is one
            owners = {name: owner if owner is AUX_ONLY else self.task_names[0] for name, owner in owners.items()}
        return owners

    def names_under(self, prefix: str) -> list[str]:
        """Names of the parameters of the submodule (or the one parameter) at ``prefix``."""
        return [n for n, _ in self.named_parameters() if n == prefix or n.startswith(prefix + ".")]

    def indexed_by_task(self, prefix: str) -> dict[str, Owner]:
        """Submodule ``<prefix>.<t>`` (a ``ModuleList`` with one entry per task) is task t's."""
        return {n: task for t, task in enumerate(self.task_names) for n in self.names_under(f"{prefix}.{t}")}

    def sliced_by_task(self, prefix: str, dim: int = 0) -> dict[str, Owner]:
        """Every parameter under ``prefix`` split along ``dim`` into equal consecutive blocks, one per task in
        task order: a fused gate layer's rows (one gate per task), a per-task expert bank's experts."""
        params = dict(self.named_parameters())
        owners: dict[str, Owner] = {}
        for name in self.names_under(prefix):
            width, remainder = divmod(params[name].shape[dim], len(self.task_names))
            if remainder:
                raise ValueError(f"{name}: dimension {dim} ({params[name].shape[dim]}) does not split into tasks")
            owners[name] = TaskSlices(dim, {t: slice(i * width, (i + 1) * width) for i, t in enumerate(self.task_names)})
        return owners

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters that more than one task's loss reaches: where per-task gradients conflict."""
        owners = self.ownership()
        return [p for n, p in self.named_parameters() if owners[n] is SHARED]

    def aux_only_parameters(self) -> list[nn.Parameter]:
        """Parameters that only the auxiliary loss reaches (``AUX_ONLY``)."""
        owners = self.ownership()
        return [p for n, p in self.named_parameters() if owners[n] is AUX_ONLY]

    def last_shared_layer(self) -> list[nn.Parameter]:
        """The parameters of the last layer that every task reads (GradNorm's W). Architectures with one such
        layer name it; the default is every shared parameter, which is what GradNorm falls back to without it."""
        return self.shared_parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters (whole, or fused with a slice that is ``task``'s) that ``task``'s loss reaches alone."""
        owners = self.ownership()
        for name, param in self.named_parameters():
            owner = owners[name]
            if owner == task or (isinstance(owner, TaskSlices) and task in owner.slices):
                yield param

    # --- the objective ----------------------------------------------------------------------------
    def trained_tasks(self, tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
        """The tasks of the run (derived ones included) that get a loss; the others are predicted and
        evaluated only. Every task by default; click -> conversion objectives choose (``EntireSpace``)."""
        return list(tasks)

    def extra_loss(self, output: MTLOutput, labels: dict[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor | None:
        """A training loss beyond the task losses that needs the labels (ESCM2's counterfactual risk); added
        to the step's loss as ``aux_loss`` is. None by default."""
        return None

    # --- what a run records ------------------------------------------------------------------------
    def gate_experts(self) -> dict[str, list[str]]:
        """For every gate in ``MTLOutput.gates`` (all of them, always), the names of the experts its weights
        refer to, in order. The same name in two gates is the same expert; figures align gates on these
        names, and the Lightning module sizes its gate statistics from them."""
        return {}

    def diagnostics(self) -> dict[str, Tensor]:
        """Small learned quantities worth logging and writing to ``metrics.json`` (cross-stitch units, a
        penalty's value), by name; none by default."""
        return {}
