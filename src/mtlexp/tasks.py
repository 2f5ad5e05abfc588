"""Task specs: the one vocabulary that data, models, the Lightning module and reports share.

A task is described by data (name, kind, and where its label comes from), never by code. The closed
vocabulary of kinds maps each kind to its loss and its metrics here, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mtlexp.errors import MtlexpError

KINDS = ("regression", "binary", "multiclass")
# num_classes of a multiclass task whose config leaves it out: the data module counts the classes.
INFER_CLASSES = 0


@dataclass(frozen=True)
class TaskSpec:
    """One task.

    :param name: key of the task everywhere (model outputs, labels, metric names ``{split}/{name}/{metric}``).
    :param kind: ``regression``, ``binary`` or ``multiclass``.
    :param num_classes: classes of a multiclass task (1 output otherwise); ``INFER_CLASSES`` until the data
        module has counted them.
    :param column: source column of the label in a table (tabular data only).
    :param positive: for a binary task read from a column: the value(s) that count as positive.
    :param threshold: for a binary task read from a numeric column: label = column > threshold.
    :param standardize: a regression task trains on its label standardised with the training mean and sd
        (so a label in large units does not dominate the other tasks); metrics stay in the original units.
    :param label_shift, label_scale: that mean and sd, filled in by the data module (0 and 1 otherwise).
    """

    name: str
    kind: str
    num_classes: int = 1
    column: str | None = None
    positive: tuple[str, ...] = field(default_factory=tuple)
    threshold: float | None = None
    standardize: bool = False
    label_shift: float = 0.0
    label_scale: float = 1.0

    @property
    def output_dim(self) -> int:
        """Number of logits the model emits for this task."""
        if self.kind == "multiclass" and self.num_classes == INFER_CLASSES:
            raise MtlexpError(f"tasks.{self.name}.num_classes: not set, and this data set cannot count the classes; "
                              "set it")
        return self.num_classes if self.kind == "multiclass" else 1

    @classmethod
    def from_config(cls, name: str, node: Mapping[str, Any] | None) -> TaskSpec:
        """Build from one entry of the ``tasks`` config node, with errors naming ``tasks.<name>.<key>``."""
        node = dict(node or {})
        known = {"kind", "num_classes", "column", "positive", "threshold", "standardize"}
        unknown = sorted(set(node) - known)
        if unknown:
            raise MtlexpError(f"tasks.{name}.{unknown[0]}: unknown key; expected one of {sorted(known)}")
        kind = node.get("kind")
        if kind not in KINDS:
            raise MtlexpError(f"tasks.{name}.kind: expected one of {list(KINDS)}, got {kind!r}")
        num_classes = node.get("num_classes")
        if kind == "multiclass" and num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise MtlexpError(f"tasks.{name}.num_classes: expected an integer >= 2 (or leave it out to count the "
                              f"classes in the data), got {num_classes!r}")
        positive = node.get("positive") or ()
        if isinstance(positive, str):
            positive = (positive,)
        threshold = node.get("threshold")
        if threshold is not None and not isinstance(threshold, (int, float)):
            raise MtlexpError(f"tasks.{name}.threshold: expected a number, got {threshold!r}")
        standardize = node.get("standardize", False)
        if not isinstance(standardize, bool) or (standardize and kind != "regression"):
            raise MtlexpError(f"tasks.{name}.standardize: expected true or false, and true only for a regression "
                              f"task, got {standardize!r} for a {kind} task")
        return cls(
            name=name,
            standardize=standardize,
            kind=kind,
            num_classes=(int(num_classes) if num_classes is not None else INFER_CLASSES) if kind == "multiclass" else 1,
            column=node.get("column"),
            positive=tuple(str(p) for p in positive),
            threshold=None if threshold is None else float(threshold),
        )


def tasks_from_config(node: Mapping[str, Any] | None) -> list[TaskSpec]:
    """The ``tasks`` config node (``{name: {kind: ..., ...}}``) as task specs, in config order."""
    if not node:
        raise MtlexpError("tasks: expected at least one task, got none")
    return [TaskSpec.from_config(str(name), spec) for name, spec in node.items()]
