"""Each architecture's defining property, on small hand-built models."""

import numpy as np
import pytest
import torch

from mtlexp.models import PLE, CrossStitch, L2Distance, MMoE, SharedBottom, SingleTask, TensorFactorization, TraceNorm
from mtlexp.specs import CategoricalFeature, FeatureSpec, TaskSpec

FEATURES = FeatureSpec(numeric=tuple(f"x{i}" for i in range(5)), categorical=(CategoricalFeature("c", 4, 2),))
TASKS3 = [TaskSpec("a", "regression"), TaskSpec("b", "binary"), TaskSpec("c", "multiclass", num_classes=3)]


def inputs(rows: int = 6):
    torch.manual_seed(3)
    return torch.randn(rows, 5), torch.randint(0, 4, (rows, 1))


def test_mmoe_gates_one_per_task_and_omoe_shares_one():
    x, c = inputs()
    mmoe = MMoE(FEATURES, TASKS3, num_experts=4)
    gates = mmoe(x, c).gates
    assert set(gates) == {"a", "b", "c"} and gates["a"].shape == (6, 4)
    assert not torch.allclose(gates["a"], gates["b"])
    omoe = MMoE(FEATURES, TASKS3, num_experts=4, shared_gate=True)
    assert omoe.gate.num_gates == 1
    shared = omoe(x, c).gates
    assert torch.equal(shared["a"], shared["c"])


def test_single_task_networks_are_independent():
    tasks = [TaskSpec("a", "regression"), TaskSpec("b", "regression")]
    model = SingleTask(FEATURES, tasks)
    x, c = inputs(4)
    model(x, c).logits["a"].sum().backward()
    assert model.towers.towers["b"][1].weight.grad is None
    assert model.bottoms.weights[0].grad[1].abs().sum() == 0  # task b's bottom got no gradient from a
    grad = model.input[1].embeddings[0].weight.grad
    assert grad is None or grad.abs().sum() == 0


def test_cross_stitch_at_identity_equals_independent_columns():
    stitched = CrossStitch(FEATURES, TASKS3, column_hidden=[6, 4], stitch_init=1.0)
    single = SingleTask(FEATURES, TASKS3, bottom_hidden=[6, 4])
    state = {k.replace("columns.", "bottoms."): v for k, v in stitched.state_dict().items() if "stitches" not in k}
    single.load_state_dict(state)
    x, c = inputs()
    for name in ("a", "b", "c"):
        torch.testing.assert_close(stitched(x, c).logits[name], single(x, c).logits[name])
    # Away from the identity the columns mix: task a's output now depends on column b.
    mixed = CrossStitch(FEATURES, TASKS3, column_hidden=[6, 4], stitch_init=0.9)
    mixed.load_state_dict({**stitched.state_dict(), **{k: v for k, v in mixed.state_dict().items() if "stitches" in k}})
    assert not torch.allclose(mixed(x, c).logits["a"], single(x, c).logits["a"])
    unit = mixed.diagnostics()["stitch_0"]
    torch.testing.assert_close(unit, torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))


def test_l2_penalty_is_zero_for_identical_weights_and_the_pairwise_sum_otherwise():
    same = torch.randn(1, 4, 3).expand(3, 4, 3)
    assert float(L2Distance(weight=1.0)([same])) == pytest.approx(0.0, abs=1e-9)
    w = torch.randn(3, 4, 3)
    pairs = sum(((w[t] - w[s]) ** 2).sum() for t in range(3) for s in range(t + 1, 3))
    assert float(L2Distance(weight=0.5)([w])) == pytest.approx(0.5 * float(pairs), rel=1e-5)
    assert float(L2Distance(weight=1.0)([w])) > 0


