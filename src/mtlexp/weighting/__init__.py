"""Loss weighting and gradient aggregation: how per-task losses become one update (``weighting=`` group).

The contract is in ``base``; each method is a module of its own. ``GradientAggregation`` is exported lazily:
importing torchjd costs seconds, which runs with a loss weighting should not pay.
"""

from __future__ import annotations

from typing import Any

from mtlexp.weighting.base import LossScalarization, LossWeighting, StepInputs, StepResult, Weighting
from mtlexp.weighting.db_mtl import DualBalancing
from mtlexp.weighting.dwa import DynamicWeightAverage
from mtlexp.weighting.equal import EqualWeighting
from mtlexp.weighting.excess_mtl import ExcessMTL
from mtlexp.weighting.famo import FAMO
from mtlexp.weighting.gls import GeometricLossStrategy
from mtlexp.weighting.gradients import SharedGradientWeighting
from mtlexp.weighting.gradnorm import GradNorm
from mtlexp.weighting.moco import MoCo
from mtlexp.weighting.modo import MoDo
from mtlexp.weighting.rgw import RandomGradientWeighting
from mtlexp.weighting.rlw import RandomLossWeighting
from mtlexp.weighting.sdmgrad import SDMGrad
from mtlexp.weighting.static import StaticWeighting
from mtlexp.weighting.stch import SmoothTchebycheff
from mtlexp.weighting.uncertainty import UncertaintyWeighting

__all__ = [
    "FAMO",
    "DualBalancing",
    "DynamicWeightAverage",
    "EqualWeighting",
    "ExcessMTL",
    "GeometricLossStrategy",
    "GradNorm",
    "GradientAggregation",
    "LossScalarization",
    "LossWeighting",
    "MoCo",
    "MoDo",
    "RandomGradientWeighting",
    "RandomLossWeighting",
    "SDMGrad",
    "SharedGradientWeighting",
    "SmoothTchebycheff",
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
