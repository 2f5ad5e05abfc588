"""Task kinds: what a kind of task means for the model's outputs, the loss, the metrics and the labels.

One class per kind, looked up by the task's ``kind`` string (``kind_of(task)``), the way torchmetrics dispatches
on its ``task`` argument. Everything else (reading the ``tasks`` config, the Lightning module, the data
modules' label checks in memory and streamed, the leak scan, the synthetic data, AITM's calibrator, ``data
inspect``) asks the kind instead of branching on its name, so adding a kind is adding one class here;
``tests/test_kinds.py`` fails on a comparison with a kind's name anywhere else.

Partially observed labels (``observed_if``) are the module's business, not a kind's: a kind's loss and metrics
see only the rows it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, MulticlassAccuracy
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

from mtlexp.errors import MtlexpError
from mtlexp.metrics import CrossEntropyScore, MeanError, OneMinus, PoissonDeviance, original_units
from mtlexp.specs import INFER_CLASSES, TaskSpec


class LabelTally:
    """What the label checks need to know of one task's labels in one split, gathered whole (``update`` once) or
    part by part (a streamed file's row groups), so that both paths check the same things with the same
    messages. Kinds with checks of their own subclass it (``add``, ``verify``)."""

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self.observed = 0
        self.unobserved_labels = 0  # labels other than 0 where observed_if's task is 0
        self.nonfinite = 0

    def update(self, labels: Tensor | np.ndarray, observed: Tensor | np.ndarray | None = None) -> None:
        """Take in a part of the split's labels; ``observed``: the rows whose label is observed (None = all)."""
        labels = torch.as_tensor(labels)
        if observed is not None:
            observed = torch.as_tensor(observed)
            self.unobserved_labels += int((labels[~observed] != 0).sum())
            labels = labels[observed]
        self.observed += labels.numel()
        self.nonfinite += count_nonfinite(labels)
        self.add(labels)

    def add(self, labels: Tensor) -> None:
        """Take in observed labels (finite or not: the finiteness check comes first)."""

    def check(self, split: str) -> None:
        """Fail on labels that would train silently wrong, in the order the problems should be fixed."""
        task = self.task
        if task.observed_if is not None:
            where = f"{task.observed_if} = 1"
            if self.observed == 0:
                raise MtlexpError(f"tasks.{task.name}: the {split} split has no row where {where}, so no observed "
                                  "label")
            if self.unobserved_labels:
                column = f" (column {task.column!r})" if task.column else ""
                raise MtlexpError(
                    f"tasks.{task.name}{column}: {self.unobserved_labels} row(s) of the {split} split have a label "
                    f"where {task.observed_if} = 0; it is observed only where {where} (observed_if), so it must be "
                    "0 there"
                )
        check_finite_labels(task, self.nonfinite, split)
        self.verify(split)

    def verify(self, split: str) -> None:
        """The kind's own checks, on finite observed labels."""


class TaskKind:
    """The behaviour of one kind of task. Subclasses set ``name`` and override what differs."""

    name: ClassVar[str]
    #: labels are quantities (a mean and a correlation with other labels mean something)
    quantitative: ClassVar[bool] = True
    #: labels are named classes, whose names (and number) the data module collects from the data
    named_classes: ClassVar[bool] = False
    #: labels are 0/1 events: another task can be observed only where this one is 1 (``observed_if``), a
    #: ``product`` of such tasks is one too, and their probabilities can be compared (AITM's calibrator)
    indicator: ClassVar[bool] = False
    #: the config may ask for the label to be standardised (``standardize``)
    standardizable: ClassVar[bool] = False
    #: the synthetic data can make its labels (``labels_from_signal``)
    simulated: ClassVar[bool] = False
    #: how the label checks gather what they need
    tally: ClassVar[type[LabelTally]] = LabelTally

    # --- the task's config ----------------------------------------------------------------------------
    def num_classes_from_config(self, name: str, value: object) -> int:
        """The task's ``num_classes`` from its config value (None when absent); ignored by default."""
        return 1

    def check_spec(self, task: TaskSpec) -> None:
        """Fail on a combination of config keys this kind cannot honour."""

    def output_dim(self, task: TaskSpec) -> int:
        """Logits the model emits for the task."""
        return 1

    def loss(self, task: TaskSpec, logits: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
        """The training loss: per row, shape (N,), or its mean (``reduction="mean"``, one autograd node less)."""
        raise NotImplementedError

    def predict(self, task: TaskSpec, logits: Tensor) -> Tensor:
        """What the metrics read: values in the label's units, or probabilities (AUROC needs them)."""
        raise NotImplementedError

    def metric_target(self, task: TaskSpec, target: Tensor) -> Tensor:
        """The labels as the metrics take them."""
        return target

    def metrics(self, task: TaskSpec) -> dict[str, Metric]:
        """The task's metrics by name; every kind has ``norm_loss`` (docs/metrics.md)."""
        raise NotImplementedError

    def truth_metrics(self, task: TaskSpec) -> dict[str, tuple[Metric, str]]:
        """Metrics against what only a simulator knows, over every row (``TaskSpec.truth``): by name, the metric
        and the truth it reads (``propensity`` or ``outcome``). None by default."""
        return {}

    def check_labels(self, task: TaskSpec, labels: Tensor, split: str, observed: Tensor | None = None) -> None:
        """Fail clearly on labels that would train silently wrong: one split's, whole (``observed``: the rows whose
        label is observed, None = all)."""
        tally = self.tally(task)
        tally.update(labels, observed)
        tally.check(split)

    def describe_labels(self, task: TaskSpec, labels: Tensor) -> str:
        """One short phrase about a split's labels (``mtlexp data inspect``)."""
        values = labels.double()
        return f"mean {float(values.mean()):.4g} sd {float(values.std()):.4g}"

    # --- labels from a table column (the tabular data modules) --------------------------------------
    def reads_strings(self, task: TaskSpec) -> bool:
        """Whether the label column is read as strings (class names, ``positive`` values), not numbers."""
        return False

    def labels_from_numbers(self, task: TaskSpec, values: np.ndarray) -> np.ndarray:
        """Labels from a numeric column, NaN where the value is missing."""
        return values.astype(np.float32)

    def labels_from_strings(self, task: TaskSpec, codes: np.ndarray, values: np.ndarray, classes: Sequence[str],
                            where: str, whole_file: bool) -> np.ndarray:
        """Labels from a string column (``codes`` into the distinct ``values``, -1 = missing): NaN or -1 where
        missing. ``where`` names the column and file for errors; ``whole_file``: ``codes`` is a whole file."""
        raise NotImplementedError

    def check_value_counts(self, task: TaskSpec, counts: dict[str, int], where: str) -> None:
        """Fail on a string label column whose values (with their row counts, over the whole file) cannot make
        this task's labels; ``where`` names the column and file."""

    # --- the data ------------------------------------------------------------------------------------
    def leak_score(self, task: TaskSpec, prediction: np.ndarray, labels: np.ndarray, fitted: bool
                   ) -> tuple[str, float] | None:
        """How well ``prediction`` (one feature alone, per row) predicts the finite ``labels``: the name of the
        measure and its value, near 1 for a leak; None when this kind is not scanned. ``fitted``: the prediction
        was fitted to the labels (its direction is known), else either direction counts. The squared Pearson
        correlation by default, which needs no direction."""
        if prediction.std() == 0 or labels.std() == 0:
            return "r2", 0.0
        return "r2", float(np.corrcoef(prediction, labels)[0, 1] ** 2)

    def labels_from_signal(self, task: TaskSpec, signal: Tensor) -> Tensor:
        """The synthetic data's labels from a real signal per row (float64), when ``simulated``."""
        raise NotImplementedError


class Regression(TaskKind):
    name = "regression"
    standardizable = True
    simulated = True

    def labels_from_signal(self, task: TaskSpec, signal: Tensor) -> Tensor:
        return signal.float().contiguous()

    def loss(self, task: TaskSpec, logits: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
        return F.mse_loss(logits, target, reduction=reduction)

    def predict(self, task: TaskSpec, logits: Tensor) -> Tensor:
        return original_units(task, logits)

    def metric_target(self, task: TaskSpec, target: Tensor) -> Tensor:
        return original_units(task, target)

    def metrics(self, task: TaskSpec) -> dict[str, Metric]:
        return {"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "r2": R2Score(),
                "norm_loss": OneMinus(R2Score())}


class BinaryTally(LabelTally):
    """Binary labels: whether any is not 0/1, the smallest distinct values (for the message) and the positives."""

    SHOWN = 5

    def __init__(self, task: TaskSpec) -> None:
        super().__init__(task)
        self.not_binary = 0
        self.positives = 0.0
        self.smallest = torch.empty(0)

    def add(self, labels: Tensor) -> None:
        self.not_binary += int((~((labels == 0) | (labels == 1))).sum())
        self.positives += float(labels.double().sum())
        self.smallest = torch.unique(torch.cat([self.smallest.to(labels.dtype), torch.unique(labels)]))[:self.SHOWN]

    def verify(self, split: str) -> None:
        task = self.task
        if self.not_binary:
            raise MtlexpError(f"tasks.{task.name}: binary labels must be 0/1, got values {self.smallest.tolist()}")
        if self.positives in (0, self.observed):
            observed = f" on the rows where {task.observed_if} = 1" if task.observed_if else ""
            raise MtlexpError(
                f"tasks.{task.name}: the {split} split has only class {int(self.positives > 0)}{observed}; "
                "AUROC and log-loss need both classes"
            )


class Binary(TaskKind):
    name = "binary"
    indicator = True
    tally = BinaryTally

    def check_spec(self, task: TaskSpec) -> None:
        if task.positive and task.threshold is not None:
            raise MtlexpError(f"tasks.{task.name}: give either positive or threshold, not both")

    def loss(self, task: TaskSpec, logits: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)

    def predict(self, task: TaskSpec, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)

    def metric_target(self, task: TaskSpec, target: Tensor) -> Tensor:
        return target.long()

    def metrics(self, task: TaskSpec) -> dict[str, Metric]:
        return {"auroc": BinaryAUROC(), "logloss": CrossEntropyScore(2),
                "norm_loss": CrossEntropyScore(2, normalize=True), "accuracy": BinaryAccuracy()}

    def truth_metrics(self, task: TaskSpec) -> dict[str, tuple[Metric, str]]:
        # Over the entire impression space: AUC against the outcome every row would have had (the conversion
        # of an unclicked impression included), and the mean predicted probability minus the true one.
        return {"auroc_entire": (BinaryAUROC(), "outcome"), "pcvr_bias": (MeanError(), "propensity")}

    def describe_labels(self, task: TaskSpec, labels: Tensor) -> str:
        return f"{100 * float(labels.float().mean()):.2f}% positive"

    def reads_strings(self, task: TaskSpec) -> bool:
        return bool(task.positive)

    def labels_from_numbers(self, task: TaskSpec, values: np.ndarray) -> np.ndarray:
        if task.threshold is None:
            return values.astype(np.float32)
        return np.where(np.isnan(values), np.nan, values > task.threshold).astype(np.float32)

    def labels_from_strings(self, task: TaskSpec, codes: np.ndarray, values: np.ndarray, classes: Sequence[str],
                            where: str, whole_file: bool) -> np.ndarray:
        positive = np.isin(values, [p.strip() for p in task.positive]).astype(np.float32)
        if whole_file and not positive.any():
            counts = np.bincount(codes[codes >= 0], minlength=len(values))
            self.check_value_counts(task, dict(zip(values.tolist(), counts.tolist())), where)
        return np.where(codes < 0, np.float32(np.nan), positive[np.maximum(codes, 0)]).astype(np.float32)

    def check_value_counts(self, task: TaskSpec, counts: dict[str, int], where: str) -> None:
        if task.positive and not any(counts.get(p.strip(), 0) for p in task.positive):
            common = sorted(counts.items(), key=lambda item: -item[1])[:5]
            listed = ", ".join(f"{value!r} ({count})" for value, count in common)
            raise MtlexpError(f"tasks.{task.name}.positive: no value of {where} is one of "
                              f"{[p.strip() for p in task.positive]}; its most frequent values are {listed}")

    def leak_score(self, task: TaskSpec, prediction: np.ndarray, labels: np.ndarray, fitted: bool
                   ) -> tuple[str, float] | None:
        # AUC ranks: an ID-like or thresholded feature that separates the classes scores 1 whatever its scale
        unique, inverse = np.unique(prediction, return_inverse=True)
        positives = np.bincount(inverse, labels, len(unique))
        auc = grouped_auc(unique, positives, np.bincount(inverse, minlength=len(unique)) - positives)
        return "auc", auc if fitted else max(auc, 1.0 - auc)


class MulticlassTally(LabelTally):
    """Class indices: the smallest and the largest."""

    def __init__(self, task: TaskSpec) -> None:
        super().__init__(task)
        self.low: int | None = None
        self.high: int | None = None

    def add(self, labels: Tensor) -> None:
        if labels.numel():
            low, high = int(labels.min()), int(labels.max())
            self.low = low if self.low is None else min(self.low, low)
            self.high = high if self.high is None else max(self.high, high)

    def verify(self, split: str) -> None:
        task = self.task
        if self.low is None or self.high is None:
            return
        if self.low < 0 or self.high >= task.num_classes:
            raise MtlexpError(
                f"tasks.{task.name}: class indices must lie in [0, {task.num_classes}), got [{self.low}, "
                f"{self.high}]; set tasks.{task.name}.num_classes to at least {self.high + 1}, or leave it out to "
                "count the classes"
            )


class Multiclass(TaskKind):
    name = "multiclass"
    quantitative = False  # class indices are not quantities: no mean, no correlation
    named_classes = True
    tally = MulticlassTally

    def num_classes_from_config(self, name: str, value: object) -> int:
        if value is None:
            return INFER_CLASSES
        if not isinstance(value, int) or value < 2:
            raise MtlexpError(f"tasks.{name}.num_classes: expected an integer >= 2 (or leave it out to count the "
                              f"classes in the data), got {value!r}")
        return int(value)

    def output_dim(self, task: TaskSpec) -> int:
        return task.num_classes

    def loss(self, task: TaskSpec, logits: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
        return F.cross_entropy(logits, target, reduction=reduction)

    def predict(self, task: TaskSpec, logits: Tensor) -> Tensor:
        return torch.softmax(logits, dim=-1)

    def metrics(self, task: TaskSpec) -> dict[str, Metric]:
        return {"accuracy": MulticlassAccuracy(task.num_classes, average="micro"),
                "logloss": CrossEntropyScore(task.num_classes),
                "norm_loss": CrossEntropyScore(task.num_classes, normalize=True)}

    def describe_labels(self, task: TaskSpec, labels: Tensor) -> str:
        counts = torch.bincount(labels.long(), minlength=task.num_classes).double() / max(1, labels.numel())
        return " ".join(f"{c}:{100 * float(p):.1f}%" for c, p in enumerate(counts))

    def reads_strings(self, task: TaskSpec) -> bool:
        return True

    def labels_from_strings(self, task: TaskSpec, codes: np.ndarray, values: np.ndarray, classes: Sequence[str],
                            where: str, whole_file: bool) -> np.ndarray:
        index = {v: i for i, v in enumerate(classes)}
        return np.array([index.get(v, -1) for v in values] + [-1], dtype=np.int64)[codes]

    def leak_score(self, task: TaskSpec, prediction: np.ndarray, labels: np.ndarray, fitted: bool
                   ) -> tuple[str, float] | None:
        return None  # a mean of class indices predicts nothing, so a per-feature score would be noise


class CountTally(LabelTally):
    """Counts: the first label that is not a non-negative integer."""

    def __init__(self, task: TaskSpec) -> None:
        super().__init__(task)
        self.bad: float | None = None

    def add(self, labels: Tensor) -> None:
        if self.bad is None:
            labels = labels.double()
            bad = labels[torch.isfinite(labels) & ((labels < 0) | (labels != labels.round()))]
            self.bad = float(bad[0]) if bad.numel() else None

    def verify(self, split: str) -> None:
        if self.bad is not None:
            raise MtlexpError(f"tasks.{self.task.name}: count labels must be non-negative integers, got "
                              f"{self.bad:g} in the {split} split")


class Count(TaskKind):
    """Non-negative integer labels (purchases, dwell-time buckets) under a Poisson model: the single logit is the
    log of the rate, so the rate is positive without a constraint.

    The loss is the Poisson negative log-likelihood without its ``log(y!)`` term (``full=False``): that term does
    not depend on the model, so gradients are the same, and torch's ``full=True`` replaces it by Stirling's
    approximation, not by the term itself. ``norm_loss`` is the mean Poisson deviance over that of predicting the
    split's mean count, the same "relative to the best constant" as the other kinds (``PoissonDeviance``).
    """

    name = "count"
    tally = CountTally

    def loss(self, task: TaskSpec, logits: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
        return F.poisson_nll_loss(logits, target, log_input=True, full=False, reduction=reduction)

    def predict(self, task: TaskSpec, logits: Tensor) -> Tensor:
        return torch.exp(logits)

    def metrics(self, task: TaskSpec) -> dict[str, Metric]:
        return {"deviance": PoissonDeviance(), "mae": MeanAbsoluteError(), "norm_loss": PoissonDeviance(normalize=True)}


def count_nonfinite(labels: Tensor | np.ndarray) -> int:
    """How many labels are NaN or infinite (class indices never are)."""
    labels = torch.as_tensor(labels)
    return int((~torch.isfinite(labels)).sum()) if labels.is_floating_point() else 0


def check_finite_labels(task: TaskSpec, count: int, split: str) -> None:
    """Fail when ``count`` labels of a split are NaN or infinite: the in-memory check of a split's labels and the
    streaming pass (which counts them over the whole file) give the same message."""
    if count:
        raise MtlexpError(f"tasks.{task.name}: {count} NaN/inf label(s) in the {split} split")


def grouped_auc(scores: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> float:
    """ROC AUC of a score that is constant within groups (ties count half), from per-group counts."""
    unique, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(inverse, positives, len(unique))
    neg = np.bincount(inverse, negatives, len(unique))
    if pos.sum() == 0 or neg.sum() == 0:
        return 0.5
    below = np.cumsum(neg) - neg
    return float((pos * below + 0.5 * pos * neg).sum() / (pos.sum() * neg.sum()))


KINDS: dict[str, TaskKind] = {kind.name: kind() for kind in (Regression, Binary, Multiclass, Count)}


def kind_of(task: TaskSpec) -> TaskKind:
    """The kind of a task (its ``kind`` was checked against ``KINDS`` when the spec was made)."""
    return KINDS[task.kind]


def task_loss(task: TaskSpec, logits: Tensor, target: Tensor, weight: Tensor | None = None,
              observed: Tensor | None = None) -> Tensor:
    """The training loss of one task: the mean over the rows (sample-weighted with ``weight``) whose label is
    observed (``observed``: a boolean row mask; None = every row). A batch with no observed row gives 0, with
    a zero gradient: such a row contributes nothing to the loss or to any gradient."""
    kind = kind_of(task)
    if weight is None and observed is None:
        return kind.loss(task, logits, target, reduction="mean")
    losses = kind.loss(task, logits, target)
    weight = torch.ones_like(losses) if weight is None else weight.to(losses)
    if observed is not None:  # where(), not a product: an unobserved row's loss may be anything, inf included
        losses, weight = torch.where(observed, losses, 0.0), torch.where(observed, weight, 0.0)
    return (losses * weight).sum() / weight.sum().clamp_min(torch.finfo(losses.dtype).tiny)


def task_metrics(task: TaskSpec) -> MetricCollection:
    """The metric collection of one task."""
    # compute_groups would merge metrics by state; explicit keys keep names as "{task}/{metric}".
    return MetricCollection(kind_of(task).metrics(task), compute_groups=False)


def product_logit(logits: list[Tensor]) -> Tensor:
    """The logit of the product of the probabilities ``sigmoid(z_i)``, from log-probabilities: a derived task
    (``ctcvr`` = click x conversion) trains with binary cross-entropy on that product itself, stable where
    the probabilities saturate (the logits are never added as if they were one task's)."""
    log_p = sum(F.logsigmoid(z) for z in logits)
    # log p rounding to 0 (both logits beyond ~100) would give log(1 - p) = -inf: keep it the smallest step below
    log_p = log_p.clamp(max=-torch.finfo(log_p.dtype).tiny)
    # log(1 - p) two ways, each accurate on its side of p = 1/2; each branch gets inputs that are safe for it,
    # because where() differentiates both and an infinite branch would turn the gradient into NaN
    near_one = log_p > -0.6931
    log_not_p = torch.where(near_one, torch.log(-torch.expm1(torch.where(near_one, log_p, -1.0))),
                            torch.log1p(-torch.exp(torch.where(near_one, -1.0, log_p))))
    return log_p - log_not_p


def derive_labels(tasks: list[TaskSpec], labels: dict[str, Tensor]) -> None:
    """Add the labels of derived tasks (``product``: the AND of binary labels) to ``labels``, in place."""
    for task in tasks:
        if task.derived and task.name not in labels:
            label = labels[task.product[0]]
            for other in task.product[1:]:
                label = label * labels[other]
            labels[task.name] = label


def observed_rows(task: TaskSpec, labels: dict[str, Tensor]) -> Tensor | None:
    """The rows whose label of ``task`` is observed (``observed_if``), or None when every row's is."""
    return None if task.observed_if is None else labels[task.observed_if] > 0.5
