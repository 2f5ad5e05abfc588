"""Stable model names: configs name public targets, metrics record the config's name, old checkpoints load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import mtlexp.models
from mtlexp.evaluate import evaluate
from mtlexp.models.names import model_name, upgrade_model_config

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
LEGACY = Path(__file__).resolve().parent / "legacy_checkpoints"


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_model_config_is_named_after_its_file_and_targets_a_public_name(path):
    node = yaml.safe_load(path.read_text())
    assert node["_name_"] == path.stem
    module, cls = node["_target_"].rsplit(".", 1)
    assert module == "mtlexp.models" and hasattr(mtlexp.models, cls)


@pytest.mark.parametrize(("old", "target", "name", "fixed"), [
    ({"_target_": "mtlexp.models.mmoe.MMoE", "shared_gate": False}, "mtlexp.models.MMoE", "mmoe", {}),
    ({"_target_": "mtlexp.models.mmoe.MMoE", "shared_gate": True}, "mtlexp.models.MMoE", "omoe", {}),
    ({"_target_": "mtlexp.models.mmoe.OMoE", "num_experts": 2}, "mtlexp.models.MMoE", "omoe", {"shared_gate": True}),
    ({"_target_": "mtlexp.models.shared_bottom.SharedBottom"}, "mtlexp.models.SharedBottom", "shared_bottom", {}),
    ({"_target_": "mtlexp.models.single_task.SingleTask"}, "mtlexp.models.SingleTask", "single_task", {}),
    ({"_target_": "mtlexp.models.PLE", "_name_": "cgc"}, "mtlexp.models.PLE", "cgc", {}),
])
def test_old_model_configs_are_upgraded_to_public_names(old, target, name, fixed):
    new = upgrade_model_config(OmegaConf.create(old))
    assert new._target_ == target and new._name_ == name and model_name(new) == name
    for key, value in fixed.items():
        assert new[key] == value


# Model nodes of the click -> conversion configs as mtlexp <= 5e71ddd wrote them: the objective a name, its arguments
# on the model (the rest of each node is as today's).
NAMED_OBJECTIVES = {
    "esmm": {"objective": "esmm"},
    "naive_cvr": {"objective": "naive"},
    "escm2": {"objective": "escm2_ips", "counterfactual_weight": 0.1, "min_propensity": 0.05},
    "escm2_dr": {"objective": "escm2_dr", "counterfactual_weight": 0.1, "min_propensity": 0.05,
                 "imputation_hidden": [32], "imputation_weight": 1.0},
}


@pytest.mark.parametrize(("name", "old"), NAMED_OBJECTIVES.items(), ids=list(NAMED_OBJECTIVES))
def test_objectives_written_as_names_are_upgraded_to_todays_configs(make_cfg, name, old):
    today = OmegaConf.to_container(make_cfg(f"model={name}").model)
    written = {key: value for key, value in today.items() if key != "objective"} | old
    assert OmegaConf.to_container(upgrade_model_config(OmegaConf.create(written))) == today


def test_an_argument_the_named_objective_ignored_is_dropped():
    old = {"_target_": "mtlexp.models.EntireSpace", "_name_": "esmm", "objective": "esmm", "counterfactual_weight": 0.3}
    new = upgrade_model_config(OmegaConf.create(old))
    assert OmegaConf.to_container(new.objective) == {"_target_": "mtlexp.models.ESMM"}
    assert "counterfactual_weight" not in new


def evaluates_as_recorded(make_cfg, tmp_path: Path, model: str) -> dict:
    """``mtlexp eval`` of ``legacy_checkpoints/<model>`` on both splits gives the metrics its training run recorded."""
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(LEGACY / model / "best.ckpt", ckpt)
    expected = json.loads((LEGACY / model / "metrics.json").read_text())
    for split in ("test", "val"):
        cfg = make_cfg(f"ckpt_path={ckpt}", f"split={split}",
                       config_name="eval")
        result = evaluate(cfg)
        for task, values in expected[split].items():
            for metric, value in values.items():
                assert result[split][task][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (split, task, metric)
    if expected["gates"]:  # the training run recorded the validation split's gates
        assert result["gates"]["task1"] == pytest.approx(expected["gates"]["task1"], abs=1e-5)
    return result


@pytest.mark.newest
@pytest.mark.parametrize("model", ["mmoe", "omoe", "shared_bottom", "single_task"])
def test_checkpoints_of_the_previous_version_still_evaluate(make_cfg, tmp_path, model):
    """Written by mtlexp f684185 (before public names, with an OMoE class): same test metrics today."""
    assert evaluates_as_recorded(make_cfg, tmp_path, model)["model"] == model


def test_checkpoints_with_a_named_objective_still_evaluate(make_cfg, tmp_path):
    """Written by mtlexp 5e71ddd (``objective: escm2_dr``, over cross-stitch, so with an imputation tower and an
    input block of its own): the state dict's names are today's, and the metrics are the same."""
    assert evaluates_as_recorded(make_cfg, tmp_path, "escm2_dr")["model"] == "escm2_dr(cross_stitch)"
