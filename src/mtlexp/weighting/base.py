"""The weighting contract: how the per-task losses of one step become one update.

A weighting is built with the task specs (so learned weights exist before the optimizer is made and are
optimised with the model) and is called once per optimizer step with a ``StepInputs``: the per-task losses
as one tensor in task order, the model output, the model (its shared parameters and last shared layer),
the backward function to use, and the step and epoch. It back-propagates and returns a ``StepResult``: the
loss it optimised and the per-task weights it applied, which the module logs.

Two families share the contract:

* **loss weightings** (``LossWeighting``: equal, static, uncertainty, DWA, RLW, GradNorm) back-propagate a
  weighted sum through ``inputs.backward``, so mixed precision and DDP's gradient sync work unchanged;
* **loss scalarizations** (``LossScalarization``: GLS, STCH, FAMO) back-propagate a nonlinear function of
  the losses, and record its derivative in each loss as the task's weight;
* **gradient aggregations** (``GradientAggregation`` on torchjd, ``SharedGradientWeighting`` for the
  methods torchjd lacks) compute every task's gradient on the shared parameters and write an aggregated
  ``.grad`` themselves (``writes_gradients = True``): the module then averages those gradients across DDP
  ranks, because DDP's hooks never saw them.

State (learned weights, loss history, an aggregator's memory) lives in parameters and buffers, or in
``get_extra_state``, so it is in every checkpoint and a resumed run continues where it stopped. Randomness
is drawn from a generator seeded by (run seed, global step), never from the global stream, so a resumed run
draws what the uninterrupted one would have drawn and every DDP rank draws the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mtlexp.errors import MtlexpError
from mtlexp.models.base import MTLModel, MTLOutput
from mtlexp.specs import TaskSpec


@dataclass
class StepInputs:
    """What one optimizer step gives a weighting.

    :param losses: ``(T,)`` per-task losses, in the order of the task specs.
    :param output: the forward pass (logits, gates, ``aux_loss``: a model regulariser that is added to the
        objective as it is, never weighted as a task).
    :param model: the architecture; ``model.shared_parameters()`` is where task gradients meet.
    :param shared: ``model.shared_parameters()``, computed once per fit.
    :param backward: how to back-propagate a scalar (Lightning's ``manual_backward`` under mixed precision or
        DDP, ``Tensor.backward`` otherwise).
    :param step: the global optimizer step (0-based) this update will be.
    :param epoch: the current epoch.
    :param grad_scale: the loss scale of fp16 mixed precision (1 otherwise); ``backward`` applies it, and a
        weighting that writes gradients itself must write them scaled by it.
    :param recompute_losses: the ``(T,)`` losses of this step's batch under the current parameters, without
        gradient: called after the optimizer step, it tells a method how much the step itself lowered each
        loss (FAMO). It costs a forward pass, so only methods that need it call it.
    """

    losses: Tensor
    output: MTLOutput
    model: MTLModel
    shared: Sequence[nn.Parameter]
    backward: Callable[[Tensor], None]
    step: int
    epoch: int
    grad_scale: float = 1.0
    recompute_losses: Callable[[], Tensor] | None = None

    def objective(self, weighted: Tensor) -> Tensor:
        """``weighted`` plus the model's auxiliary loss, if it has one."""
        aux = self.output.aux_loss
        return weighted if aux is None else weighted + aux

    @classmethod
    def of_replica(cls, losses: Tensor, step: int, epoch: int) -> StepInputs:
        """What a stacked run (``stack=K``) gives one replica's weighting: its own ``(T,)`` losses, the step and
        the epoch. The output, the model and the backward pass are the whole stack's, so they are left out: only
        a weighting without a ``stack_refusal`` is called with these, and it reads none of them."""
        return cls(losses=losses, output=None, model=None,  # type: ignore[arg-type]
                   shared=(), backward=_stacked_backward, step=step, epoch=epoch)


def _stacked_backward(loss: Tensor) -> None:
    raise RuntimeError("a weighting called by a stacked run back-propagated itself; its stack_refusal must say why "
                       "it cannot be stacked")


@dataclass
class StepResult:
    """What a weighting did: ``loss`` is the objective it optimised (detached), ``weights`` the ``(T,)``
    per-task weights it applied (for an aggregator, the weights of its combination of task gradients)."""

    loss: Tensor
    weights: Tensor


