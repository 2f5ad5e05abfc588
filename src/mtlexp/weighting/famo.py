"""Fast adaptive multitask optimization (Liu, Feng, Stone and Liu, NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlexp.errors import MtlexpError, require
from mtlexp.specs import TaskSpec
from mtlexp.weighting.base import LossScalarization, StepInputs, mean_across_ranks

_EPS = 1e-8  # keeps a loss at its floor finite in the log


class FAMO(LossScalarization):
    """Each step decreases ``sum_t z_t log L_t / c`` (``z = softmax(logits)``, ``c = sum_t z_t / L_t``), so
    that every task's log-loss falls at a rate set by ``z`` at the cost of one backward pass; after the step,
    the logits follow the gradient of how much each log-loss actually fell on the same batch, which moves
    weight towards the tasks whose loss falls slowest.

    The logits are the method's own state, updated by Adam (``lr``, L2 ``weight_decay`` as in the paper's
    code) in buffers, not by the model's optimizer; the batch's losses after the step come from
    ``StepInputs.recompute_losses`` (a forward pass without gradient).

    :param lr: the logits' learning rate (0.025).
    :param weight_decay: the logits' L2 decay (1e-3), which pulls the weights back towards uniform.
    """

    betas = (0.9, 0.999)  # torch.optim.Adam's defaults, which the paper's code uses

    def __init__(self, tasks: Sequence[TaskSpec], lr: float = 0.025, weight_decay: float = 1e-3,
                 seed: int = 0) -> None:
        super().__init__(tasks, seed)
        require(lr > 0, "lr", "a number > 0", lr)
        require(weight_decay >= 0, "weight_decay", "a number >= 0", weight_decay)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.register_buffer("logits", torch.zeros(self.num_tasks))
        self.register_buffer("adam_mean", torch.zeros(self.num_tasks))
        self.register_buffer("adam_square", torch.zeros(self.num_tasks))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))
        self._before: Tensor | None = None
        self._recompute = None

    def scalarize(self, losses: Tensor, inputs: StepInputs) -> Tensor:
        if inputs.recompute_losses is None:
            raise MtlexpError("weighting famo: the training loop gives no recompute_losses, which FAMO needs")
        z = torch.softmax(self.logits, dim=0)
        shifted = losses + _EPS
        c = (z / shifted).sum().detach()
        self._before, self._recompute = losses.detach(), inputs.recompute_losses
        return (z * shifted.log()).sum() / c

    def on_after_optimizer_step(self) -> None:
        if self._recompute is None:
            return
        after = self._recompute().detach().float().to(self.logits)
        self.update_logits(self._before.to(self.logits), after)
        self._before, self._recompute = None, None

    def update_logits(self, before: Tensor, after: Tensor) -> None:
        """One Adam step on the logits from the batch's losses before and after the model's step."""
        fall = mean_across_ranks((before + _EPS).log() - (after + _EPS).log())
        z = torch.softmax(self.logits, dim=0)
        grad = z * (fall - (z * fall).sum())  # the softmax's Jacobian (symmetric) times the fall
        grad = grad + self.weight_decay * self.logits
        beta1, beta2 = self.betas
        self.adam_steps += 1
        t = int(self.adam_steps)
        self.adam_mean.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.adam_square.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = self.lr / (1 - beta1 ** t)
        denom = (self.adam_square / (1 - beta2 ** t)).sqrt_().add_(_EPS)
        self.logits.addcdiv_(self.adam_mean, denom, value=-step)
        if not bool(torch.isfinite(self.logits).all()):
            raise MtlexpError(f"weighting famo: the task logits became {self.logits.tolist()}; lower weighting.lr")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lr={self.lr}, weight_decay={self.weight_decay}"
