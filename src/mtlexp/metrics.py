"""Losses and metrics per task kind (the closed vocabulary of ``mtlexp.tasks``), all on torchmetrics.

Every task also gets ``norm_loss``: its loss divided by the loss of the best constant prediction on the
same split (regression: MSE / label variance = 1 - R^2; binary and multiclass: cross-entropy / entropy of
the label prior, the "normalized entropy" of click prediction). It is scale-free, 1 means no better than
predicting the prior and 0 is perfect, so the mean over tasks is a fair model-selection score across
tasks of different scales and kinds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, MulticlassAccuracy
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

from mtlexp.tasks import TaskSpec

_EPS = 1e-7


class CrossEntropyScore(Metric):
    """Mean cross-entropy (log-loss) of predicted class probabilities, or it normalised by the entropy of
    the split's own label prior (``normalize=True``). torchmetrics has no log-loss metric.

    ``update(probs, target)``: probs (N,) of the positive class for binary, (N, C) for multiclass.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, num_classes: int = 2, normalize: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.normalize = normalize
        self.add_state("loss_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("class_counts", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        if probs.dim() == 1:
            probs = torch.stack([1 - probs, probs], dim=-1)
        target = target.long()
        picked = probs.gather(1, target.unsqueeze(1)).squeeze(1).clamp(_EPS, 1.0)
        self.loss_sum += -picked.double().log().sum()
        self.class_counts += torch.bincount(target, minlength=self.num_classes).double()

    def compute(self) -> Tensor:
        n = self.class_counts.sum()
        loss = self.loss_sum / n
        if not self.normalize:
            return loss
        prior = (self.class_counts / n).clamp_min(_EPS)
        return loss / -(prior * prior.log()).sum()


class OneMinus(Metric):
    """``1 - metric``: turns R^2 into the regression ``norm_loss`` (MSE / variance)."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, metric: Metric) -> None:
        super().__init__()
        self.metric = metric

    def update(self, *args: Tensor) -> None:
        self.metric.update(*args)

    def compute(self) -> Tensor:
        return 1 - self.metric.compute()

    def reset(self) -> None:
        super().reset()
        self.metric.reset()


def task_loss(task: TaskSpec, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """The training loss of one task from its logits (mean over the batch, optionally sample-weighted)."""
    # Unweighted: the loss kernel's own mean, one autograd node less per task and step than mean() after.
    reduction = "mean" if weight is None else "none"
    if task.kind == "regression":
        loss = F.mse_loss(logits, target, reduction=reduction)
    elif task.kind == "binary":
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)
    else:
        loss = F.cross_entropy(logits, target, reduction=reduction)
    return loss if weight is None else (loss * weight).sum() / weight.sum()


def original_units(task: TaskSpec, values: Tensor) -> Tensor:
    """Regression values (predictions or labels) back in the label's own units (``standardize``)."""
    if task.label_scale == 1.0 and task.label_shift == 0.0:
        return values
    return values * task.label_scale + task.label_shift


def predictions(task: TaskSpec, logits: Tensor) -> Tensor:
    """What the metrics read: values in the label's units for regression, probabilities for classification
    (AUROC needs them)."""
    if task.kind == "regression":
        return original_units(task, logits)
    if task.kind == "binary":
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=-1)


def task_metrics(task: TaskSpec) -> MetricCollection:
    """The metric collection of one task; every kind includes ``norm_loss``."""
    if task.kind == "regression":
        metrics: dict[str, Metric] = {
            "mse": MeanSquaredError(),
            "mae": MeanAbsoluteError(),
            "r2": R2Score(),
            "norm_loss": OneMinus(R2Score()),
        }
    elif task.kind == "binary":
        metrics = {
            "auroc": BinaryAUROC(),
            "logloss": CrossEntropyScore(2),
            "norm_loss": CrossEntropyScore(2, normalize=True),
            "accuracy": BinaryAccuracy(),
        }
    else:
        metrics = {
            "accuracy": MulticlassAccuracy(task.num_classes, average="micro"),
            "logloss": CrossEntropyScore(task.num_classes),
            "norm_loss": CrossEntropyScore(task.num_classes, normalize=True),
        }
    # compute_groups would merge metrics by state; explicit keys keep names as "{task}/{metric}".
    return MetricCollection(metrics, compute_groups=False)