class Weighting(nn.Module):
    """Base of every weighting and aggregation method.

    :param tasks: the task specs, in the data's order (filled in by the train function).
    :param seed: the run seed (``${seed}`` in the configs), for methods that draw random numbers.
    """

    writes_gradients = False
    # Why a stacked run (stack=K) cannot train this method, or None where it can. A stacked step computes all
    # replicas' task losses at once and back-propagates the sum of their objectives in one pass, so it can
    # call each replica's own LossWeighting (weights() and regularizer()) with that replica's losses, step and
    # epoch (its parameters are then trained with the model by the same optimizer, its buffers and draws stay
    # its own), but it never has one replica's task gradients. Methods declare it, so that a new method is
    # refused until it is checked.
    stack_refusal: str | None = ("its update needs each task's gradient of each replica, which a stacked step "
                                 "(one backward pass of all replicas' objectives) does not compute")
    # Buffers whose shape is known only at the first step (a (T, P) gradient memory, P the number of shared
    # values): registered empty, and given the saved shape when a checkpoint is loaded.
    lazy_buffers: tuple[str, ...] = ()

    def __init__(self, tasks: Sequence[TaskSpec], seed: int = 0) -> None:
        super().__init__()
        if not tasks:
            raise MtlexpError("weighting: expected at least one task")
        self.task_names = [t.name for t in tasks]
        self.seed = int(seed)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def step(self, inputs: StepInputs) -> StepResult:
        """Back-propagate one step's losses; ``.grad`` is empty when this is called."""
        raise NotImplementedError

    def fixed_weights(self) -> Tensor | None:
        """The ``(T,)`` weights of every step, for a weighting whose weights never change (no state, no gradients,
        no draws); None otherwise. A stacked run (``stack=K``) whose replicas all have them applies them to every
        replica's losses at once, without calling the weighting at each step."""
        return None

    def on_train_epoch_end(self, mean_losses: Tensor) -> None:
        """Called once per epoch, before validation and checkpointing, with the epoch's ``(T,)`` mean task
        losses (averaged over DDP ranks)."""

    def on_after_optimizer_step(self) -> None:
        """Called after every optimizer step (e.g. to renormalise learned weights)."""

    def step_seed(self, step: int) -> int:
        """A seed for the draws of one step, from (run seed, step): the same on resume and on every DDP rank."""
        return self.seed * 1_000_003 + step

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.step_seed(step))

    def random_weights(self, step: int) -> Tensor:
        """``(T,)`` weights on the simplex, the ``softmax`` of a standard normal draw (RLW's and RGW's)."""
        return torch.softmax(torch.randn(self.num_tasks, generator=self.generator(step)), dim=0)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in self.lazy_buffers:
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"tasks={self.task_names}"


class LossWeighting(Weighting):
    """A weighted sum of the task losses, back-propagated through ``inputs.backward``.

    Subclasses give the weights (``weights``) and, optionally, a regulariser on their own parameters.
    """

    def weights(self, inputs: StepInputs) -> Tensor:
        """The ``(T,)`` weights of this step; may carry gradient to the method's own parameters."""
        raise NotImplementedError

    def regularizer(self) -> Tensor | None:
        """A term added to the objective (uncertainty weighting's log-variances); ``None`` when none."""
        return None

    def step(self, inputs: StepInputs) -> StepResult:
        weights = self.weights(inputs)
        loss = (weights * inputs.losses).sum()
        extra = self.regularizer()
        if extra is not None:
            loss = loss + extra
        loss = inputs.objective(loss)
        inputs.backward(loss)
        return StepResult(loss.detach(), weights.detach())


class LossScalarization(Weighting):
    """A nonlinear function of the task losses (``scalarize``), back-propagated through ``inputs.backward``.

    The weight recorded for task t is the derivative of the objective in ``L_t``: the gradient of the
    objective is exactly ``sum_t w_t grad L_t``, which is what is back-propagated (one small autograd call on
    the ``(T,)`` losses, then a weighted sum, rather than the objective's graph through every loss).
    """

    stack_refusal = ("its weights are the derivative of a nonlinear function of its losses, which a stacked step "
                     "does not compute per replica")

    def scalarize(self, losses: Tensor, inputs: StepInputs) -> Tensor:
        """The objective, a scalar function of the ``(T,)`` losses (detached: its parameters are the method's
        state, never learned through the model's backward pass)."""
        raise NotImplementedError

    def step(self, inputs: StepInputs) -> StepResult:
        with torch.enable_grad():
            leaf = inputs.losses.detach().float().requires_grad_()
            value = self.scalarize(leaf, inputs)
            (weights,) = torch.autograd.grad(value, leaf)
        loss = inputs.objective((weights.to(inputs.losses) * inputs.losses).sum())
        inputs.backward(loss)
        reported = inputs.objective(value.detach().to(inputs.losses))
        return StepResult(reported.detach(), weights)


def mean_across_ranks(value: Tensor) -> Tensor:
    """``value`` averaged over the DDP ranks (as it is on one process): state that a method updates from its
    own rank's batch (FAMO's loss changes, a Jacobian) then stays the same on every rank."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= torch.distributed.get_world_size()
    return value
