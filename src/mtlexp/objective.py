"""One batch's objective: the model's outputs with the derived tasks, the per-task losses and the auxiliary loss.

A single run (``MTLModule``) calls ``batch_objective`` on its model; a stacked run (``StackedModule``) calls it on
one replica's functional call under ``vmap``, or (its native route) ``output_losses`` on one replica's share
of every replica's forward pass. Either way a batch means the same thing, so a change to what a
task's loss is (masks, derived tasks, a model's extra loss) is made here once and reaches both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor
import torch

from mtlexp.errors import MtlexpError
from mtlexp.kinds import observed_rows, product_logit, task_loss
from mtlexp.models.base import MTLModel, MTLOutput, add_aux
from mtlexp.specs import TaskSpec

FULL_PRECISION = ("32-true", "32", "64-true", "64")


def batch_objective(forward: Callable[[Tensor, Tensor], MTLOutput], model: MTLModel, tasks: Sequence[TaskSpec],
                    scored: Sequence[TaskSpec], numeric: Tensor, categorical: Tensor, labels: dict[str, Tensor],
                    weight: Tensor | None, training: bool) -> tuple[MTLOutput, Tensor]:
    """The forward pass and the ``(len(scored),)`` losses of the ``scored`` tasks on one batch.

    :param forward: the model's call (the model itself, or a replica's functional call).
    :param model: the architecture, for its ``extra_loss`` (a template's methods under vmap).
    :param tasks: every task, in the data's order: derived tasks get their logits from the others'.
    :param training: whether the model's ``extra_loss`` joins the output's ``aux_loss`` (training only).
    """
    return output_losses(forward(numeric, categorical), model, tasks, scored, labels, weight, training)


def output_losses(out: MTLOutput, model: MTLModel, tasks: Sequence[TaskSpec], scored: Sequence[TaskSpec],
                  labels: dict[str, Tensor], weight: Tensor | None, training: bool) -> tuple[MTLOutput, Tensor]:
    """``batch_objective`` after the forward pass: a stacked run's native route runs every replica's forward
    at once, then this for each replica."""
    for task in tasks:  # derived tasks have no tower: their prediction is a product of others'
        if task.derived:
            out.logits[task.name] = product_logit([out.logits[name] for name in task.product])
    if training:
        out.aux_loss = add_aux(out.aux_loss, model.extra_loss(out, labels, tasks))
    losses = torch.stack([task_loss(t, out.logits[t.name], labels[t.name], weight, observed_rows(t, labels))
                          for t in scored])
    return out, losses


def plain_step_possible(precision: Any, grad_clip_norm: float | None = None, world_size: int = 1) -> bool:
    """Whether the plain ``optimizer.step()`` may replace Lightning's: only full precision (no scaler to apply),
    no clipping by Lightning's hooks, and one process (``manual_backward`` is what lets DDP sync gradients)."""
    return str(precision) in FULL_PRECISION and grad_clip_norm is None and world_size == 1


def divergence(loss: float, epoch: int, lr: float) -> MtlexpError:
    """The error of a run (or a replica) whose epoch train loss is not finite."""
    return MtlexpError(f"training diverged: the train loss is {loss} in epoch {epoch}; "
                       f"lower optimizer.lr (now {lr}) or set module.grad_clip_norm")
