"""Click -> conversion objectives over zoo models (esmm, naive_cvr, escm2): which tasks carry a loss, the
counterfactual risk, and every one of them trained through the CLI on the simulator."""

from __future__ import annotations

import ast
import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mtlexp.models.entire_space
from mtlexp.errors import MtlexpError
from mtlexp.models import (AUX_ONLY, ESCM2DR, ESCM2IPS, ESMM, ConversionObjective, CrossStitch, EntireSpace, MMoE,
                           MTLOutput, NaiveCVR)
from mtlexp.models.names import model_configs
from mtlexp.specs import FeatureSpec
from mtlexp.tasks import tasks_from_config
from tests.conftest import cli_in_fork

TASKS = tasks_from_config({"click": {"kind": "binary"}, "conversion": {"kind": "binary", "observed_if": "click"},
                           "ctcvr": {"kind": "binary", "product": ["click", "conversion"]}})
FEATURES = FeatureSpec(numeric=("a", "b", "c"))


def model(objective: ConversionObjective) -> EntireSpace:
    towers = [t for t in TASKS if not t.derived]
    return EntireSpace(FEATURES, towers, partial(MMoE, num_experts=2, expert_hidden=[4]), objective)


@pytest.mark.parametrize(("objective", "trained"), [(ESMM, ["click", "ctcvr"]), (NaiveCVR, ["click", "conversion"]),
                                                    (ESCM2IPS, ["click", "ctcvr"]), (ESCM2DR, ["click", "ctcvr"])])
def test_each_objective_trains_its_tasks(objective: type[ConversionObjective], trained: list[str]) -> None:
    assert [t.name for t in model(objective()).trained_tasks(TASKS)] == trained


def test_an_objective_without_click_and_conversion_tasks_says_what_it_needs() -> None:
    plain = tasks_from_config({"a": {"kind": "binary"}, "b": {"kind": "binary"}})
    with pytest.raises(MtlexpError, match="model: ESMM needs a click task, a conversion task observed_if"):
        model(ESMM()).trained_tasks(plain)


