"""Gradient aggregation on the shared parameters, through torchjd's Jacobian descent.

One vectorised backward pass (``torchjd.autojac.backward``) gives the Jacobian of the task losses with
respect to every trainable parameter of the model. Task-owned parameters (the zoo's exact ownership
contract: towers, a task's gate rows, a task's own experts) receive their own task's gradient, the sum of
their Jacobian rows, since the other rows are zero there; the shared parameters receive the aggregator's
combination of the task gradients (``torchjd.autojac.jac_to_grad``). The model's auxiliary loss is not a
task: its gradient is added as it is.

torchjd (and the solvers it loads: cvxpy, qpsolvers) takes about 2 s to import, so this module is imported
only when an aggregation is chosen (``mtlexp.weighting`` exports it lazily).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchjd.aggregation import WeightedAggregator
from torchjd.autojac import backward, jac_to_grad

from mtlexp.errors import MtlexpError
from mtlexp.specs import TaskSpec
from mtlexp.torchjd_compat import aggregator_state, restore_aggregator_state
from mtlexp.weighting.base import StepInputs, StepResult, Weighting

# Nash-MTL's convex program is not DPP, so cvxpy warns on every solve that re-solving is not faster; nothing a
# user can act on.
warnings.filterwarnings("ignore", message="You are solving a parameterized problem that is not DPP")


class GradientAggregation(Weighting):
    """Jacobian descent: the shared parameters' update is an aggregation of the task gradients.

    :param aggregator: a factory of a ``torchjd.aggregation.Aggregator`` (a ``_partial_`` node: it is built
        once the number of tasks is known, which NashMTL needs).

    The weights recorded per step are the aggregator's own (weighted aggregators); for the others (GradDrop,
    ConFIG) they are the least-squares coefficients of the aggregated gradient on the task gradients.
    Aggregators whose weights sum to 1 (UPGrad, MGDA, ...) move about 1/T as far per step as the equal
    weighting's sum of losses at the same learning rate.
    """

    writes_gradients = True

    def __init__(self, tasks: Sequence[TaskSpec], aggregator: Callable[..., Any], seed: int = 0) -> None:
        super().__init__(tasks, seed)
        kwargs = {"n_tasks": self.num_tasks} if "n_tasks" in inspect.signature(aggregator).parameters else {}
        try:
            built = aggregator(**kwargs)
        except ImportError as error:  # an optional solver (cvxpy for CAGrad and Nash-MTL) is not installed
            raise MtlexpError(f"weighting.aggregator: {error}; install it with: pip install 'mtlexp[aggregators]'") from None
        # Kept out of the module tree: its buffers appear only after the first step, which a strict
        # load_state_dict into a fresh aggregator would reject; its state travels in get_extra_state instead.
        # torch has no supported way to hold a module unregistered (nn.Module.__setattr__ registers every Module
        # value). Registering it would put those late buffers into every checkpoint's state_dict (old
        # checkpoints would then lack keys), and undoing that takes a state_dict post-hook plus a load pre-hook:
        # more machinery for the same result. A container (a tuple, as _split_cache) would hide it too, at the
        # price of unwrapping it at each use.
        self.__dict__["aggregator"] = built
        self.weighted = isinstance(built, WeightedAggregator)
        self._split_cache: tuple[nn.Module, list[nn.Parameter], list[nn.Parameter]] | None = None

    def _split(self, inputs: StepInputs) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """The model's trainable parameters: (shared, task-owned), computed once per model."""
        if self._split_cache is None or self._split_cache[0] is not inputs.model:
            shared_ids = {id(p) for p in inputs.shared}
            trainable = [p for p in inputs.model.parameters() if p.requires_grad]
            self._split_cache = (  # a tuple: the model is not registered as a submodule of the weighting
                inputs.model,
                [p for p in trainable if id(p) in shared_ids],
                [p for p in trainable if id(p) not in shared_ids],
            )
        return self._split_cache[1], self._split_cache[2]

    def step(self, inputs: StepInputs) -> StepResult:
        shared, owned = self._split(inputs)
        scale = inputs.grad_scale
        losses = inputs.losses
        aux = inputs.output.aux_loss
        if aux is not None:  # before the Jacobian, which frees the graph
            grads = torch.autograd.grad(aux * scale, shared + owned, retain_graph=True, allow_unused=True)
            for param, grad in zip(shared + owned, grads):
                if grad is not None:
                    param.grad = grad
        backward(losses * scale if scale != 1.0 else losses, inputs=shared + owned)
        for param in owned:
            _accumulate(param, param.jac.sum(0))
            del param.jac
        if not shared:  # nothing shared: every task already has its own gradient
            weights = torch.ones(self.num_tasks, device=losses.device)
        else:
            if scale != 1.0:
                for param in shared:
                    param.jac.div_(scale)
            aux_grads = [p.grad for p in shared]
            for param in shared:
                param.grad = None
            jacobian = None if self.weighted else torch.cat([p.jac.flatten(1) for p in shared], dim=1)
            # Randomised aggregators (PCGrad's and GradVac's task order, GradDrop's mask) draw from the global
            # CPU stream: fork it, seeded by the step, so a resume and every DDP rank draw the same.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.step_seed(inputs.step))
                weights = jac_to_grad(shared, self.aggregator)
            if jacobian is not None:
                direction = torch.cat([p.grad.flatten() for p in shared])
                weights = torch.linalg.lstsq(jacobian.T, direction.unsqueeze(1)).solution.squeeze(1)
            for param, grad in zip(shared, aux_grads):
                if scale != 1.0:
                    param.grad.mul_(scale)
                if grad is not None:
                    param.grad.add_(grad)
        loss = inputs.objective(losses.sum()).detach()
        return StepResult(loss, weights.detach().float())

    # --- state across a resume ------------------------------------------------------------------------
    # Stateful aggregators (GradVac's EMA of gradient similarities, Nash-MTL's last solution) keep their state
    # in plain attributes and late buffers; every plain value of the aggregator and its submodules travels.
    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, dict[str, Any]] = {}
        for name, values in aggregator_state(self.aggregator):
            portable = {k: _portable(v) for k, v in values.items()}
            state[name] = {k: v for k, v in portable.items() if v is not _SKIP}
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        restore_aggregator_state(self.aggregator, {name: {k: _restored(v) for k, v in values.items()}
                                                   for name, values in state.items()})


_SKIP = object()
_NDARRAY = "numpy.ndarray"


def _restored(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == _NDARRAY:
        return value[1].numpy().copy()
    return value.clone() if isinstance(value, Tensor) else value


def _portable(value: Any) -> Any:
    """Plain state (numbers, arrays, tensors, dtypes, tuples of them) as is; solver objects are skipped."""
    if isinstance(value, (bool, int, float, str, type(None), torch.dtype)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):  # a copy (a solver may keep writing into the array it returned), as a
        return (_NDARRAY, torch.from_numpy(value.copy()))  # tensor: checkpoints load with weights_only=True
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, tuple):
        items = tuple(_portable(v) for v in value)
        return _SKIP if any(v is _SKIP for v in items) else items
    return _SKIP


def _accumulate(param: nn.Parameter, grad: Tensor) -> None:
    param.grad = grad if param.grad is None else param.grad + grad
