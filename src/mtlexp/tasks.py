"""Task specs from the config: the ``tasks`` node read, checked and related.

The specs themselves are plain data in ``mtlexp.specs``; a task is described by data (name, kind, and where
its label comes from), never by code. Reading one needs the kinds (``mtlexp.kinds``) to check its ``kind``,
which is why this sits above them and the specs below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtlexp.errors import MtlexpError
from mtlexp.kinds import KINDS, kind_of
from mtlexp.specs import INFER_CLASSES, TaskSpec



def output_dim(task: TaskSpec) -> int:
    """Number of logits the model emits for the task."""
    if task.num_classes == INFER_CLASSES:
        raise MtlexpError(f"tasks.{task.name}.num_classes: not set, and this data set cannot count the classes; "
                          "set it")
    return kind_of(task).output_dim(task)


def task_from_config(name: str, node: Mapping[str, Any] | None) -> TaskSpec:
    """One entry of the ``tasks`` config node as a task spec, with errors naming ``tasks.<name>.<key>``."""
    node = dict(node or {})
    known = {"kind", "num_classes", "column", "positive", "threshold", "standardize", "observed_if", "product"}
    unknown = sorted(set(node) - known)
    if unknown:
        raise MtlexpError(f"tasks.{name}.{unknown[0]}: unknown key; expected one of {sorted(known)}")
    kind = node.get("kind")
    if kind not in KINDS:
        raise MtlexpError(f"tasks.{name}.kind: expected one of {list(KINDS)}, got {kind!r}")
    behaviour = KINDS[kind]
    positive = node.get("positive") or ()
    if isinstance(positive, str):
        positive = (positive,)
    threshold = node.get("threshold")
    if threshold is not None and not isinstance(threshold, (int, float)):
        raise MtlexpError(f"tasks.{name}.threshold: expected a number, got {threshold!r}")
    standardize = node.get("standardize", False)
    if not isinstance(standardize, bool) or (standardize and not behaviour.standardizable):
        raise MtlexpError(f"tasks.{name}.standardize: expected true or false, and true only for a "
                          f"{kinds_that('standardizable')} task, got {standardize!r} for a {kind} task")
    observed_if = node.get("observed_if")
    if observed_if is not None and not isinstance(observed_if, str):
        raise MtlexpError(f"tasks.{name}.observed_if: expected the name of another task, got {observed_if!r}")
    product = node.get("product") or ()
    if product and (not isinstance(product, (list, tuple)) or len(product) < 2
                    or not all(isinstance(p, str) for p in product)):
        raise MtlexpError(f"tasks.{name}.product: expected a list of two or more task names, got {product!r}")
    if product and not behaviour.indicator:
        raise MtlexpError(f"tasks.{name}.product: a product of probabilities is a {kinds_that('indicator')} task, "
                          f"got kind {kind!r}")
    task = TaskSpec(
        name=name,
        observed_if=observed_if,
        product=tuple(product),
        standardize=standardize,
        kind=kind,
        num_classes=behaviour.num_classes_from_config(name, node.get("num_classes")),
        column=node.get("column"),
        positive=tuple(str(p) for p in positive),
        threshold=None if threshold is None else float(threshold),
    )
    behaviour.check_spec(task)
    return task


def kinds_that(capability: str) -> str:
    """The names of the kinds with ``capability`` (a flag of ``TaskKind``), for messages: "binary"."""
    return " or ".join(name for name, kind in KINDS.items() if getattr(kind, capability))


def tasks_from_config(node: Mapping[str, Any] | None) -> list[TaskSpec]:
    """The ``tasks`` config node (``{name: {kind: ..., ...}}``) as task specs, in config order."""
    if not node:
        raise MtlexpError("tasks: expected at least one task, got none")
    return check_relations([task_from_config(str(name), spec) for name, spec in node.items()])


def check_relations(tasks: list[TaskSpec]) -> list[TaskSpec]:
    """Tasks that name other tasks (``observed_if``, ``product``) name indicator (0/1) tasks that exist."""
    by_name = {t.name: t for t in tasks}
    for task in tasks:
        for key, others in (("observed_if", [task.observed_if] if task.observed_if else []), ("product", task.product)):
            for other in others:
                found = by_name.get(other)
                if found is None or other == task.name:
                    raise MtlexpError(f"tasks.{task.name}.{key}: expected another task of this run, got {other!r} "
                                      f"(tasks: {', '.join(by_name)})")
                if not kind_of(found).indicator or found.derived:
                    raise MtlexpError(f"tasks.{task.name}.{key}: {other!r} must be a {kinds_that('indicator')} task "
                                      f"with a label of its own, got a {'derived' if found.derived else found.kind} "
                                      "task")
    return tasks
