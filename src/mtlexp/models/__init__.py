"""Multi-task architectures, each a short composition of the blocks in ``mtlexp.models.blocks`` and
``mtlexp.models.gates``.

The names exported here are the public, stable import paths that configs use as ``_target_``
(``mtlexp.models.MMoE``): files inside the package may move, these names stay. A model *configuration* is
named by its config file (``model=omoe``), recorded as ``_name_`` in the config and as ``model`` in
``metrics.json``; see ``mtlexp.models.names``.
"""

from mtlexp.models.aitm import AITM
from mtlexp.models.base import AUX_ONLY, SHARED, MTLModel, MTLOutput, TaskSlices
from mtlexp.models.cross_stitch import CrossStitch
from mtlexp.models.entire_space import EntireSpace
from mtlexp.models.gates import DSelectKGate, NoisyTopKGate, SoftmaxGate
from mtlexp.models.mmoe import MMoE
from mtlexp.models.penalties import L2Distance, TraceNorm
from mtlexp.models.ple import PLE
from mtlexp.models.shared_bottom import SharedBottom
from mtlexp.models.single_task import SingleTask
from mtlexp.models.tensor_factorization import TensorFactorization

__all__ = [
    "AITM",
    "AUX_ONLY",
    "SHARED",
    "PLE",
    "CrossStitch",
    "DSelectKGate",
    "EntireSpace",
    "L2Distance",
    "MMoE",
    "MTLModel",
    "MTLOutput",
    "NoisyTopKGate",
    "SharedBottom",
    "SingleTask",
    "SoftmaxGate",
    "TaskSlices",
    "TensorFactorization",
    "TraceNorm",
]
