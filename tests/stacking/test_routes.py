"""The two routes of a stacked run (``stack_route``): native (blocks that carry the replica dimension) and vmap.

For every model config (and every gate), each replica's outputs, gate weights, auxiliary loss and gradients on
either route are those of its single model.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import Tensor, nn

from mtlexp.errors import MtlexpError
from mtlexp.models import MMoE
from mtlexp.models.base import MTLOutput
from mtlexp.stacking.model import StackedModel
from mtlexp.train import train
from tests.models.test_contract import CASES, FEATURES, IDS, TASKS3, batch, make_model, task_losses

ROUTES = ["native", "vmap"]
# Noisy top-k draws its noise in training, which no two routes draw alike; without it its training pass (and its
# load-balancing loss) is deterministic, so training-mode equivalence covers the gate's every op but the draw.
DETERMINISTIC = {"topk": {"gate.noisy": "false"}}


def replicas(name: str, gate: str | None, sizes: dict) -> list[nn.Module]:
    first = make_model(name, gate, **sizes, **DETERMINISTIC.get(gate, {}))
    second = copy.deepcopy(first)
    with torch.no_grad():  # another replica: other values in every parameter
        for param in second.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return [first, second]


def parts(out: MTLOutput) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    aux = out.aux_loss if out.aux_loss is not None else torch.zeros(())
    return out.logits, out.gates, aux


def run_route(stacked: StackedModel, route: str, numeric: Tensor, categorical: Tensor) -> tuple:
    """(logits, gates, aux) of every replica, each with a leading K."""
    if route == "vmap":
        return stacked.vectorised(lambda call, n, c: parts(call(n, c)))(numeric, categorical)
    logits, gates, aux = parts(stacked.native(numeric, categorical))
    return logits, gates, aux.expand(stacked.num_replicas)


def loss_of(logits: dict[str, Tensor], labels: dict[str, Tensor], aux: Tensor) -> Tensor:
    return sum(task_losses(logits, labels).values()) + aux


@pytest.mark.parametrize(("name", "gate", "sizes"), CASES, ids=IDS)
def test_each_replica_is_its_single_model_on_both_routes(name, gate, sizes):
    models = replicas(name, gate, sizes)
    numeric, categorical, labels = batch(5)
    pair = (torch.stack([numeric, numeric + 1]), torch.stack([categorical, categorical.flip(0)]))
    for training in (False, True):  # eval: no auxiliary loss; training: the gates' and penalties' too
        singles = []
        for k, model in enumerate(models):
            model.train(training).zero_grad()
            out = model(pair[0][k], pair[1][k])
            loss_of(out.logits, labels, parts(out)[2]).backward()
            singles.append((out, {n: p.grad for n, p in model.named_parameters()}))
        for route in ROUTES:
            stacked = StackedModel(models).train(training)
            assert stacked.native_unsupported is None  # every shipped model runs natively: none stays on vmap
            logits, gates, aux = run_route(stacked, route, *pair)
            sum(loss_of({t: v[k] for t, v in logits.items()}, labels, aux[k]) for k in range(2)).backward()
            grads = dict(zip(stacked.param_names, (p.grad for p in stacked.stacked)))
            for k, (expected, expected_grads) in enumerate(singles):
                where = f"replica {k}, {route} route, {'training' if training else 'eval'}"
                for task, value in expected.logits.items():
                    torch.testing.assert_close(logits[task][k], value, rtol=1e-5, atol=1e-6, msg=f"{task}: {where}")
                assert gates.keys() == expected.gates.keys()
                for gate_name, value in expected.gates.items():
                    torch.testing.assert_close(gates[gate_name][k], value, rtol=1e-5, atol=1e-6,
                                               msg=f"{gate_name}: {where}")
                torch.testing.assert_close(aux[k], parts(expected)[2], rtol=1e-5, atol=1e-6, msg=f"aux: {where}")
                for param_name, grad in expected_grads.items():
                    want = torch.zeros_like(models[k].get_parameter(param_name)) if grad is None else grad
                    got = torch.zeros_like(want) if grads[param_name] is None else grads[param_name][k]
                    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6,
                                               msg=f"gradient of {param_name}: {where}")
                assert stacked.replica_state_dict(k).keys() == models[k].state_dict().keys()


class Doubler(nn.Module):
    """A block that knows nothing of a replica dimension."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * x


def mmoe_with_a_foreign_block() -> list[MMoE]:
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = MMoE(FEATURES, TASKS3, num_experts=3, expert_hidden=[4])
        model.towers.towers["r"][0].append(Doubler())
        models.append(model)
    return models


def test_a_model_with_a_block_that_lacks_the_replica_dimension_is_named():
    stacked = StackedModel(mmoe_with_a_foreign_block())
    assert stacked.native_unsupported == "towers.towers.r.0.2 (Doubler) does not carry a replica dimension"


def test_stack_route_native_on_such_a_model_is_a_one_line_error(make_cfg, monkeypatch):
    import mtlexp.models.mmoe as mmoe

    original = mmoe.MMoE.__init__

    def with_doubler(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.towers.towers["task1"][0].append(Doubler())

    monkeypatch.setattr(mmoe.MMoE, "__init__", with_doubler)
    with pytest.raises(MtlexpError) as error:
        train(make_cfg("stack=2", "stack_route=native", "model=mmoe", "trainer.max_epochs=1"))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("stack_route: native needs every block of model mmoe to carry the replica dimension")
    assert "towers.towers.task1.0.2 (Doubler)" in message


@pytest.mark.parametrize("route", ["auto", "vmap"])
def test_auto_falls_back_to_vmap_on_such_a_model_and_says_which_route_ran(make_cfg, monkeypatch, caplog, route):
    import mtlexp.models.mmoe as mmoe

    original = mmoe.MMoE.__init__

    def with_doubler(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.towers.towers["task1"][0].append(Doubler())

    monkeypatch.setattr(mmoe.MMoE, "__init__", with_doubler)
    with caplog.at_level("INFO", logger="mtlexp.stacking.module"):
        record = train(make_cfg("stack=2", f"stack_route={route}", "model=mmoe", "trainer.max_epochs=1"))
    assert record["status"] == "ok"
    assert "stack: 2 replicas of model mmoe on the vmap route" in caplog.text


def test_stack_route_rejects_an_unknown_route(make_cfg):
    with pytest.raises(MtlexpError, match=r"^stack_route: expected 'auto', 'native' or 'vmap', got 'fast'$"):
        train(make_cfg("stack=2", "stack_route=fast"))


@pytest.mark.slow
@pytest.mark.parametrize("route", ["auto", "vmap"])
def test_the_cli_says_which_route_a_stacked_run_took(tmp_path, route):
    run_dir = tmp_path / "run"
    sizes = ["data.num_train=256", "data.num_val=128", "data.num_test=128", "trainer.max_epochs=1"]
    result = subprocess.run([sys.executable, "-m", "mtlexp", "train", "stack=2", f"stack_route={route}", *sizes,
                             f"hydra.run.dir={run_dir}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    took = "native" if route == "auto" else route  # the default model (mmoe) carries the replica dimension
    assert f"stack: 2 replicas of model mmoe on the {took} route" in result.stdout + result.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "ok"
