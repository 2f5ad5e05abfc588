"""AITM: the adaptive information transfer unit, the sequential dependence, the calibrator, and AITM under ESMM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtlexp.models import AITM
from mtlexp.models.aitm import AdaptiveTransfer
from mtlexp.specs import FeatureSpec, TaskSpec
from tests.conftest import cli_in_fork

FEATURES = FeatureSpec(numeric=("a", "b", "c", "d"))
FUNNEL = [TaskSpec("click", "binary"), TaskSpec("purchase", "binary")]


def test_the_unit_returns_an_attention_weighted_mix_of_its_two_inputs() -> None:
    torch.manual_seed(0)
    unit = AdaptiveTransfer(6)
    p, q = torch.randn(5, 6), torch.randn(5, 6)
    inputs = torch.stack([p, q], 1)
    weights = torch.softmax((unit.query(inputs) * unit.key(inputs)).sum(-1) / 6 ** 0.5, 1)
    expected = weights[:, :1] * unit.value(p) + weights[:, 1:] * unit.value(q)
    torch.testing.assert_close(unit(p, q), expected)


def test_information_flows_forward_along_the_funnel_only() -> None:
    torch.manual_seed(0)
    model = AITM(FEATURES, FUNNEL, encoder_hidden=[8])
    x = torch.randn(16, 4)
    out = model(x, torch.zeros(16, 0, dtype=torch.long))
    first = torch.autograd.grad(out.logits["click"].sum(), list(model.encoders[1].parameters()), allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in first)  # the click tower never reads the purchase encoder
    second = torch.autograd.grad(out.logits["purchase"].sum(), list(model.encoders[0].parameters()))
    assert any(g.abs().sum() > 0 for g in second)  # the purchase tower reads the click encoder through the unit


def test_the_calibrator_penalises_a_later_step_more_likely_than_an_earlier_one() -> None:
    model = AITM(FEATURES, FUNNEL, calibrator_weight=0.6)
    logits = {"click": torch.tensor([0.0, 2.0, -1.0]), "purchase": torch.tensor([1.0, 0.0, -1.0])}
    expected = 0.6 * torch.relu(torch.sigmoid(logits["purchase"]) - torch.sigmoid(logits["click"])).mean()
    torch.testing.assert_close(model.calibration(logits), expected)
    assert float(expected) > 0
    assert AITM(FEATURES, FUNNEL).calibration(logits) is None  # off by default
    regression = [TaskSpec("a", "regression"), TaskSpec("b", "binary")]
    assert AITM(FEATURES, regression, calibrator_weight=0.6).calibration({"a": torch.zeros(3), "b": torch.zeros(3)}) is None


def test_the_calibrator_keeps_a_trained_funnel_in_order() -> None:
    torch.manual_seed(0)
    x = torch.randn(1000, 4)
    click = (x[:, 0] + 0.3 * torch.randn(1000) > 0).float()
    purchase = click * (x[:, 1] > 0.5).float()
    model = AITM(FEATURES, FUNNEL, calibrator_weight=5.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(100):
        out = model(x, torch.zeros(1000, 0, dtype=torch.long))
        loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(out.logits[n], y)
                   for n, y in (("click", click), ("purchase", purchase))) + out.aux_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = model(x, torch.zeros(1000, 0, dtype=torch.long))
        excess = torch.sigmoid(out.logits["purchase"]) - torch.sigmoid(out.logits["click"])
    assert float(excess.clamp_min(0).mean()) < 0.005


@pytest.mark.slow
def test_aitm_under_esmm_trains_on_the_simulator_through_the_cli(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = cli_in_fork(["train", "data=selection_bias_sim", "model=esmm", "model@model.bottom=aitm",
                          "data.num_train=4000", "data.num_val=1000", "data.num_test=1000", "trainer.max_epochs=2",
                          f"hydra.run.dir={run_dir}"], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"] == "esmm(aitm)" and metrics["model_class"] == "EntireSpace"
    assert set(metrics["test"]) == {"click", "conversion", "ctcvr"} and "auroc_entire" in metrics["test"]["conversion"]
