"""Weightings that combine the task gradients on the shared parameters themselves (the methods torchjd lacks).

The shared helpers: the task Jacobian on the shared parameters (one vectorised backward pass), the Euclidean
projection onto the simplex, and ``SharedGradientWeighting``, which writes a method's combined direction into
the shared parameters' ``.grad`` while every other parameter receives what equal weighting gives it, and
``DoubleSampling``, MoDo's and SDMGrad's weights from two independent samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlexp.specs import TaskSpec
from mtlexp.weighting.base import StepInputs, StepResult, Weighting, mean_across_ranks


def task_jacobian(losses: Tensor, shared: Sequence[nn.Parameter], scale: float = 1.0) -> Tensor:
    """``(T, P)`` gradients of the task losses on ``shared`` (flattened in order; zeros where a parameter is
    not reached), in float32.

    One vectorised backward pass (``is_grads_batched``); the graph is kept for the step's own backward. Under
    fp16 the losses are scaled first, as the step's backward scales them, so small gradients do not flush to
    zero, and the result is unscaled.
    """
    eye = torch.eye(losses.numel(), dtype=losses.dtype, device=losses.device)
    scaled = losses * scale if scale != 1.0 else losses
    if torch.is_anomaly_enabled() and torch.is_anomaly_check_nan_enabled():
        # Anomaly detection (debug=default) checks each gradient for NaN with .item(), which the batched
        # backward cannot run: one backward pass per task instead, the same gradients.
        per_task = [torch.autograd.grad(scaled, list(shared), grad_outputs=row, retain_graph=True, allow_unused=True)
                    for row in eye]
        grads = tuple(None if g[0] is None else torch.stack(g) for g in zip(*per_task))
    else:
        grads = torch.autograd.grad(scaled, list(shared), grad_outputs=eye, retain_graph=True, allow_unused=True,
                                    is_grads_batched=True)
    rows = [(g if g is not None else torch.zeros(losses.numel(), *p.shape, device=p.device)).flatten(1).float()
            for g, p in zip(grads, shared)]
    jacobian = torch.cat(rows, dim=1)
    return jacobian / scale if scale != 1.0 else jacobian


def project_to_simplex(v: Tensor) -> Tensor:
    """The Euclidean projection of ``v`` onto ``{w >= 0, sum w = 1}`` (the sort-based algorithm of Held,
    Wolfe and Crowder, 1974)."""
    u, _ = torch.sort(v, descending=True)
    cumulative = u.cumsum(0) - 1
    index = torch.arange(1, v.numel() + 1, device=v.device, dtype=v.dtype)
    rho = int((u - cumulative / index > 0).nonzero().max())
    return (v - cumulative[rho] / (rho + 1)).clamp_min(0)


class SharedGradientWeighting(Weighting):
    """The shared parameters' update is ``direction(J)``, a method's combination of the ``(T, P)`` Jacobian
    ``J`` of the task objectives (the losses, or DB-MTL's log-losses) on them.

    The objectives' plain sum (plus the model's ``aux_loss``) is back-propagated through ``inputs.backward``,
    so task-owned parameters get their own task's gradient as under equal weighting (mixed precision and DDP
    unchanged); the shared parameters' gradient is then moved from ``sum_t J_t`` to ``direction(J)``. The
    Jacobian is averaged over DDP ranks first: methods with a gradient memory (MoCo, DB-MTL, MoDo, SDMGrad)
    then keep the same state on every rank, the memory of the whole batch.
    """

    writes_gradients = True

    def objectives(self, losses: Tensor) -> Tensor:
        """The ``(T,)`` per-task objectives whose gradients are combined: the losses themselves by default."""
        return losses

    def direction(self, jacobian: Tensor, inputs: StepInputs) -> tuple[Tensor, Tensor]:
        """The ``(P,)`` update of the shared parameters and the ``(T,)`` task weights to record."""
        raise NotImplementedError

    def step(self, inputs: StepInputs) -> StepResult:
        objectives = self.objectives(inputs.losses)
        shared = [p for p in inputs.shared if p.requires_grad]
        jacobian = task_jacobian(objectives, shared, inputs.grad_scale) if shared else None
        loss = inputs.objective(objectives.sum())
        inputs.backward(loss)
        if jacobian is None:  # nothing shared (single-task models): every task keeps its own gradient
            return StepResult(loss.detach(), torch.ones(self.num_tasks, device=loss.device))
        jacobian = mean_across_ranks(jacobian)
        direction, weights = self.direction(jacobian, inputs)
        correction = (direction - jacobian.sum(0)) * inputs.grad_scale
        offset = 0
        for param in shared:
            part = correction[offset: offset + param.numel()].view_as(param)
            offset += param.numel()
            if param.grad is None:  # reached by no task and no aux loss: nothing to move
                continue
            param.grad.add_(part.to(param.grad.dtype))
        return StepResult(loss.detach(), weights.detach().float())


class DoubleSampling(SharedGradientWeighting):
    """Task weights learned from the product of two independent stochastic Jacobians, ``G_1 G_2^T``, an
    unbiased estimate of the Gram matrix of the true task gradients (``G G^T`` from one batch is biased by
    the gradients' noise), and applied to a third, independent one: MoDo's and SDMGrad's double sampling.

    The published methods draw three batches per step. Here the two independent Jacobians are the previous
    step's and this step's, and the weights applied to this step's Jacobian are the ones learned before
    it was seen: the same independence at the cost of one forward and backward pass per step, with
    gradients one step stale in the weights' update. The previous Jacobian is a buffer, so a resumed run
    continues with it.
    """

    lazy_buffers = ("previous",)

    def __init__(self, tasks: Sequence[TaskSpec], seed: int = 0) -> None:
        super().__init__(tasks, seed)
        self.register_buffer("previous", torch.zeros(0))
        self.register_buffer("task_weights", torch.full((self.num_tasks,), 1.0 / self.num_tasks))

    def update_weights(self, gram: Tensor) -> Tensor:
        """The new ``(T,)`` weights from the current ones and the two-sample ``(T, T)`` product ``gram``."""
        raise NotImplementedError

    def combine(self, jacobian: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """The update from this step's Jacobian and the learned weights, and the weights to record."""
        return weights @ jacobian, weights

    def direction(self, jacobian: Tensor, inputs: StepInputs) -> tuple[Tensor, Tensor]:
        applied = self.task_weights.to(jacobian).clone()
        if self.previous.shape == jacobian.shape:
            self.task_weights.copy_(self.update_weights(self.previous @ jacobian.T))
            self.previous.copy_(jacobian)
        else:
            self.previous = jacobian.clone()
        return self.combine(jacobian, applied)
