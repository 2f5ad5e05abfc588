"""Click and conversion over the entire impression space: ESMM, ESCM2 and the naive CVR baseline.

In recommendation a conversion is only observed after a click. A CVR model trained on clicked impressions
learns from a biased sample of the impressions it is later applied to (sample-selection bias) and from few
rows (data sparsity). ESMM (Ma et al., SIGIR 2018) trains over every impression instead: pCTCVR = pCTR x pCVR,
with losses on CTR and CTCVR only, so that CVR is learned through the product. ESCM2 (Wang et al., SIGIR 2022)
adds a counterfactual CVR risk over the entire space, inverse-propensity weighted by pCTR.

Here these are *objectives* over any zoo model (``bottom``: shared-bottom, MMoE, PLE, ...), which gives the
CTR and CVR towers over shared embeddings. The task set says which task is which (``tasks=click_conversion``):
the CVR task is ``observed_if`` the CTR task, and a derived task is their ``product`` (CTCVR), which the
Lightning module computes from the two towers. The objective chooses the losses:

* ``esmm``: CTR and CTCVR over all impressions; the CVR task has no loss of its own.
* ``naive``: CTR over all impressions and CVR over clicked impressions (its ``observed_if`` mask): the
  selection-biased baseline. CTCVR is still predicted and evaluated, not trained.
* ``escm2_ips``: ESMM plus ``counterfactual_weight`` x the IPS CVR risk,
  ``mean over impressions of click x BCE(pCVR, conversion) / pCTR``, with pCTR as the propensity (detached,
  and clipped below at ``min_propensity``: an impression with a tiny pCTR would otherwise dominate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlexp.data.features import FeatureSpec
from mtlexp.errors import MtlexpError, require
from mtlexp.models.base import MTLModel, MTLOutput, Owner
from mtlexp.tasks import TaskSpec

OBJECTIVES = ("esmm", "naive", "escm2_ips")


class EntireSpace(MTLModel):
    """A zoo model trained with a click -> conversion objective.

    :param bottom: the zoo model's factory (a ``_partial_`` model node, ``model@model.bottom=mmoe``).
    :param objective: ``esmm``, ``naive`` or ``escm2_ips`` (see the module docstring).
    :param counterfactual_weight: weight of ESCM2's counterfactual risk.
    :param min_propensity: lower clip of pCTR as the propensity in ESCM2's risk.
    """

    def __init__(
        self,
        features: FeatureSpec,
        tasks: Sequence[TaskSpec],
        bottom: Callable[..., MTLModel],
        objective: str = "esmm",
        counterfactual_weight: float = 0.1,
        min_propensity: float = 0.05,
    ) -> None:
        nn.Module.__init__(self)  # no input block or towers of its own: the bottom has them
        require(objective in OBJECTIVES, "objective", f"one of {list(OBJECTIVES)}", objective)
        require(counterfactual_weight >= 0, "counterfactual_weight", "a number >= 0", counterfactual_weight)
        require(0 < min_propensity <= 1, "min_propensity", "a number in (0, 1]", min_propensity)
        self.tasks = list(tasks)
        self.task_names = [t.name for t in tasks]
        self.objective = objective
        self.counterfactual_weight = float(counterfactual_weight)
        self.min_propensity = float(min_propensity)
        self.bottom = bottom(features=features, tasks=tasks)

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        return self.bottom(numeric, categorical)

    # --- the objective -----------------------------------------------------------------------------
    def click_conversion(self, tasks: Sequence[TaskSpec]) -> tuple[TaskSpec, TaskSpec, TaskSpec]:
        """The (CTR, CVR, CTCVR) tasks of the run: CVR is observed_if CTR, and CTCVR is their product."""
        for product in (t for t in tasks if t.derived and len(t.product) == 2):
            by_name = {t.name: t for t in tasks}
            first, second = (by_name[name] for name in product.product)
            for ctr, cvr in ((first, second), (second, first)):
                if cvr.observed_if == ctr.name:
                    return ctr, cvr, product
        raise MtlexpError(
            f"model: {self.objective} needs a click task, a conversion task observed_if the click task and a "
            f"product task of the two (tasks=click_conversion), got tasks {[t.name for t in tasks]}"
        )

    def trained_tasks(self, tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
        ctr, cvr, ctcvr = self.click_conversion(tasks)
        skip = {ctcvr.name} if self.objective == "naive" else {cvr.name}
        return [t for t in tasks if t.name not in skip]

    def extra_loss(self, output: MTLOutput, labels: dict[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor | None:
        if self.objective != "escm2_ips" or self.counterfactual_weight == 0:
            return None
        ctr, cvr, _ = self.click_conversion(tasks)
        click = labels[ctr.name]
        propensity = torch.sigmoid(output.logits[ctr.name].detach()).clamp_min(self.min_propensity)
        errors = F.binary_cross_entropy_with_logits(output.logits[cvr.name], labels[cvr.name], reduction="none")
        return self.counterfactual_weight * (click * errors / propensity).mean()

    # --- the contract, delegated to the bottom --------------------------------------------------------
    def declare_ownership(self) -> dict[str, Owner]:
        return {f"bottom.{name}": owner for name, owner in self.bottom.declare_ownership().items()}

    def last_shared_layer(self) -> list[nn.Parameter]:
        return self.bottom.last_shared_layer()

    def gate_experts(self) -> dict[str, list[str]]:
        return self.bottom.gate_experts()

    def diagnostics(self) -> dict[str, Tensor]:
        return self.bottom.diagnostics()

