"""The metrics torchmetrics lacks, the units metrics are reported in, and which way a metric improves
(``direction``); which metric a task gets is its kind's (``mtlexp.kinds``).

Every task also gets ``norm_loss``: its loss divided by the loss of the best constant prediction on the
same split (regression: MSE / label variance = 1 - R^2; binary and multiclass: cross-entropy / entropy of
the label prior, the "normalized entropy" of click prediction; count: Poisson deviance / that of the mean
count). It is scale-free, 1 means no better than predicting the prior and 0 is perfect, so the mean over
tasks is a fair model-selection score across tasks of different scales and kinds.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from mtlexp.errors import MtlexpError
from mtlexp.specs import MAX, MIN, ZERO, TaskSpec

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
        if metric.higher_is_better is not True:  # else the declared direction above would be wrong
            raise ValueError(f"OneMinus: expected a higher-is-better metric, got {type(metric).__name__} "
                             f"(higher_is_better={metric.higher_is_better})")
        self.metric = metric

    def update(self, *args: Tensor) -> None:
        self.metric.update(*args)

    def compute(self) -> Tensor:
        return 1 - self.metric.compute()

    def reset(self) -> None:
        super().reset()
        self.metric.reset()


class PoissonDeviance(Metric):
    """Mean Poisson deviance of predicted rates against counts, ``2 (y log(y / mu) - y + mu)``, or it divided by the
    deviance of predicting the split's own mean count (``normalize=True``: the count kind's ``norm_loss``).

    torchmetrics' ``TweedieDevianceScore(power=1)`` is the same mean, but it has no normalised form and it refuses
    a rate that underflowed to 0; here such a rate gives an infinite deviance where a count is positive. The
    baseline needs only sums (``y log y``, ``y``, rows), as the mean's deviance is ``2 (sum y log y - S log(S/n))``
    (the ``- y + mean`` terms add to 0); all labels 0 make it 0, so ``norm_loss`` is then undefined (NaN or inf).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, normalize: bool = False) -> None:
        super().__init__()
        self.normalize = normalize
        for state in ("deviance_sum", "label_sum", "label_log_label_sum", "count"):
            self.add_state(state, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, rates: Tensor, target: Tensor) -> None:
        y, mu = target.double(), rates.double()
        y_log_y = torch.xlogy(y, y)
        self.deviance_sum += 2 * (y_log_y - torch.xlogy(y, mu) - y + mu).sum()
        self.label_sum += y.sum()
        self.label_log_label_sum += y_log_y.sum()
        self.count += y.numel()

    def compute(self) -> Tensor:
        deviance = self.deviance_sum / self.count
        if not self.normalize:
            return deviance
        baseline = 2 * (self.label_log_label_sum - torch.xlogy(self.label_sum, self.label_sum / self.count))
        return deviance / (baseline / self.count)


def original_units(task: TaskSpec, values: Tensor) -> Tensor:
    """Regression values (predictions or labels) back in the label's own units (``standardize``)."""
    if task.label_scale == 1.0 and task.label_shift == 0.0:
        return values
    return values * task.label_scale + task.label_shift


class MeanError(Metric):
    """The mean of ``preds - target``: the bias of predicted probabilities against true propensities."""

    higher_is_better = None  # torchmetrics' "neither": a bias is best at 0, on either side
    best_at_zero = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.total += (preds.double() - target.double()).sum()
        self.count += preds.numel()

    def compute(self) -> Tensor:
        return self.total / self.count


def direction(metric: Metric) -> str:
    """Which way ``metric`` improves (``MAX``, ``MIN`` or ``ZERO``), as the object declares it: torchmetrics'
    ``higher_is_better``, or ``best_at_zero`` for a metric best at 0, which torchmetrics has no word for."""
    if getattr(metric, "best_at_zero", False):
        return ZERO
    if metric.higher_is_better is None:
        raise MtlexpError(f"metric {type(metric).__name__} declares no direction: set its higher_is_better, or "
                          "best_at_zero = True for one best at 0")
    return MAX if metric.higher_is_better else MIN
