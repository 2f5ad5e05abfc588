"""Task specs: the one vocabulary that data, models, the Lightning module and reports share.

A task is described by data (name, kind, and where its label comes from), never by code. What a kind means
(its loss, predictions, metrics and label checks) lives in ``mtlexp.kinds``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mtlexp.errors import MtlexpError

# num_classes of a multiclass task whose config leaves it out: the data module counts the classes.
INFER_CLASSES = 0

# Which way a metric improves, as metrics.json records it per task and metric: a larger value is better, a
# smaller one, or one nearer 0 (a bias). Declared by the metric objects (``mtlexp.metrics.direction``), read by
# the report; here because both sides share it and the report must not import torch.
MAX, MIN, ZERO = "max", "min", "zero"
DIRECTIONS = (MAX, MIN, ZERO)


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
    :param observed_if: the label is observed only where this other (binary) task's label is 1: a conversion
        is only seen after a click. Losses and metrics of the task use only those rows.
    :param truth: the data knows every row's true propensity and potential outcome (a simulator), so the task
        also gets truth-based metrics (``kinds``); set by the data module.
    :param product: a derived binary task, the AND of these binary tasks' labels (``ctcvr`` = click AND
        conversion), predicted as the product of their probabilities; it has no label column and no tower.
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
    observed_if: str | None = None
    product: tuple[str, ...] = field(default_factory=tuple)
    truth: bool = False

    @property
    def output_dim(self) -> int:
        """Number of logits the model emits for this task."""
        from mtlexp.kinds import kind_of  # kinds builds on task specs

        if self.num_classes == INFER_CLASSES:
            raise MtlexpError(f"tasks.{self.name}.num_classes: not set, and this data set cannot count the classes; "
                              "set it")
        return kind_of(self).output_dim(self)

    @property
    def derived(self) -> bool:
        """Predicted from other tasks' outputs (``product``), not by a tower of its own."""
        return bool(self.product)

    @classmethod
    def from_config(cls, name: str, node: Mapping[str, Any] | None) -> TaskSpec:
        """Build from one entry of the ``tasks`` config node, with errors naming ``tasks.<name>.<key>``."""
        node = dict(node or {})
        from mtlexp.kinds import KINDS  # kinds builds on task specs

        known = {"kind", "num_classes", "column", "positive", "threshold", "standardize", "observed_if", "product"}
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
        observed_if = node.get("observed_if")
        if observed_if is not None and not isinstance(observed_if, str):
            raise MtlexpError(f"tasks.{name}.observed_if: expected the name of another task, got {observed_if!r}")
        product = node.get("product") or ()
        if product and (not isinstance(product, (list, tuple)) or len(product) < 2
                        or not all(isinstance(p, str) for p in product)):
            raise MtlexpError(f"tasks.{name}.product: expected a list of two or more task names, got {product!r}")
        if product and kind != "binary":
            raise MtlexpError(f"tasks.{name}.product: a product of probabilities is a binary task, got kind {kind!r}")
        return cls(
            name=name,
            observed_if=observed_if,
            product=tuple(product),
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
    return check_relations([TaskSpec.from_config(str(name), spec) for name, spec in node.items()])


def check_relations(tasks: list[TaskSpec]) -> list[TaskSpec]:
    """Tasks that name other tasks (``observed_if``, ``product``) name binary tasks that exist."""
    by_name = {t.name: t for t in tasks}
    for task in tasks:
        for key, others in (("observed_if", [task.observed_if] if task.observed_if else []), ("product", task.product)):
            for other in others:
                found = by_name.get(other)
                if found is None or other == task.name:
                    raise MtlexpError(f"tasks.{task.name}.{key}: expected another task of this run, got {other!r} "
                                      f"(tasks: {', '.join(by_name)})")
                if found.kind != "binary" or found.derived:
                    raise MtlexpError(f"tasks.{task.name}.{key}: {other!r} must be a binary task with a label of its "
                                      f"own, got a {'derived' if found.derived else found.kind} task")
    return tasks
