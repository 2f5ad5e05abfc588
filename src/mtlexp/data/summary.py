"""The training labels' summary (means, Pearson correlations) from accumulated sums, for both paths.

The in-memory path feeds it a split's label tensors at once; the streamed fitting pass feeds it row group by
row group (and reads the label scaling off the same sums). Either way ``metrics.json``'s ``data`` and
``mtlexp data inspect`` show the same quantities, computed the same way, derived tasks included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mtlexp.kinds import kind_of
from mtlexp.specs import TaskSpec


class LabelMoments:
    """Sums and cross-products of the quantitative labels (class indices are not quantities) of the rows fed."""

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        self.tasks = [t for t in tasks if kind_of(t).quantitative]
        self.rows = 0
        self.sums = np.zeros(len(self.tasks))
        self.products = np.zeros((len(self.tasks), len(self.tasks)))

    def add(self, labels: Mapping[str, Any], rows: int) -> None:
        ys = np.stack([np.asarray(labels[t.name], dtype=np.float64) for t in self.tasks]) if self.tasks \
            else np.zeros((0, rows))
        self.rows += rows
        self.sums += ys.sum(axis=1)
        self.products += ys @ ys.T

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.sums / self.rows
        return mean, self.products / self.rows - np.outer(mean, mean)

    def summary(self, means: np.ndarray | None = None) -> dict[str, Any]:
        """``label_mean`` (``means`` when given: the fitting pass reports them in the units the model trains on)
        and, for two labels or more, ``label_pearson``."""
        mean, cov = self.mean_cov()
        means = mean if means is None else means
        result: dict[str, Any] = {"label_mean": {t.name: float(means[i]) for i, t in enumerate(self.tasks)}}
        if len(self.tasks) >= 2:
            sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
            result["label_pearson"] = {
                f"{a.name}~{b.name}": float(cov[i, j] / (sd[i] * sd[j])) if sd[i] * sd[j] > 0 else float("nan")
                for i, a in enumerate(self.tasks) for j, b in enumerate(self.tasks) if i < j}
        return result
