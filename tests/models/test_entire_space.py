"""Click -> conversion objectives over zoo models (esmm, naive_cvr, escm2): which tasks carry a loss, the
counterfactual risk, and every one of them trained through the CLI on the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtlexp.data.features import FeatureSpec
from mtlexp.errors import MtlexpError
from mtlexp.models import EntireSpace, MMoE, MTLOutput
from mtlexp.models.names import model_configs
from mtlexp.tasks import tasks_from_config

TASKS = tasks_from_config({"click": {"kind": "binary"}, "conversion": {"kind": "binary", "observed_if": "click"},
                           "ctcvr": {"kind": "binary", "product": ["click", "conversion"]}})
FEATURES = FeatureSpec(numeric=("a", "b", "c"))


def model(objective: str, **kwargs) -> EntireSpace:
    towers = [t for t in TASKS if not t.derived]
    return EntireSpace(FEATURES, towers, partial(MMoE, num_experts=2, expert_hidden=[4]), objective, **kwargs)


@pytest.mark.parametrize(("objective", "trained"), [("esmm", ["click", "ctcvr"]), ("naive", ["click", "conversion"]),
                                                    ("escm2_ips", ["click", "ctcvr"])])
def test_each_objective_trains_its_tasks(objective: str, trained: list[str]) -> None:
    assert [t.name for t in model(objective).trained_tasks(TASKS)] == trained


def test_an_objective_without_click_and_conversion_tasks_says_what_it_needs() -> None:
    plain = tasks_from_config({"a": {"kind": "binary"}, "b": {"kind": "binary"}})
    with pytest.raises(MtlexpError, match="model: esmm needs a click task, a conversion task observed_if"):
        model("esmm").trained_tasks(plain)


def test_the_bottom_keeps_the_contract() -> None:
    wrapped = model("esmm")
    bottom_owners = wrapped.bottom.ownership()
    assert wrapped.ownership() == {f"bottom.{name}": owner for name, owner in bottom_owners.items()}
    assert wrapped.gate_experts() == wrapped.bottom.gate_experts()
    out = wrapped(torch.randn(5, 3), torch.zeros(5, 0, dtype=torch.long))
    assert set(out.logits) == {"click", "conversion"}


def test_escm2_adds_the_inverse_propensity_weighted_cvr_risk() -> None:
    escm2 = model("escm2_ips", counterfactual_weight=0.5, min_propensity=0.1)
    logits = {"click": torch.tensor([2.0, -3.0, 0.0]), "conversion": torch.tensor([0.5, 1.0, -1.0])}
    labels = {"click": torch.tensor([1.0, 0.0, 1.0]), "conversion": torch.tensor([1.0, 0.0, 0.0])}
    risk = escm2.extra_loss(MTLOutput(logits), labels, TASKS)
    propensity = torch.sigmoid(logits["click"]).clamp_min(0.1)
    errors = F.binary_cross_entropy_with_logits(logits["conversion"], labels["conversion"], reduction="none")
    torch.testing.assert_close(risk, 0.5 * (labels["click"] * errors / propensity).mean())
    assert model("esmm").extra_loss(MTLOutput(logits), labels, TASKS) is None


@pytest.mark.slow
def test_every_objective_trains_on_the_simulator_through_the_cli(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    objectives = model_configs(objectives=True)
    command = [sys.executable, "-m", "mtlexp", "train", "-m", "data=selection_bias_sim", f"model={','.join(objectives)}",
               "data.num_train=4000", "data.num_val=1000", "data.num_test=1000", "trainer.max_epochs=2",
               "trainer.enable_progress_bar=false", "logger=csv", f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {m["model"]: m for m in (json.loads(p.read_text()) for p in sweep.glob("*/metrics.json"))}
    assert set(runs) == {f"{name}(shared_bottom)" for name in objectives}
    for name, metrics in runs.items():
        conversion = metrics["test"]["conversion"]
        assert 0 <= conversion["auroc"] <= 1 and 0 <= conversion["auroc_entire"] <= 1, name
        assert -1 < conversion["pcvr_bias"] < 1 and set(metrics["test"]) == {"click", "conversion", "ctcvr"}, name
    assert set(runs["esmm(shared_bottom)"]["weighting"]["weights"]) == {"click", "ctcvr"}
    assert set(runs["naive_cvr(shared_bottom)"]["weighting"]["weights"]) == {"click", "conversion"}