def test_trace_norm_is_the_sum_of_singular_values():
    w = torch.randn(2, 5, 4, dtype=torch.float64)
    expected = np.linalg.svd(w.reshape(2, -1).numpy(), compute_uv=False).sum()
    assert float(TraceNorm(weight=2.0)([w])) == pytest.approx(2 * expected, rel=1e-5)
    # Identical task weights have rank one: the norm is that of one row times sqrt(T).
    same = w[:1].expand(3, 5, 4)
    assert float(TraceNorm(weight=1.0)([same])) == pytest.approx(float(same[0].norm() * np.sqrt(3)), rel=1e-5)


def test_soft_sharing_penalty_is_the_aux_loss_in_training_only():
    model = SingleTask(FEATURES, TASKS3, bottom_hidden=[6], penalty=L2Distance(weight=0.1))
    x, c = inputs()
    out = model(x, c)
    expected = L2Distance(weight=0.1)(model.coupled_weights())
    torch.testing.assert_close(out.aux_loss, expected)
    assert len(model.coupled_weights()) == 3  # embedding table, bottom layer, tower hidden layer
    model.eval()
    assert model(x, c).aux_loss is None and "penalty" in model.diagnostics()


def test_cgc_without_shared_experts_is_a_mixture_of_experts_per_task():
    cgc = PLE(FEATURES, TASKS3, num_levels=1, num_task_experts=3, num_shared_experts=0, expert_hidden=[5])
    x, c = inputs()
    out = cgc(x, c)
    for t, task in enumerate(TASKS3):
        alone = MMoE(FEATURES, [task], num_experts=3, expert_hidden=[5])
        level = cgc.levels[0]
        rows = slice(3 * t, 3 * t + 3)
        alone.load_state_dict({
            "input.embeddings.0.weight": cgc.input.embeddings[0].weight,
            "experts.weights.0": level.task_experts.weights[0][rows],
            "experts.biases.0": level.task_experts.biases[0][rows],
            "gate.linear.weight": level.task_gates.linear.weight[rows],
            "gate.linear.bias": level.task_gates.linear.bias[rows],
            **{f"towers.towers.{task.name}.{k}": v for k, v in cgc.towers.towers[task.name].state_dict().items()},
        })
        torch.testing.assert_close(out.logits[task.name], alone(x, c).logits[task.name])
        torch.testing.assert_close(out.gates[task.name], alone(x, c).gates[task.name])


def test_ple_gates_have_their_widths_and_asymmetric_counts_work():
    ple = PLE(FEATURES, TASKS3, num_levels=3, num_task_experts=1, num_shared_experts=3, expert_hidden=[4])
    x, c = inputs(1)
    gates = ple(x, c).gates
    assert gates["a"].shape == (1, 4)  # own 1 + shared 3
    assert gates["level0/b"].shape == (1, 4) and gates["level1/shared"].shape == (1, 6)  # 3 tasks x 1 + 3
    assert "level2/shared" not in gates  # the top level has no shared gate


def test_tensor_factorization_generates_each_tasks_weights_from_the_shared_factors():
    model = TensorFactorization(FEATURES, TASKS3, bottom_hidden=[8], rank=3)
    layer = model.layers[0]
    w = layer.weight()
    assert w.shape == (3, FEATURES.input_dim, 8)
    for t in range(3):  # W_t = sum_p U_task[t, p] * U_in S_p U_out^T
        expected = sum(layer.task_factor[t, p] * layer.in_factor @ layer.core[:, :, p] @ layer.out_factor.T for p in range(3))
        torch.testing.assert_close(w[t], expected)
    assert torch.linalg.matrix_rank(w[0].detach()) <= 3
    # Initialised at nn.Linear's scale.
    assert float(w.detach().std()) == pytest.approx(1 / np.sqrt(3 * FEATURES.input_dim), rel=0.35)


def test_default_sizes_have_comparable_parameter_counts():
    spec = FeatureSpec(numeric=tuple(f"x{i}" for i in range(100)))
    tasks = [TaskSpec("t1", "regression"), TaskSpec("t2", "regression")]
    counts = {m.__name__: sum(p.numel() for p in m(spec, tasks).parameters()) for m in (SingleTask, SharedBottom, MMoE)}
    assert max(counts.values()) / min(counts.values()) < 1.15, counts
