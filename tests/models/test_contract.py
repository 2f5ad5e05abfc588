"""The model contract, generated over every model config (and every gate of the gated ones).

Built from the shipped YAML, as a user's run builds them: output shapes for every task kind, batch size 1,
every parameter reaching the loss, and exact parameter ownership checked against per-task gradients.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from torch import Tensor

from mtlexp.config import register_configs
from mtlexp.instantiate import build
from mtlexp.models import AUX_ONLY, SHARED, MTLModel, TaskSlices
from mtlexp.specs import CategoricalFeature, FeatureSpec, TaskSpec

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
GATES = sorted(p.stem for p in (CONF / "gate").glob("*.yaml"))
GATED = sorted(p.stem for p in CONF.glob("*.yaml") if "gate:" in p.read_text())
# Beyond the shipped sizes: asymmetric and degenerate expert counts, where ownership changes.
VARIANTS = {
    "ple-3levels": ("ple", {"num_levels": 3, "num_task_experts": 1, "num_shared_experts": 3}),
    "ple-no-shared": ("ple", {"num_levels": 3, "num_task_experts": 2, "num_shared_experts": 0}),
    "ple-no-own": ("ple", {"num_levels": 2, "num_task_experts": 0, "num_shared_experts": 3}),
    "cgc-no-shared": ("cgc", {"num_task_experts": 3, "num_shared_experts": 0}),
    "cross_stitch-2layers": ("cross_stitch", {"column_hidden": "[5,4]"}),
    "tensor_factorization-2layers": ("tensor_factorization", {"bottom_hidden": "[6,4]", "rank": 3}),
}
CASES = [
    *((m, None, {}) for m in sorted(p.stem for p in CONF.glob("*.yaml")) if m not in GATED),
    *((m, g, {}) for m in GATED for g in GATES),
    *((m, "softmax" if m in GATED else None, o) for m, o in VARIANTS.values()),
]
IDS = [m if g is None else f"{m}-{g}" for m, g, _ in CASES[: len(CASES) - len(VARIANTS)]] + list(VARIANTS)

FEATURES = FeatureSpec(
    numeric=tuple(f"x{i}" for i in range(6)),
    categorical=(CategoricalFeature("c1", 5, 3), CategoricalFeature("c2", 4, 2)),
)
TASKS3 = [TaskSpec("r", "regression"), TaskSpec("b", "binary"), TaskSpec("m", "multiclass", num_classes=3)]


def make_model(name: str, gate: str | None, tasks=TASKS3, features=FEATURES, **overrides) -> MTLModel:
    register_configs()
    GlobalHydra.instance().clear()
    extra = [f"model.{k}={v}" for k, v in overrides.items()]
    with initialize_config_module("mtlexp.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}", *([f"model/gate={gate}"] if gate else []), *extra])
    GlobalHydra.instance().clear()
    torch.manual_seed(0)
    return build(cfg.model, "model", features=features, tasks=tasks)


def batch(rows: int, seed: int = 1) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    numeric = torch.randn(rows, 6, generator=g)
    categorical = torch.stack([torch.randint(0, 5, (rows,), generator=g), torch.randint(0, 4, (rows,), generator=g)], 1)
    labels = {"r": torch.randn(rows, generator=g), "b": torch.randint(0, 2, (rows,), generator=g).float(),
              "m": torch.randint(0, 3, (rows,), generator=g)}
    return numeric, categorical, labels


def task_losses(logits: dict[str, Tensor], labels: dict[str, Tensor]) -> dict[str, Tensor]:
    return {
        "r": F.mse_loss(logits["r"], labels["r"]),
        "b": F.binary_cross_entropy_with_logits(logits["b"], labels["b"]),
        "m": F.cross_entropy(logits["m"], labels["m"]),
    }


@pytest.mark.parametrize(("name", "gate", "sizes"), CASES, ids=IDS)
@pytest.mark.parametrize("rows", [1, 5])
def test_outputs_for_every_task_kind(name, gate, sizes, rows):
    model = make_model(name, gate, **sizes)
    numeric, categorical, _ = batch(rows)
    for training in (True, False):
        model.train(training)
        out = model(numeric, categorical)
        assert list(out.logits) == ["r", "b", "m"]
        assert out.logits["r"].shape == (rows,) and out.logits["b"].shape == (rows,)
        assert out.logits["m"].shape == (rows, 3)
        experts = model.gate_experts()
        assert set(out.gates) == set(experts)  # every gate is named, with its experts
        for gate_name, weights in out.gates.items():
            assert weights.shape == (rows, len(experts[gate_name])) and (weights >= 0).all()
            torch.testing.assert_close(weights.sum(-1), torch.ones(rows))
        if out.aux_loss is not None:
            assert out.aux_loss.dim() == 0 and torch.isfinite(out.aux_loss)
        if not training:
            assert out.aux_loss is None  # auxiliary losses are for training only


@pytest.mark.parametrize(("name", "gate", "sizes"), CASES, ids=IDS)
def test_every_parameter_receives_a_gradient(name, gate, sizes):
    model = make_model(name, gate, **sizes)
    numeric, categorical, labels = batch(32)
    out = model(numeric, categorical)
    loss = sum(task_losses(out.logits, labels).values())
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    loss.backward()
    aux_only = {id(p) for p in model.aux_only_parameters()}  # reached by a label-dependent loss: test_entire_space
    starved = [n for n, p in model.named_parameters()
               if id(p) not in aux_only and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not starved


@pytest.mark.parametrize(("name", "gate", "sizes"), CASES, ids=IDS)
def test_ownership_is_exact(name, gate, sizes):
    """Task t's loss alone reaches only t's parameters (and slices) and the shared ones; some entry of every
    shared parameter is reached by two tasks or more, and every owned one by its task."""
    model = make_model(name, gate, **sizes)
    owners = model.ownership()
    params = dict(model.named_parameters())
    with torch.no_grad():  # off any special initial point (identity units, zero-initialised gates)
        for p in params.values():
            p.add_(0.05 * torch.randn_like(p))
    assert set(owners) == set(params)
    numeric, categorical, labels = batch(32)
    losses = task_losses(model(numeric, categorical).logits, labels)
    grads = {
        task: dict(zip(params, torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True)))
        for task, loss in losses.items()
    }

    def reached(task: str, name: str, part: slice | None = None) -> bool:
        grad = grads[task][name]
        if grad is None:
            return False
        if part is not None:
            grad = grad.narrow(owners[name].dim, part.start, part.stop - part.start)
        return bool(grad.abs().sum() > 0)

    for pname, owner in owners.items():
        if owner is SHARED:
            touched = sum((grads[t][pname] != 0).int() for t in losses if grads[t][pname] is not None)
            assert (touched >= 2).any(), f"{pname} is declared shared but no entry of it is reached by two tasks"
        elif isinstance(owner, TaskSlices):
            assert set(owner.slices) == set(losses)
            bounds = sorted((part.start, part.stop) for part in owner.slices.values())  # the slices tile the dim
            assert bounds[0][0] == 0 and bounds[-1][1] == params[pname].shape[owner.dim]
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            for task, part in owner.slices.items():
                assert reached(task, pname, part), f"{task} does not reach its slice of {pname}"
                for other in losses:
                    if other != task:
                        assert not reached(other, pname, part), f"{other} reaches {task}'s slice of {pname}"
        elif owner is AUX_ONLY:
            assert not any(reached(t, pname) for t in losses), f"a task loss reaches {pname}, declared AUX_ONLY"
        else:
            assert reached(owner, pname), f"{owner} does not reach its own {pname}"
            assert not any(reached(t, pname) for t in losses if t != owner), f"another task reaches {pname}"
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(params[n]) for n, o in owners.items() if o is SHARED}
    for task in losses:
        own = {id(p) for p in model.task_parameters(task)}
        expected = {id(params[n]) for n, o in owners.items()
                    if o == task or (isinstance(o, TaskSlices) and task in o.slices)}
        assert own == expected and not own & shared


@pytest.mark.parametrize(("name", "gate", "sizes"), CASES, ids=IDS)
def test_two_tasks_and_one_task(name, gate, sizes):
    for tasks in (TASKS3[:2], TASKS3[1:2]):
        model = make_model(name, gate, tasks=tasks, **sizes)
        numeric, categorical, _ = batch(3)
        assert list(model(numeric, categorical).logits) == [t.name for t in tasks]
    assert model.shared_parameters() == []  # one task: nothing is reached by two
