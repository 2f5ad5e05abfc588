"""Click and conversion over the entire impression space: ESMM, ESCM2 and the naive CVR baseline.

In recommendation a conversion is only observed after a click. A CVR model trained on clicked impressions
learns from a biased sample of the impressions it is later applied to (sample-selection bias) and from few
rows (data sparsity). ESMM (Ma et al., SIGIR 2018) trains over every impression instead: pCTCVR = pCTR x pCVR,
with losses on CTR and CTCVR only, so that CVR is learned through the product. ESCM2 (Wang et al., SIGIR 2022)
adds a counterfactual CVR risk over the entire space, inverse-propensity weighted by pCTR.

Here these are *objectives* over any zoo model (``bottom``: shared-bottom, MMoE, PLE, ...), which gives the
CTR and CVR towers over shared embeddings. The task set says which task is which (``tasks=click_conversion``):
the CVR task is ``observed_if`` the CTR task, and a derived task is their ``product`` (CTCVR), which the
Lightning module computes from the two towers. The objective (one of the classes below, picked by
``model.objective._target_``) chooses the losses:

* ``ESMM``: CTR and CTCVR over all impressions; the CVR task has no loss of its own.
* ``NaiveCVR``: CTR over all impressions and CVR over clicked impressions (its ``observed_if`` mask): the
  selection-biased baseline. CTCVR is still predicted and evaluated, not trained.
* ``ESCM2IPS``: ESMM plus ``counterfactual_weight`` x the IPS CVR risk,
  ``mean over impressions of click x BCE(pCVR, conversion) / pCTR``, with pCTR as the propensity (detached,
  and clipped below at ``min_propensity``: an impression with a tiny pCTR would otherwise dominate).
* ``ESCM2DR``: ESMM plus ``counterfactual_weight`` x the doubly robust CVR risk,
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

IMPUTED = "imputed_conversion"  # MTLOutput.extras key: the imputation tower's logits, (B,)


class ConversionObjective:
    """How an ``EntireSpace`` model is trained over the (CTR, CVR, CTCVR) tasks of its run.

    The model asks its objective instead of testing names, so an objective is one class here and one config.
    Not an ``nn.Module``: Hydra builds it before the model, so the modules it needs are built by ``modules`` after
    the bottom and registered on the model. That keeps the order of initialisation, and the state-dict names
    (``imputation.*``) of checkpoints written when objectives were names.
    """

    def untrained(self, cvr: TaskSpec, ctcvr: TaskSpec) -> TaskSpec:
        """The one of CVR and CTCVR without a loss; it is still predicted and evaluated."""
        raise NotImplementedError

    def modules(self, features: FeatureSpec, bottom: MTLModel) -> dict[str, nn.Module | None]:
        """Modules of the objective's own, which the model registers under these names (its state-dict names).
        Only ``extra_loss`` may train them: the model contract declares them ``AUX_ONLY``."""
        return {}

    def add_extras(self, model: EntireSpace, out: MTLOutput, numeric: Tensor, categorical: Tensor) -> None:
        """Put what ``extra_loss`` reads beyond the task logits into ``out.extras`` (the forward pass)."""

    def extra_loss(self, output: MTLOutput, labels: dict[str, Tensor], ctr: TaskSpec, cvr: TaskSpec) -> Tensor | None:
        """A training loss beyond the task losses, or None."""
        return None


class ESMM(ConversionObjective):
    """ESMM (Ma et al., SIGIR 2018): CTR and CTCVR over every impression, CVR learned through the product."""

    def untrained(self, cvr: TaskSpec, ctcvr: TaskSpec) -> TaskSpec:
        return cvr


class NaiveCVR(ConversionObjective):
    """The selection-biased baseline: CTR over every impression, CVR over clicked impressions only."""

    def untrained(self, cvr: TaskSpec, ctcvr: TaskSpec) -> TaskSpec:
        return ctcvr


class ESCM2IPS(ESMM):
    """ESCM2 (Wang et al., SIGIR 2022), IPS form: ESMM plus the inverse-propensity weighted CVR risk.

    :param counterfactual_weight: weight of the counterfactual risk.
    :param min_propensity: lower clip of pCTR as the propensity.
    """

    def __init__(self, counterfactual_weight: float = 0.1, min_propensity: float = 0.05) -> None:
        require(counterfactual_weight >= 0, "objective.counterfactual_weight", "a number >= 0", counterfactual_weight)
        require(0 < min_propensity <= 1, "objective.min_propensity", "a number in (0, 1]", min_propensity)
        self.counterfactual_weight = float(counterfactual_weight)
        self.min_propensity = float(min_propensity)

    def extra_loss(self, output: MTLOutput, labels: dict[str, Tensor], ctr: TaskSpec, cvr: TaskSpec) -> Tensor:
        click = labels[ctr.name]
        propensity = torch.sigmoid(output.logits[ctr.name].detach()).clamp_min(self.min_propensity)
        cvr_logits = output.logits[cvr.name]
        errors = F.binary_cross_entropy_with_logits(cvr_logits, labels[cvr.name], reduction="none")
        return self.risk(output, click, propensity, cvr_logits, errors)

    def risk(self, output: MTLOutput, click: Tensor, propensity: Tensor, cvr_logits: Tensor, errors: Tensor) -> Tensor:
        """The weighted counterfactual loss, given the CVR errors ``BCE(pCVR, conversion)`` per impression."""
        return self.counterfactual_weight * (click * errors / propensity).mean()


class ESCM2DR(ESCM2IPS):
    """ESCM2's doubly robust form: ESMM plus the DR CVR risk and the loss of its imputation tower.

    :param imputation_hidden: hidden widths of the imputation tower.
    :param imputation_weight: weight of the imputation tower's loss.
    """

    def __init__(self, counterfactual_weight: float = 0.1, min_propensity: float = 0.05,
                 imputation_hidden: Sequence[int] = (32,), imputation_weight: float = 1.0) -> None:
        super().__init__(counterfactual_weight, min_propensity)
        require(imputation_weight >= 0, "objective.imputation_weight", "a number >= 0", imputation_weight)
        self.imputation_hidden = imputation_hidden
        self.imputation_weight = float(imputation_weight)

    def modules(self, features: FeatureSpec, bottom: MTLModel) -> dict[str, nn.Module | None]:
        # The imputation tower reads the bottom's embeddings where every task shares them; bottoms that give
        # each task its own (cross-stitch, single-task) leave it an input block of its own.
        shared_input = isinstance(bottom.input, InputBlock)
        own_input = None if shared_input else InputBlock(features)
        width = (bottom.input if shared_input else own_input).output_dim
        body = MLP(width, self.imputation_hidden)
        return {"imputation_input": own_input, "imputation": nn.Sequential(body, nn.Linear(body.output_dim, 1))}

    def add_extras(self, model: EntireSpace, out: MTLOutput, numeric: Tensor, categorical: Tensor) -> None:
        block = model.imputation_input or model.bottom.input
        out.extras[IMPUTED] = model.imputation(block(numeric, categorical)).squeeze(-1)

    def risk(self, output: MTLOutput, click: Tensor, propensity: Tensor, cvr_logits: Tensor, errors: Tensor) -> Tensor:
        imputed = torch.sigmoid(output.extras[IMPUTED])
        imputed_errors = F.binary_cross_entropy_with_logits(cvr_logits, imputed.detach(), reduction="none")
        risk = (imputed_errors + click * (errors - imputed_errors) / propensity).mean()
        fitted = F.binary_cross_entropy_with_logits(cvr_logits.detach(), imputed, reduction="none")
        imputation = (click * (errors.detach() - fitted) ** 2 / propensity).mean()
        return self.counterfactual_weight * risk + self.imputation_weight * imputation


class EntireSpace(MTLModel):
    """A zoo model trained with a click -> conversion objective.

    :param bottom: the zoo model's factory (a ``_partial_`` model node, ``model@model.bottom=mmoe``).
    :param objective: how it is trained: ``ESMM()``, ``NaiveCVR()``, ``ESCM2IPS(...)`` or ``ESCM2DR(...)`` (see
        the module docstring).
    """

    carries_replicas = True  # its forward is the bottom's and the objective's modules' (each checked on its own)

    def __init__(
        self,
        features: FeatureSpec,
        tasks: Sequence[TaskSpec],
        bottom: Callable[..., MTLModel],
        objective: ConversionObjective,
    ) -> None:
        nn.Module.__init__(self)  # no input block or towers of its own: the bottom has them
        self.tasks = list(tasks)
        self.task_names = [t.name for t in tasks]
        self.objective = objective
        self.bottom = bottom(features=features, tasks=tasks)
        added = objective.modules(features, self.bottom)  # after the bottom: the order of initialisation
        for name, module in added.items():
            setattr(self, name, module)
        self.objective_module_names = tuple(added)

    def forward(self, numeric: Tensor, categorical: Tensor) -> MTLOutput:
        out = self.bottom(numeric, categorical)
        self.objective.add_extras(self, out, numeric, categorical)
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
            f"model: {self.config_name or type(self.objective).__name__} needs a click task, a conversion task "
            f"observed_if the click task and a product task of the two (tasks=click_conversion), got tasks "
            f"{[t.name for t in tasks]}"
        )

    def trained_tasks(self, tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
        _, cvr, ctcvr = self.click_conversion(tasks)
        untrained = self.objective.untrained(cvr, ctcvr)
        return [t for t in tasks if t.name != untrained.name]

    def extra_loss(self, output: MTLOutput, labels: dict[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor | None:
        ctr, cvr, _ = self.click_conversion(tasks)
        return self.objective.extra_loss(output, labels, ctr, cvr)

    # --- the contract, delegated to the bottom --------------------------------------------------------
    def declare_ownership(self) -> dict[str, Owner]:
        owners: dict[str, Owner] = {f"bottom.{name}": owner for name, owner in self.bottom.declare_ownership().items()}
        for prefix in self.objective_module_names:
            owners.update(dict.fromkeys(self.names_under(prefix), AUX_ONLY))
        return owners

    def last_shared_layer(self) -> list[nn.Parameter]:
        return self.bottom.last_shared_layer()

    def gate_experts(self) -> dict[str, list[str]]:
        return self.bottom.gate_experts()

    def diagnostics(self) -> dict[str, Tensor]:
        return self.bottom.diagnostics()
