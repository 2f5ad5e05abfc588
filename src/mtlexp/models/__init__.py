"""Multi-task architectures, each a short composition of the blocks in ``mtlexp.models.blocks`` and
``mtlexp.models.gates``.

The names exported here are the public, stable import paths that configs use as ``_target_``
(``mtlexp.models.MMoE``): files inside the package may move, these names stay. A model *configuration* is
named by its config file (``model=omoe``), recorded as ``_name_`` in the config and as ``model`` in
``metrics.json``; see ``mtlexp.models.names``.

The names are resolved on first use: ``mtlexp report`` reads model names (``mtlexp.models.names``) without
importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module of this package that defines it.
_EXPORTS = {
    "AITM": "aitm",
    "AUX_ONLY": "base",
    "SHARED": "base",
    "MTLModel": "base",
    "MTLOutput": "base",
    "TaskSlices": "base",
    "CrossStitch": "cross_stitch",
    "ConversionObjective": "entire_space",
    "EntireSpace": "entire_space",
    "ESCM2DR": "entire_space",
    "ESCM2IPS": "entire_space",
    "ESMM": "entire_space",
    "NaiveCVR": "entire_space",
    "DSelectKGate": "gates",
    "NoisyTopKGate": "gates",
    "SoftmaxGate": "gates",
    "MMoE": "mmoe",
    "L2Distance": "penalties",
    "TraceNorm": "penalties",
    "PLE": "ple",
    "SharedBottom": "shared_bottom",
    "SingleTask": "single_task",
    "TensorFactorization": "tensor_factorization",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
