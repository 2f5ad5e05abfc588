"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlexp.errors import require
from mtlexp.specs import TaskSpec
from mtlexp.weighting.base import LossWeighting, StepInputs, StepResult


class GradNorm(LossWeighting):
    """Learned weights that equalise the tasks' gradient norms on the last shared layer, scaled by how far
    each task lags in training.

    With ``G_t = w_t ||grad_W L_t||`` on the last shared layer ``W`` (``model.last_shared_layer()``), the
    relative inverse training rate ``r_t = (L_t / L_t(0)) / mean(L / L(0))`` and the target
    ``mean(G) r_t^alpha`` (held constant), the weights follow the gradient of ``sum_t |G_t - target_t|``
    while the model follows ``sum_t w_t L_t``; after every optimizer step the weights are renormalised to
    sum to T. Both gradients come from one backward pass, so DDP syncs the weights' gradient like any other.

    :param alpha: the restoring force; 0 pulls every gradient norm to the same value.
    """

    def __init__(self, tasks: Sequence[TaskSpec], alpha: float = 1.5, seed: int = 0) -> None:
        super().__init__(tasks, seed)
        require(alpha >= 0, "alpha", "a number >= 0", alpha)
        self.alpha = float(alpha)
        self.task_weights = nn.Parameter(torch.ones(self.num_tasks))
        self.register_buffer("initial_losses", torch.zeros(self.num_tasks))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def weights(self, inputs: StepInputs) -> Tensor:
        return self.task_weights

    def step(self, inputs: StepInputs) -> StepResult:
        losses = inputs.losses
        if not bool(self.started):
            self.initial_losses.copy_(losses.detach())
            self.started.fill_(True)
        weights = self.task_weights
        loss = inputs.objective((weights.detach() * losses).sum())
        layer = [p for p in inputs.model.last_shared_layer() if p.requires_grad]
        applied = weights.detach().clone()  # the optimizer step changes the parameter in place
        if not layer:  # nothing shared (single-task models): nothing to balance
            # The weights still take part in the backward pass: DDP expects a gradient for every parameter.
            inputs.backward(loss + 0.0 * weights.sum())
            return StepResult(loss.detach(), applied)
        norms = torch.stack([
            torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], layer, retain_graph=True, allow_unused=True)
                       if g is not None]).norm()
            for t in range(self.num_tasks)
        ]).detach()
        norms = norms.float()
        scaled = weights * norms
        ratios = losses.detach().float() / self.initial_losses.clamp_min(1e-12)
        target = (scaled.mean() * (ratios / ratios.mean()) ** self.alpha).detach()
        inputs.backward(loss + (scaled - target).abs().sum())
        return StepResult(loss.detach(), applied)

    def on_after_optimizer_step(self) -> None:
        with torch.no_grad():
            self.task_weights.clamp_(min=1e-6)
            self.task_weights.mul_(self.num_tasks / self.task_weights.sum())
