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
* ``escm2_dr``: ESMM plus ``counterfactual_weight`` x the doubly robust CVR risk,
  ``mean over impressions of e_hat + click x (e - e_hat) / pCTR``, where ``e`` is the CVR error
  BCE(pCVR, conversion) and ``e_hat`` an imputed error. An imputation tower predicts an imputed conversion
  probability r for every impression, and ``e_hat = BCE(pCVR, r)``; the tower is trained by
  ``imputation_weight`` x ``mean of click x (e - e_hat)^2 / pCTR``, which fits r where conversions are
  observed. This is the joint learning of Wang et al. (ICML 2019) that ESCM2's DR builds on: the imputed
  error depends on pCVR, so the unclicked impressions pull pCVR towards r. (A tower that predicted the error
  itself, independent of pCVR, would give the CVR tower exactly IPS's gradient.) In the risk, r is fixed;
  in the imputation loss, pCVR and ``e`` are: each tower is trained by its own term.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlexp.errors import MtlexpError, require
from mtlexp.models.base import AUX_ONLY, MTLModel, MTLOutput, Owner
from mtlexp.models.blocks import MLP, InputBlock
from mtlexp.specs import FeatureSpec, TaskSpec

OBJECTIVES = ("esmm", "naive", "escm2_ips", "escm2_dr")
IMPUTED = "imputed_conversion"  # MTLOutput.extras key: the imputation tower's logits, (B,)


class EntireSpace(MTLModel):
    """A zoo model trained with a click -> conversion objective.

    :param bottom: the zoo model's factory (a ``_partial_`` model node, ``model@model.bottom=mmoe``).
    :param objective: ``esmm``, ``naive``, ``escm2_ips`` or ``escm2_dr`` (see the module docstring).
    :param counterfactual_weight: weight of ESCM2's counterfactual risk.
    :param min_propensity: lower clip of pCTR as the propensity in ESCM2's risk.
    :param imputation_hidden: hidden widths of ESCM2-DR's imputation tower.
    :param imputation_weight: weight of the imputation tower's loss.
    """

    def __init__(
        self,
        features: FeatureSpec,
        tasks: Sequence[TaskSpec],
        bottom: Callable[..., MTLModel],
        objective: str = "esmm",
        counterfactual_weight: float = 0.1,
        min_propensity: float = 0.05,
        imputation_hidden: Sequence[int] = (32,),
        imputation_weight: float = 1.0,
    ) -> None:
        nn.Module.__init__(self)  # no input block or towers of its own: the bottom has them
        require(objective in OBJECTIVES, "objective", f"one of {list(OBJECTIVES)}", objective)
        require(counterfactual_weight >= 0, "counterfactual_weight", "a number >= 0", counterfactual_weight)
        require(0 < min_propensity <= 1, "min_propensity", "a number in (0, 1]", min_propensity)
        require(imputation_weight >= 0, "imputation_weight", "a number >= 0", imputation_weight)
        self.tasks = list(tasks)
        self.task_names = [t.name for t in tasks]
        self.objective = objective
        self.counterfactual_weight = float(counterfactual_weight)
        self.min_propensity = float(min_propensity)
        self.imputation_weight = float(imputation_weight)
        self.bottom = bottom(features=features, tasks=tasks)
        if objective == "escm2_dr":
            # The imputation tower reads the bottom's embeddings where every task shares them; bottoms that give
            # each task its own (cross-stitch, single-task) leave it an input block of its own.
            shared_input = isinstance(self.bottom.input, InputBlock)
            self.imputation_input = None if shared_input else InputBlock(features)
            width = (self.bottom.input if shared_input else self.imputation_input).output_dim
            body = MLP(width, imputation_hidden)
            self.imputation = nn.Sequential(body, nn.Linear(body.output_dim, 1))

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        out = self.bottom(numeric, categorical)
        if self.objective == "escm2_dr":
            block = self.imputation_input or self.bottom.input
            out.extras[IMPUTED] = self.imputation(block(numeric, categorical)).squeeze(-1)
        return out

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
            f"model: {self.config_name or self.objective} needs a click task, a conversion task observed_if the click task and a "
            f"product task of the two (tasks=click_conversion), got tasks {[t.name for t in tasks]}"
        )

    def trained_tasks(self, tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
        ctr, cvr, ctcvr = self.click_conversion(tasks)
        skip = {ctcvr.name} if self.objective == "naive" else {cvr.name}
        return [t for t in tasks if t.name not in skip]

    def extra_loss(self, output: MTLOutput, labels: dict[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor | None:
        if not self.objective.startswith("escm2"):
            return None
        ctr, cvr, _ = self.click_conversion(tasks)
        click = labels[ctr.name]
        propensity = torch.sigmoid(output.logits[ctr.name].detach()).clamp_min(self.min_propensity)
        cvr_logits = output.logits[cvr.name]
        errors = F.binary_cross_entropy_with_logits(cvr_logits, labels[cvr.name], reduction="none")
        if self.objective == "escm2_ips":
            return self.counterfactual_weight * (click * errors / propensity).mean()
        imputed = torch.sigmoid(output.extras[IMPUTED])
        imputed_errors = F.binary_cross_entropy_with_logits(cvr_logits, imputed.detach(), reduction="none")
        risk = (imputed_errors + click * (errors - imputed_errors) / propensity).mean()
        fitted = F.binary_cross_entropy_with_logits(cvr_logits.detach(), imputed, reduction="none")
        imputation = (click * (errors.detach() - fitted) ** 2 / propensity).mean()
        return self.counterfactual_weight * risk + self.imputation_weight * imputation

    # --- the contract, delegated to the bottom --------------------------------------------------------
    def declare_ownership(self) -> dict[str, Owner]:
        owners: dict[str, Owner] = {f"bottom.{name}": owner for name, owner in self.bottom.declare_ownership().items()}
        for prefix in ("imputation", "imputation_input"):
            owners.update(dict.fromkeys(self.names_under(prefix), AUX_ONLY))
        return owners

    def last_shared_layer(self) -> list[nn.Parameter]:
        return self.bottom.last_shared_layer()

    def gate_experts(self) -> dict[str, list[str]]:
        return self.bottom.gate_experts()

    def diagnostics(self) -> dict[str, Tensor]:
        return self.bottom.diagnostics()

