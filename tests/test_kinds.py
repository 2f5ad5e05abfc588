"""Task kinds as one registry; partially observed labels (observed_if); derived tasks (product)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc

import mtlexp
from mtlexp.data.base import check_labels
from mtlexp.errors import MtlexpError
from mtlexp.kinds import KINDS, derive_labels, kind_of, product_logit, task_loss, task_metrics
from mtlexp.metrics import direction
from mtlexp.report.stats import UNRECORDED_DIRECTIONS
from mtlexp.specs import DIRECTIONS, MIN, ZERO, TaskSpec
from mtlexp.tasks import output_dim, tasks_from_config

CLICK_CONVERSION = {
    "click": {"kind": "binary"},
    "conversion": {"kind": "binary", "observed_if": "click"},
    "ctcvr": {"kind": "binary", "product": ["click", "conversion"]},
}


def test_every_kind_is_one_registry_entry_that_the_config_accepts() -> None:
    assert set(KINDS) == {"regression", "binary", "multiclass", "count"}
    with pytest.raises(MtlexpError, match=r"tasks.t.kind: expected one of \['regression', 'binary', 'multiclass', "
                                          r"'count'\]"):
        tasks_from_config({"t": {"kind": "ordinal"}})
    for name, kind in KINDS.items():
        task = TaskSpec("t", name, num_classes=3 if name == "multiclass" else 1)
        assert kind_of(task) is kind and output_dim(task) == kind.output_dim(task)
        assert "norm_loss" in kind.metrics(task)


def test_every_metric_of_every_kind_declares_its_direction() -> None:
    declared = {}
    for name, kind in KINDS.items():
        task = TaskSpec("t", name, num_classes=3 if name == "multiclass" else 1, truth=True)
        metrics = {**kind.metrics(task), **{m: metric for m, (metric, _) in kind.truth_metrics(task).items()}}
        for metric_name, metric in metrics.items():
            assert direction(metric) in DIRECTIONS, (name, metric_name)
            declared.setdefault(metric_name, set()).add(direction(metric))
    assert declared["pcvr_bias"] == {ZERO} and declared["norm_loss"] == {MIN}
    assert all(len(directions) == 1 for directions in declared.values()), declared  # one name, one direction
    # The names old run folders are read by (they recorded no directions) say what the objects declare; a metric
    # newer than those folders is read from its run's record and needs no entry.
    assert {metric: declared[metric] for metric in UNRECORDED_DIRECTIONS} == \
        {metric: {d} for metric, d in UNRECORDED_DIRECTIONS.items()}


def test_product_logit_is_the_product_of_probabilities_and_its_loss_is_bce_on_it() -> None:
    a = torch.linspace(-40, 40, 81, dtype=torch.float32).repeat_interleave(81).requires_grad_()
    b = torch.linspace(-40, 40, 81, dtype=torch.float32).repeat(81).requires_grad_()
    logit = product_logit([a, b])
    p = torch.sigmoid(a.double()) * torch.sigmoid(b.double())
    torch.testing.assert_close(torch.sigmoid(logit).double(), p, rtol=1e-5, atol=1e-7)
    assert bool((torch.sigmoid(logit) <= torch.sigmoid(a) + 1e-7).all())  # ctcvr never exceeds ctr
    y = (torch.arange(a.numel()) % 2).float()
    loss = task_loss(TaskSpec("ctcvr", "binary", product=("a", "b")), logit, y)
    log_p = F.logsigmoid(a.double()) + F.logsigmoid(b.double())
    reference = -(y * log_p + (1 - y) * torch.log((-torch.expm1(log_p)).clamp_min(1e-300))).clamp_max(1e3)
    torch.testing.assert_close(loss.double(), reference.mean(), rtol=1e-4, atol=1e-4)
    loss.backward()
    assert bool(torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all())


def test_an_unobserved_row_contributes_nothing_to_loss_or_gradient() -> None:
    task = TaskSpec("conversion", "binary", observed_if="click")
    observed = torch.tensor([True, False, True, False])
    target = torch.tensor([1.0, 0.0, 0.0, 0.0])
    logits = torch.tensor([0.3, -1.0, 2.0, 5.0], requires_grad=True)
    loss = task_loss(task, logits, target, observed=observed)
    loss.backward()
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits[observed], target[observed]))
    assert logits.grad[~observed].abs().sum() == 0
    changed = torch.tensor([0.3, float("inf"), 2.0, -7.0], requires_grad=True)  # anything on unobserved rows
    torch.testing.assert_close(task_loss(task, changed, target, observed=observed), loss)
    none = torch.zeros(4, dtype=torch.bool)
    empty = task_loss(task, logits, target, observed=none)
    assert float(empty.detach()) == 0.0
    logits.grad = None
    empty.backward()
    assert logits.grad.abs().sum() == 0


def test_metrics_of_a_partially_observed_task_use_the_observed_rows() -> None:
    from mtlexp.module import MTLModule

    tasks = tasks_from_config(CLICK_CONVERSION)
    module = MTLModule.__new__(MTLModule)
    torch.nn.Module.__init__(module)
    module.tasks = tasks
    module.metrics = torch.nn.ModuleDict({"val_split": torch.nn.ModuleDict({t.name: task_metrics(t) for t in tasks})})
    torch.manual_seed(0)
    labels = {"click": (torch.rand(400) < 0.5).float()}
    labels["conversion"] = labels["click"] * (torch.rand(400) < 0.4).float()
    derive_labels(tasks, labels)
    logits = torch.randn(400)
    module._update_task_metrics("val", tasks[1], logits, labels)
    clicked = labels["click"] > 0
    expected = binary_auroc(torch.sigmoid(logits[clicked]), labels["conversion"][clicked].long())
    torch.testing.assert_close(module.metrics["val_split"]["conversion"].compute()["auroc"], expected)
    assert torch.equal(labels["ctcvr"], labels["click"] * labels["conversion"])


def test_label_checks_of_click_and_conversion_name_the_problem() -> None:
    tasks = {t.name: t for t in tasks_from_config(CLICK_CONVERSION)}
    click = torch.tensor([1.0, 1.0, 0.0, 0.0])
    with pytest.raises(MtlexpError, match=r"tasks.conversion: 1 row\(s\) of the train split have a label where click = 0"):
        check_labels(tasks["conversion"], {"click": click, "conversion": torch.tensor([1.0, 0.0, 1.0, 0.0])}, "train")
    with pytest.raises(MtlexpError, match="the val split has no row where click = 1, so no observed label"):
        check_labels(tasks["conversion"], {"click": torch.zeros(4), "conversion": torch.zeros(4)}, "val")
    with pytest.raises(MtlexpError, match="only class 0 on the rows where click = 1"):
        check_labels(tasks["conversion"], {"click": click, "conversion": torch.zeros(4)}, "test")
    check_labels(tasks["conversion"], {"click": click, "conversion": torch.tensor([1.0, 0.0, 0.0, 0.0])}, "train")


@pytest.mark.parametrize(("tasks", "message"), [
    ({"a": {"kind": "binary", "observed_if": "b"}}, "tasks.a.observed_if: expected another task of this run, got 'b'"),
    ({"a": {"kind": "binary"}, "r": {"kind": "regression", "observed_if": "a"}, "b": {"kind": "regression"},
      "c": {"kind": "binary", "observed_if": "b"}}, "tasks.c.observed_if: 'b' must be a binary task"),
    ({"a": {"kind": "binary"}, "p": {"kind": "binary", "product": ["a"]}}, "tasks.p.product: expected a list of two"),
    ({"a": {"kind": "binary"}, "b": {"kind": "binary"}, "p": {"kind": "regression", "product": ["a", "b"]}},
     "tasks.p.product: a product of probabilities is a binary task"),
])
def test_task_relations_are_checked(tasks: dict, message: str) -> None:
    with pytest.raises(MtlexpError, match=message):
        tasks_from_config(tasks)


def kind_comparisons(source: str) -> list[int]:
    """The lines of ``source`` that decide by a kind's name: a comparison with one (or with a collection holding
    one), a ``kind`` compared with a string or with another ``kind``, a lookup or a ``case`` by one. Decisions
    that belong to the kind's class."""
    def is_kind(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "kind") or (isinstance(node, ast.Name)
                                                                            and node.id == "kind")

    def strings(node: ast.AST) -> list[str]:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [v for e in node.elts for v in strings(e)]
        return [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []

    def names_a_kind(node: ast.AST) -> bool:
        return any(value in KINDS for value in strings(node))

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            kinds = sum(is_kind(o) for o in operands)
            if kinds >= 2 or any(names_a_kind(o) for o in operands) or (kinds and any(strings(o) for o in operands)):
                lines.append(node.lineno)
        elif (isinstance(node, ast.Subscript) and names_a_kind(node.slice)) or \
                (isinstance(node, ast.MatchValue) and names_a_kind(node.value)):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_no_kind_is_decided_by_its_name_outside_kinds() -> None:
    package = Path(mtlexp.__file__).parent
    seen = 'if t.kind == "binary" or kind in ("x",) or a.kind == b.kind: pass\nKINDS["multiclass"]\nname != "count"\n' \
        'match name:\n    case "regression": pass'
    assert kind_comparisons(seen) == [1, 2, 3, 5]  # the scan sees what it looks for
    assert kind_comparisons('if p.kind is inspect.Parameter.VAR_KEYWORD: add_state("count")') == []
    found = {str(path.relative_to(package)): lines for path in sorted(package.rglob("*.py"))
             if path != package / "kinds.py" and (lines := kind_comparisons(path.read_text()))}
    assert found == {}, f"decide these in a TaskKind method in kinds.py (file: lines): {found}"
