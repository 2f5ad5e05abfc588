"""K replicas of one architecture as one vectorised model.

The replicas' parameters are stacked along a new leading dimension (``torch.func.stack_module_state``) and
one forward pass runs them all, by one of two routes over the same stacked tensors:

* ``vmap``: ``torch.func.vmap`` over ``functional_call`` of a template copy. Every architecture works
  unchanged: its blocks never see the replica dimension.
* ``native``: ``functional_call`` of the template with the stacked tensors themselves, for models whose every
  block carries the replica dimension (``carries_replicas``, ``mtlexp.models.blocks``): R replicas of E experts
  are one batched product of R * E experts, with none of vmap's per-op batching rules in between.

Either way there is nothing to write per architecture, and the parameters, their names, checkpoints and the
optimizer are the same. Replica k keeps exactly the initial parameters of model k, and its gradient is the
gradient of its own loss (the replicas' losses are summed, and d(sum)/d(replica k) touches only replica k's slice), so
an element-wise optimizer (Adam, SGD with momentum, weight decay) over the stacked tensors takes, for every
replica, the step its own optimizer would have taken.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from mtlexp.models.base import MTLModel
from mtlexp.models.blocks import prepare_for_replicas


class StackedModel(nn.Module):
    """The parameters and buffers of ``models`` stacked as ``(K, ...)`` tensors, run by ``vmap``.

    :param models: K models of one architecture and one set of sizes (their initial values differ).
    """

    def __init__(self, models: Sequence[MTLModel]) -> None:
        super().__init__()
        params, buffers = stack_module_state(list(models))
        self.param_names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[name].detach().clone()) for name in self.param_names])
        self.buffer_names = list(buffers)
        for i, name in enumerate(self.buffer_names):
            self.register_buffer(f"buffer_{i}", buffers[name].clone())
        self.num_replicas = len(models)
        # A plain attribute, not a submodule: functional_call swaps in the stacked tensors, so the template's
        # own parameters are never trained or saved; it carries the architecture and its methods. Its torch
        # layers become their replica-carrying versions, which run single shapes (vmap) as before.
        self._template = [copy.deepcopy(models[0])]
        lacking = [f"{name or 'the model'} ({type(module).__name__})"
                   for name, module in self.template.named_modules() if not prepare_for_replicas(module)]
        differing = [name for name in self.buffer_names
                     if not all(torch.equal(b, buffers[name][0]) for b in buffers[name])]
        # Why the native route cannot run this model (None: it can): it keeps one copy of the buffers, the template's.
        self.native_unsupported: str | None = (
            f"{lacking[0]} does not carry a replica dimension" if lacking
            else f"buffer {differing[0]} differs between replicas" if differing else None)

    @property
    def template(self) -> MTLModel:
        return self._template[0]

    def train(self, mode: bool = True) -> StackedModel:
        super().train(mode)
        self.template.train(mode)
        return self

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> StackedModel:
        super()._apply(fn, *args, **kwargs)
        self.template._apply(fn, *args, **kwargs)  # device moves reach tensors the template keeps as attributes
        return self

    def tensors(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(parameters, buffers) by the single model's names, each ``(K, ...)``."""
        params = dict(zip(self.param_names, self.stacked))
        buffers = {name: getattr(self, f"buffer_{i}") for i, name in enumerate(self.buffer_names)}
        return params, buffers

    def vectorised(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn(model, *inputs)`` of one replica, run for every replica at once: inputs carry a leading K.

        Random draws (dropout, noisy gates) differ between replicas but are not the draws a single run makes.
        """

        def one(params: dict[str, Tensor], buffers: dict[str, Tensor], *inputs: Any) -> Any:
            def call(*args: Any) -> Any:
                return functional_call(self.template, (params, buffers), args)

            return fn(call, *inputs)

        mapped = vmap(one, randomness="different")
        return lambda *inputs: mapped(*self.tensors(), *inputs)

    def native(self, *inputs: Any) -> Any:
        """The template's forward pass with every replica's parameters at once: inputs and outputs carry a
        leading K. Only for a model without ``native_unsupported``.

        Random draws (dropout, noisy gates) differ between replicas but are not the draws a single run makes.
        """
        return functional_call(self.template, self.tensors()[0], inputs)

    def replica_state_dict(self, k: int) -> dict[str, Tensor]:
        """Replica k's state dict, under the single model's keys (as ``model.state_dict()`` would give it)."""
        params, buffers = self.tensors()
        values = {**params, **buffers}
        return {key: values[key][k].detach().clone() for key in self.template.state_dict()}

    @torch.no_grad()
    def load_replica(self, k: int, state: dict[str, Tensor]) -> None:
        """Set replica k's parameters and buffers from a single model's state dict."""
        params, buffers = self.tensors()
        values = {**params, **buffers}
        for key, value in state.items():
            values[key][k].copy_(value)
