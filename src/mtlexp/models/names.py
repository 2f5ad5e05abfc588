"""Stable model names, and the upgrade of model configs written by older versions.

A model configuration's name is its config file's (``model=omoe``), stored in the node as ``_name_`` so it
travels with ``.hydra/config.yaml`` and every checkpoint. Its ``_target_`` is a public name from
``mtlexp.models`` (``mtlexp.models.MMoE``), never a module path. Configs written before this contract
(checkpoints of mtlexp <= f684185) named module paths and had an ``OMoE`` class; ``upgrade_model_config``
maps them onto today's names, so ``mtlexp eval`` keeps reading old checkpoints. Click -> conversion
objectives were names with their arguments beside them on the model (``objective: escm2_ips``,
``counterfactual_weight: 0.1``; checkpoints of mtlexp <= 5e71ddd); they are now a node of their own.
"""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

import mtlexp.models

NAME_KEY = "_name_"

# Classes that were renamed or folded into another: old class name -> (public class, fixed arguments).
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "OMoE": ("MMoE", {"shared_gate": True}),
}
# Names of configurations written before ``_name_`` existed, by public class.
LEGACY_NAMES = {"MMoE": "mmoe", "SharedBottom": "shared_bottom", "SingleTask": "single_task"}
# Objectives written as names, by public class, and the model keys that were their arguments (a class keeps those
# its constructor takes: the old model accepted all four and ignored what its objective did not read).
LEGACY_OBJECTIVES = {"esmm": "ESMM", "naive": "NaiveCVR", "escm2_ips": "ESCM2IPS", "escm2_dr": "ESCM2DR"}
LEGACY_OBJECTIVE_KEYS = ("counterfactual_weight", "min_propensity", "imputation_hidden", "imputation_weight")


def model_name(node: DictConfig | dict[str, Any]) -> str:
    """The stable name of a model config node (``omoe``), for metrics.json and reports."""
    name = node.get(NAME_KEY)
    if name:
        bottom = node.get("bottom")  # an objective over a zoo model: esmm(mmoe)
        return f"{name}({model_name(bottom)})" if isinstance(bottom, (dict, DictConfig)) else str(name)
    cls = str(node.get("_target_", "")).rsplit(".", 1)[-1]
    if cls == "MMoE" and node.get("shared_gate"):
        return "omoe"
    return LEGACY_NAMES.get(cls, cls.lower())


def upgrade_model_config(node: DictConfig) -> DictConfig:
    """A model node written by any mtlexp version, rewritten to today's public target and with its name."""
    node = OmegaConf.create(OmegaConf.to_container(node))
    target = str(node.get("_target_", ""))
    if target.startswith("mtlexp.models.") and target.count(".") > 2:  # a module path, not a public name
        cls = target.rsplit(".", 1)[-1]
        cls, fixed = ALIASES.get(cls, (cls, {}))
        if hasattr(mtlexp.models, cls):
            with open_dict(node):
                node._target_ = f"mtlexp.models.{cls}"
                for key, value in fixed.items():
                    node[key] = value
    objective = node.get("objective")
    if isinstance(objective, str) and objective in LEGACY_OBJECTIVES:
        node.objective = _objective_node(node, LEGACY_OBJECTIVES[objective])
    if NAME_KEY not in node:
        with open_dict(node):
            node[NAME_KEY] = model_name(node)
    return node


def _objective_node(node: DictConfig, cls: str) -> DictConfig:
    """The objective node of an old model node, taking the objective's arguments off the model node."""
    accepted = inspect.signature(getattr(mtlexp.models, cls)).parameters
    arguments = {key: node.pop(key) for key in LEGACY_OBJECTIVE_KEYS if key in node}
    kept = {key: value for key, value in arguments.items() if key in accepted}
    return OmegaConf.create({"_target_": f"mtlexp.models.{cls}", **kept})


def model_configs(objectives: bool = False) -> list[str]:
    """The shipped model configs (``conf/model/*.yaml``): the zoo's architectures, which train any task set, or
    with ``objectives`` the click -> conversion objectives over them (an ``objective`` key: esmm, ...), which
    need click and conversion tasks."""
    import importlib.resources

    import yaml

    folder = importlib.resources.files("mtlexp.conf").joinpath("model")
    names = []
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml"):
            node = yaml.safe_load(entry.read_text()) or {}
            if ("objective" in node) == objectives:
                names.append(entry.name[: -len(".yaml")])
    return sorted(names)
