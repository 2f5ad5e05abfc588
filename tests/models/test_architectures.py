import pytest
import torch

from mtlexp.data.features import CategoricalFeature, FeatureSpec
from mtlexp.models.mmoe import MMoE, OMoE
from mtlexp.models.shared_bottom import SharedBottom
from mtlexp.models.single_task import SingleTask
from mtlexp.tasks import TaskSpec

FEATURES = FeatureSpec(numeric=tuple(f"x{i}" for i in range(5)), categorical=(CategoricalFeature("c", 4, 2),))
TASKS3 = [TaskSpec("a", "regression"), TaskSpec("b", "binary"), TaskSpec("c", "multiclass", num_classes=3)]
MODELS = [
    lambda f, t: SingleTask(f, t, bottom_hidden=[6, 4]),
    lambda f, t: SharedBottom(f, t, bottom_hidden=[7]),
    lambda f, t: OMoE(f, t, num_experts=3, expert_hidden=[5]),
    lambda f, t: MMoE(f, t, num_experts=5, expert_hidden=[6, 4], tower_hidden=[3, 2]),
]


@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("batch", [1, 4])
def test_outputs_are_logits_keyed_by_task(make, batch):
    model = make(FEATURES, TASKS3)
    out = model(torch.randn(batch, 5), torch.randint(0, 4, (batch, 1)))
    assert list(out.logits) == ["a", "b", "c"]
    assert out.logits["a"].shape == (batch,) and out.logits["b"].shape == (batch,)
    assert out.logits["c"].shape == (batch, 3)


def test_mmoe_gates_one_per_task_and_omoe_shares_one():
    x, c = torch.randn(6, 5), torch.randint(0, 4, (6, 1))
    mmoe = MMoE(FEATURES, TASKS3, num_experts=4)
    assert mmoe.gate.num_gates == 3
    gates = mmoe(x, c).gates
    assert set(gates) == {"a", "b", "c"} and gates["a"].shape == (6, 4)
    assert not torch.allclose(gates["a"], gates["b"])
    omoe = OMoE(FEATURES, TASKS3, num_experts=4)
    assert omoe.gate.num_gates == 1
    shared = omoe(x, c).gates
    assert torch.equal(shared["a"], shared["c"])


def test_omoe_is_mmoe_with_one_gate():
    torch.manual_seed(1)
    omoe = OMoE(FEATURES, TASKS3, num_experts=4)
    mmoe = MMoE(FEATURES, TASKS3, num_experts=4, shared_gate=True)
    mmoe.load_state_dict(omoe.state_dict())
    x, c = torch.randn(3, 5), torch.randint(0, 4, (3, 1))
    for name in ("a", "b", "c"):
        torch.testing.assert_close(omoe(x, c).logits[name], mmoe(x, c).logits[name])


def test_shared_parameters_split():
    tasks = TASKS3[:2]
    mmoe = MMoE(FEATURES, tasks, num_experts=2)
    shared = {id(p) for p in mmoe.shared_parameters()}
    assert all(id(p) in shared for p in mmoe.experts.parameters())
    assert all(id(p) not in shared for p in mmoe.task_parameters("a"))
    assert SingleTask(FEATURES, tasks).shared_parameters() == []


def test_single_task_networks_are_independent():
    tasks = [TaskSpec("a", "regression"), TaskSpec("b", "regression")]
    model = SingleTask(FEATURES, tasks)
    x, c = torch.randn(4, 5), torch.randint(0, 4, (4, 1))
    model(x, c).logits["a"].sum().backward()
    assert model.towers.towers["b"][1].weight.grad is None
    assert model.bottoms.weights[0].grad[1].abs().sum() == 0  # task b's bottom got no gradient from a
    grad = model.input[1].embeddings[0].weight.grad
    assert grad is None or grad.abs().sum() == 0


def test_default_sizes_have_comparable_parameter_counts():
    spec = FeatureSpec(numeric=tuple(f"x{i}" for i in range(100)))
    tasks = [TaskSpec("t1", "regression"), TaskSpec("t2", "regression")]
    counts = {
        m.__name__: sum(p.numel() for p in m(spec, tasks).parameters())
        for m in (SingleTask, SharedBottom, OMoE, MMoE)
    }
    assert max(counts.values()) / min(counts.values()) < 1.15, counts