@pytest.mark.parametrize("name", ["naive_cvr", "escm2"])
def test_the_task_mismatch_names_the_model_config_the_user_chose(tmp_path: Path, name: str) -> None:
    # The objectives inside (NaiveCVR, ESCM2IPS) are names the user never typed.
    result = cli_in_fork(["train", f"model={name}", "data.num_train=512", "data.num_val=256", "data.num_test=256",
                          "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"mtlexp: error: model: {name} needs a click task, ")


def test_the_bottom_keeps_the_contract() -> None:
    wrapped = model(ESMM())
    bottom_owners = wrapped.bottom.ownership()
    assert wrapped.ownership() == {f"bottom.{name}": owner for name, owner in bottom_owners.items()}
    assert wrapped.gate_experts() == wrapped.bottom.gate_experts()
    out = wrapped(torch.randn(5, 3), torch.zeros(5, 0, dtype=torch.long))
    assert set(out.logits) == {"click", "conversion"}


def test_escm2_adds_the_inverse_propensity_weighted_cvr_risk() -> None:
    escm2 = model(ESCM2IPS(counterfactual_weight=0.5, min_propensity=0.1))
    logits = {"click": torch.tensor([2.0, -3.0, 0.0]), "conversion": torch.tensor([0.5, 1.0, -1.0])}
    labels = {"click": torch.tensor([1.0, 0.0, 1.0]), "conversion": torch.tensor([1.0, 0.0, 0.0])}
    risk = escm2.extra_loss(MTLOutput(logits), labels, TASKS)
    propensity = torch.sigmoid(logits["click"]).clamp_min(0.1)
    errors = F.binary_cross_entropy_with_logits(logits["conversion"], labels["conversion"], reduction="none")
    torch.testing.assert_close(risk, 0.5 * (labels["click"] * errors / propensity).mean())
    assert model(ESMM()).extra_loss(MTLOutput(logits), labels, TASKS) is None


def test_escm2_dr_adds_the_doubly_robust_risk_and_the_imputation_loss() -> None:
    escm2 = model(ESCM2DR(counterfactual_weight=0.5, min_propensity=0.1, imputation_weight=2.0))
    p_ctr, p_cvr, imputed, click, conversion = [0.8, 0.05, 0.5], [0.6, 0.3, 0.2], [0.7, 0.4, 0.1], [1, 0, 1], [1, 0, 0]
    logit = lambda values: torch.logit(torch.tensor(values))  # noqa: E731
    output = MTLOutput({"click": logit(p_ctr), "conversion": logit(p_cvr)}, extras={"imputed_conversion": logit(imputed)})
    labels = {"click": torch.tensor(click, dtype=torch.float), "conversion": torch.tensor(conversion, dtype=torch.float)}
    bce = lambda p, y: -(y * math.log(p) + (1 - y) * math.log(1 - p))  # noqa: E731
    risk = imputation = 0.0
    for pc, pv, r, o, y in zip(p_ctr, p_cvr, imputed, click, conversion):
        e, e_hat, weight = bce(pv, y), bce(pv, r), o / max(pc, 0.1)
        risk += e_hat + weight * (e - e_hat)
        imputation += weight * (e - e_hat) ** 2
    expected = 0.5 * risk / 3 + 2.0 * imputation / 3
    torch.testing.assert_close(escm2.extra_loss(output, labels, TASKS), torch.tensor(expected, dtype=torch.float))


@pytest.mark.parametrize("bottom", [partial(MMoE, num_experts=2, expert_hidden=[4]), partial(CrossStitch, column_hidden=[4])])
def test_escm2_dr_trains_its_imputation_tower_and_pcvr_on_unclicked_impressions(bottom) -> None:
    torch.manual_seed(0)
    towers = [t for t in TASKS if not t.derived]
    features = FeatureSpec(numeric=("a", "b", "c"))
    numeric, categorical = torch.randn(8, 3), torch.zeros(8, 0, dtype=torch.long)
    unclicked = {"click": torch.zeros(8), "conversion": torch.zeros(8)}
    for objective, reaches_cvr in ((ESCM2DR(), True), (ESCM2IPS(), False)):
        escm2 = EntireSpace(features, towers, bottom, objective)
        escm2.extra_loss(escm2(numeric, categorical), unclicked, TASKS).backward()
        cvr_tower = [p for name, p in escm2.named_parameters() if ".conversion." in name]
        assert cvr_tower and all((p.grad is not None and p.grad.abs().sum() > 0) == reaches_cvr for p in cvr_tower)
    owners = escm2.ownership()
    aux_only = [n for n, o in EntireSpace(features, towers, bottom, ESCM2DR()).ownership().items() if o is AUX_ONLY]
    assert aux_only and all(n.startswith("imputation") for n in aux_only) and AUX_ONLY not in owners.values()
    dr = EntireSpace(features, towers, bottom, ESCM2DR(counterfactual_weight=0.0))
    clicked = {"click": torch.ones(8), "conversion": torch.randint(0, 2, (8,)).float()}
    dr.extra_loss(dr(numeric, categorical), clicked, TASKS).backward()
    reached = {n for n, p in dr.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert set(n for n, o in dr.ownership().items() if o is AUX_ONLY) <= reached  # the imputation tower learns
    assert not any(".conversion." in n or ".click." in n for n in reached)  # and its loss trains nothing else's towers


@pytest.mark.slow
def test_every_objective_trains_on_the_simulator_through_the_cli(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    objectives = model_configs(objectives=True)
    result = cli_in_fork(["train", "-m", "data=selection_bias_sim", f"model={','.join(objectives)}",
                          "data.num_train=4000", "data.num_val=1000", "data.num_test=1000", "trainer.max_epochs=2",
                          f"hydra.sweep.dir={sweep}"], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {m["model"]: m for m in (json.loads(p.read_text()) for p in sweep.glob("*/metrics.json"))}
    assert set(runs) == {f"{name}(shared_bottom)" for name in objectives}
    for name, metrics in runs.items():
        conversion = metrics["test"]["conversion"]
        assert 0 <= conversion["auroc"] <= 1 and 0 <= conversion["auroc_entire"] <= 1, name
        assert -1 < conversion["pcvr_bias"] < 1 and set(metrics["test"]) == {"click", "conversion", "ctcvr"}, name
    assert set(runs["esmm(shared_bottom)"]["weighting"]["weights"]) == {"click", "ctcvr"}
    assert set(runs["naive_cvr(shared_bottom)"]["weighting"]["weights"]) == {"click", "conversion"}


def test_entire_space_never_compares_strings() -> None:
    """Objectives are classes the model asks (``objective.untrained``, ``objective.extra_loss``): a comparison with
    a string literal (``objective == "esmm"``, ``name in ("escm2_ips", ...)``, ``.startswith("escm2")``) is the
    name dispatch they replaced coming back."""
    source = Path(mtlexp.models.entire_space.__file__)
    tree = ast.parse(source.read_text())

    def literal_strings(node: ast.AST) -> bool:
        items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return any(isinstance(item, ast.Constant) and isinstance(item.value, str) for item in items)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(literal_strings(n) for n in (node.left, *node.comparators)):
            found.append(node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("startswith", "endswith"):
            found.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and literal_strings(node.value):
            found.append(node.lineno)
    assert not found, f"{source.name}: string comparisons on lines {found}"
