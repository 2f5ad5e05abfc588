"""The torchjd internals behind ``mtlexp.torchjd_compat`` still exist and mean what mtlexp assumes, on every
torchjd aggregator a ``conf/weighting`` file names."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate
from torch import Tensor, nn

from mtlexp.torchjd_compat import aggregator_state, rebuild_solver, restore_aggregator_state

CONF = Path(__file__).resolve().parents[1] / "conf" / "weighting"
NODES = {path.stem: yaml.safe_load(path.read_text()).get("aggregator") or {} for path in sorted(CONF.glob("*.yaml"))}
AGGREGATORS = {name: node for name, node in NODES.items() if str(node.get("_target_", "")).startswith("torchjd.")}
# Nash-MTL solves afresh on every step unless told to reuse its last solution in between.
STATEFUL = {"gradvac": {}, "nash_mtl": {"update_weights_every": 2}}
# Aligned task gradients first, then less aligned ones: what a stateful aggregator makes of the later ones depends
# on what the earlier ones left.
SCHEDULE = [torch.tensor([[1.0, 0.0, 0.2], [1.0, 0.1, 0.0], [0.9, 0.0, 0.1]])] * 3 + [
    torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 1.0]]),
    torch.tensor([[1.0, 0.2, -0.1], [0.3, 1.0, 0.0], [-0.2, 0.4, 1.0]]),
]


def build(name: str, **kwargs: Any) -> nn.Module:
    import inspect

    factory = instantiate(AGGREGATORS[name])
    return factory(**({"n_tasks": 3} if "n_tasks" in inspect.signature(factory).parameters else {}), **kwargs)


def aggregate(aggregator: nn.Module, step: int) -> Tensor:
    torch.manual_seed(step)  # PCGrad's task order, GradDrop's mask
    return aggregator(SCHEDULE[step])


def saved(aggregator: nn.Module) -> dict[str, dict[str, Any]]:
    """What a checkpoint can hold of ``aggregator_state``: copies of the plain values (mtlexp's GradientAggregation
    keeps the same kinds); the wiring (submodule dicts, solver objects) stays behind."""
    plain = (Tensor, np.ndarray, np.generic, bool, int, float, str, type(None), torch.dtype, tuple)
    return {name: {k: copy.deepcopy(v) for k, v in values.items() if isinstance(v, plain)}
            for name, values in aggregator_state(aggregator)}


def test_the_config_files_name_the_stateful_aggregators():
    assert set(STATEFUL) <= set(AGGREGATORS) and len(AGGREGATORS) >= 10


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_a_fresh_aggregator_given_the_saved_state_continues_as_the_original(name):
    first = build(name)
    for step in range(3):
        aggregate(first, step)
    state = saved(first)
    restored = build(name)
    restore_aggregator_state(restored, state)
    for step in (3, 4):
        assert torch.allclose(aggregate(restored, step), aggregate(first, step), atol=1e-6)


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_the_state_of_a_stateful_aggregator_is_where_aggregator_state_reads_it(name):
    kwargs = STATEFUL[name]
    before, first = saved(build(name, **kwargs)), build(name, **kwargs)
    for step in range(3):
        aggregate(first, step)
    after = saved(first)
    changed = {(module, key) for module, values in after.items() for key, value in values.items()
               if key not in before[module] or not _same(value, before[module][key])}
    assert changed  # GradVac: its late buffer _phi_t; Nash-MTL: its step counter and last solution
    restored = build(name, **kwargs)
    restore_aggregator_state(restored, after)
    continued = aggregate(restored, 3)
    assert torch.allclose(continued, aggregate(first, 3), atol=1e-6)
    assert not torch.allclose(continued, aggregate(build(name, **kwargs), 3), atol=1e-4)  # the state matters


def test_gradvac_state_lives_in_a_buffer_filled_on_the_first_step():
    """The buffers that are None until a step: ``aggregator_state`` must read them from the buffer slots."""
    def tensors(aggregator: nn.Module) -> set[tuple[str, str]]:
        return {(m, k) for m, values in aggregator_state(aggregator) for k, v in values.items() if isinstance(v, Tensor)}

    fresh, stepped = build("gradvac"), build("gradvac")
    aggregate(stepped, 0)
    late = tensors(stepped) - tensors(fresh)
    assert late and all(key in dict(stepped.get_submodule(m).named_buffers(recurse=False)) for m, key in late)


def test_a_restored_nash_mtl_gets_back_the_solver_its_first_step_built():
    stepped = build("nash_mtl")
    aggregate(stepped, 0)
    solvers = [name for name, module in stepped.named_modules() if hasattr(module, "prob")]
    assert solvers  # the cvxpy problem rebuild_solver rebuilds
    state = saved(stepped)

    bare = build("nash_mtl")
    for name, values in state.items():
        for key, value in values.items():
            setattr(bare.get_submodule(name), key, copy.deepcopy(value))
    with pytest.raises(AttributeError):  # the solver pieces rebuild_solver builds: what it is there for
        aggregate(bare, 1)

    restored = build("nash_mtl")
    restore_aggregator_state(restored, state)
    assert all(hasattr(restored.get_submodule(name), "prob") for name in solvers)
    assert torch.allclose(aggregate(restored, 1), aggregate(stepped, 1), atol=1e-6)

    untouched = build("nash_mtl")  # never stepped: its first step builds the problem itself
    for module in untouched.modules():
        rebuild_solver(module)
    assert not any(hasattr(module, "prob") for module in untouched.modules())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (Tensor, np.ndarray)) or isinstance(b, (Tensor, np.ndarray)):
        return type(a) is type(b) and a.shape == b.shape and bool((a == b).all())
    return a == b
