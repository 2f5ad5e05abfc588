import pytest
import torch

from mtlexp.errors import ConfigValueError
from mtlexp.models.blocks import MLP, ExpertBank, InputBlock, TaskTowers
from mtlexp.specs import CategoricalFeature, FeatureSpec, TaskSpec


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("hidden", [[16], [12, 5]])
def test_expert_bank_equals_a_loop_over_experts(batch, hidden):
    torch.manual_seed(0)
    bank = ExpertBank(input_dim=10, num_experts=3, hidden=hidden)
    x = torch.randn(batch, 10)
    out = bank(x)
    assert out.shape == (batch, 3, hidden[-1])
    for e in range(3):
        h = x
        for weight, bias in zip(bank.weights, bank.biases):
            h = torch.relu(h @ weight[e] + bias[e, 0])
        torch.testing.assert_close(out[:, e], h)


def test_expert_bank_takes_one_input_per_expert():
    bank = ExpertBank(input_dim=4, num_experts=2, hidden=[3])
    x = torch.randn(2, 5, 4)
    out = bank(x)
    for e in range(2):
        torch.testing.assert_close(out[:, e], torch.relu(x[e] @ bank.weights[0][e] + bank.biases[0][e, 0]))


def test_expert_bank_rejects_bad_sizes():
    with pytest.raises(ConfigValueError, match="num_experts"):
        ExpertBank(4, 0, [3])
    with pytest.raises(ConfigValueError, match="expert_hidden"):
        ExpertBank(4, 2, [0])


def test_input_block_embeds_categoricals_of_mixed_widths():
    spec = FeatureSpec(
        numeric=("a", "b"),
        categorical=(CategoricalFeature("c1", 5, 3), CategoricalFeature("c2", 4, 2), CategoricalFeature("c3", 6, 3)),
    )
    block = InputBlock(spec)
    numeric = torch.randn(3, 2)
    categorical = torch.tensor([[0, 3, 5], [4, 0, 1], [2, 1, 0]])
    out = block(numeric, categorical)
    assert out.shape == (3, spec.input_dim) == (3, 2 + 3 + 2 + 3)
    torch.testing.assert_close(out[:, :2], numeric)
    # Distinct features never share embedding rows: same index in c1 and c3 gives different vectors.
    same = block(numeric, torch.tensor([[1, 0, 1], [1, 0, 1], [1, 0, 1]]))
    assert not torch.equal(same[:, 2:5], same[:, 7:10])


def test_mlp_and_towers():
    assert MLP(5, []).output_dim == 5
    tasks = [TaskSpec("r", "regression"), TaskSpec("m", "multiclass", num_classes=4)]
    towers = TaskTowers(6, tasks, hidden=[8])
    out = towers({"r": torch.randn(2, 6), "m": torch.randn(2, 6)})
    assert out["r"].shape == (2,) and out["m"].shape == (2, 4)
