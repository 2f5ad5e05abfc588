"""Gates: rows sum to one, per-gate inputs, noisy top-k's sparsity and balance loss, DSelect-k's selection."""

import pytest
import torch

from mtlexp.models.blocks import mix_experts
from mtlexp.models.gates import DSelectKGate, NoisyTopKGate, SoftmaxGate, grouped_linear, smooth_step


@pytest.mark.parametrize("make", [
    lambda: SoftmaxGate(6, num_experts=5, num_gates=3),
    lambda: NoisyTopKGate(6, num_experts=5, num_gates=3, k=2),
    lambda: DSelectKGate(6, num_experts=5, num_gates=3, k=2),
    lambda: DSelectKGate(6, num_experts=8, num_gates=3, k=3),
])
@pytest.mark.parametrize("per_gate_input", [False, True])
def test_gate_rows_sum_to_one(make, per_gate_input):
    torch.manual_seed(0)
    gate = make()
    x = torch.randn(3, 4, 6) if per_gate_input else torch.randn(4, 6)
    for training in (True, False):
        gate.train(training)
        weights, aux = gate(x)
        assert weights.shape == (4, 3, 5 if gate.num_experts == 5 else 8)
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(4, 3))
        assert (aux is None) == (not training or isinstance(gate, SoftmaxGate))
    assert mix_experts(weights, torch.randn(4, gate.num_experts, 9)).shape == (4, 3, 9)


def test_grouped_linear_with_one_input_per_group_is_each_groups_own_linear():
    linear = torch.nn.Linear(6, 3 * 4)
    x = torch.randn(3, 5, 6)
    out = grouped_linear(x, linear, 3)
    for g in range(3):
        rows = slice(4 * g, 4 * g + 4)
        torch.testing.assert_close(out[:, g], x[g] @ linear.weight[rows].T + linear.bias[rows])
    torch.testing.assert_close(grouped_linear(x[0], linear, 3), linear(x[0]).view(5, 3, 4))


def test_noisy_top_k_uses_exactly_k_experts_and_balances_load():
    torch.manual_seed(0)
    gate = NoisyTopKGate(4, num_experts=6, num_gates=2, k=2)
    torch.nn.init.normal_(gate.linear.weight)
    x = torch.randn(64, 4)
    weights, aux = gate(x)
    assert ((weights > 0).sum(-1) == 2).all()
    assert aux is not None and aux > 0
    aux.backward()  # the smooth load estimate carries gradient to the noise scale
    assert gate.noise.weight.grad.abs().sum() > 0
    # Balancing: minimising the auxiliary loss alone evens out importance across experts.
    optimizer = torch.optim.Adam(gate.parameters(), lr=0.05)
    before = float(gate(x)[1].detach())
    for _ in range(200):
        optimizer.zero_grad()
        gate(x)[1].backward()
        optimizer.step()
    assert float(gate(x)[1].detach()) < 0.5 * before


def test_smooth_step_is_zero_half_one_and_flat_outside():
    gamma = 2.0
    t = torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0], requires_grad=True)
    s = smooth_step(t, gamma)
    torch.testing.assert_close(s.detach(), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    s.sum().backward()
    torch.testing.assert_close(t.grad, torch.tensor([0.0, 0.0, 0.75, 0.0, 0.0]))  # C^1 at the edges


@pytest.mark.parametrize("num_experts", [4, 5, 8])
def test_dselect_k_with_saturated_selectors_uses_at_most_k_experts(num_experts):
    torch.manual_seed(1)
    gate = DSelectKGate(6, num_experts=num_experts, num_gates=2, k=2)
    with torch.no_grad():
        gate.selectors.weight.mul_(1e4)  # every |z| far past gamma / 2
    weights, aux = gate(torch.randn(50, 6))
    assert ((weights > 0).sum(-1) <= 2).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(50, 2))
    assert float(aux.detach()) == pytest.approx(0.0, abs=1e-6)  # binary selectors have zero entropy


def test_dselect_k_entropy_regulariser_drives_the_gate_to_k_experts():
    torch.manual_seed(2)
    gate = DSelectKGate(6, num_experts=8, num_gates=2, k=2, gamma=1.0, entropy_weight=1.0)
    x = torch.randn(128, 6)
    assert (gate(x)[0] > 0).sum(-1).float().mean() > 4  # mostly dense at the start
    optimizer = torch.optim.Adam(gate.parameters(), lr=0.05)
    for _ in range(500):
        optimizer.zero_grad()
        entropy = gate(x)[1]
        entropy.backward()
        optimizer.step()
    assert float(entropy.detach()) < 1e-5
    used = (gate(x)[0] > 0).sum(-1).float()
    # Per-example selectors saturate row by row: by now almost every row uses at most k experts exactly.
    assert float((used <= 2).float().mean()) > 0.95
