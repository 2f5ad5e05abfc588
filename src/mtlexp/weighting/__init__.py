"""Loss weighting and gradient aggregation: how per-task losses become one update (``weighting=`` group).

The contract is in ``base``; each method is a module of its own. ``GradientAggregation`` is exported lazily:
importing torchjd costs seconds, which runs with a loss weighting should not pay.
"""

from __future__ import annotations

from typing import Any

from mtlexp.weighting.base import LossWeighting, StepInputs, StepResult, Weighting
from mtlexp.weighting.dwa import DynamicWeightAverage
from mtlexp.weighting.equal import EqualWeighting
from mtlexp.weighting.gradnorm import GradNorm
from mtlexp.weighting.rlw import RandomLossWeighting
from mtlexp.weighting.static import StaticWeighting
from mtlexp.weighting.uncertainty import UncertaintyWeighting

__all__ = [
    "DynamicWeightAverage",
    "EqualWeighting",
    "GradNorm",
    "GradientAggregation",
    "LossWeighting",
    "RandomLossWeighting",
    "StaticWeighting",
    "StepInputs",
    "StepResult",
    "UncertaintyWeighting",
    "Weighting",
]


def __getattr__(name: str) -> Any:
    if name == "GradientAggregation":
        from mtlexp.weighting.aggregation import GradientAggregation

        return GradientAggregation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
