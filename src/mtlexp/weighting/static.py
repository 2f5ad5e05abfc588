"""Static weighting: fixed per-task weights from the config."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlexp.errors import MtlexpError
from mtlexp.specs import TaskSpec
from mtlexp.weighting.base import LossWeighting, StepInputs


class StaticWeighting(LossWeighting):
    """``sum_t w_t L_t`` with weights fixed in the config.

    :param weights: ``{task: weight}`` (tasks left out weigh 1), or one weight per task in task order.
    """

    stack_refusal = None

    def __init__(self, tasks: Sequence[TaskSpec], weights: Mapping[str, float] | Sequence[float] | None = None,
                 seed: int = 0) -> None:
        super().__init__(tasks, seed)
        self.register_buffer("fixed", torch.tensor(self._resolve(weights), dtype=torch.float32), persistent=False)

    def _resolve(self, weights: Mapping[str, float] | Sequence[float] | None) -> list[float]:
        if weights is None:
            return [1.0] * self.num_tasks
        if isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(self.task_names))
            if unknown:
                raise MtlexpError(f"weighting.weights: unknown task {unknown[0]!r}; expected one of {self.task_names}")
            values = [weights.get(name, 1.0) for name in self.task_names]
        else:
            values = list(weights)
            if len(values) != self.num_tasks:
                raise MtlexpError(f"weighting.weights: expected {self.num_tasks} weights (one per task: "
                                  f"{self.task_names}), got {len(values)}")
        for name, value in zip(self.task_names, values):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise MtlexpError(f"weighting.weights.{name}: expected a finite number >= 0, got {value!r}")
        if not any(values):  # the run would "train" nothing and still report ok
            raise MtlexpError(f"weighting.weights: expected at least one weight > 0, got 0 for every task "
                              f"({', '.join(self.task_names)})")
        return [float(v) for v in values]

    def weights(self, inputs: StepInputs) -> Tensor:
        return self.fixed

    def fixed_weights(self) -> Tensor:
        return self.fixed
