"""Every option of every config group composes, and its node matches its target's constructor."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from mtlexp.config import register_configs
from mtlexp.errors import MtlexpError
from mtlexp.instantiate import build, build_all, check_node
from mtlexp.specs import CategoricalFeature, FeatureSpec
from mtlexp.tasks import tasks_from_config

CONF = Path(__file__).resolve().parents[2] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(*overrides: str):
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("mtlexp.conf", version_base="1.3"):
            return compose("config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("model", options("model"))
def test_every_model_config_builds(model):
    cfg = composed(f"model={model}")
    features = FeatureSpec(numeric=("a", "b"), categorical=(CategoricalFeature("c", 5, 4),))
    tasks = tasks_from_config({"t1": {"kind": "binary"}, "t2": {"kind": "regression"}})
    assert build(cfg.model, "model", features=features, tasks=tasks).task_names == ["t1", "t2"]


@pytest.mark.parametrize("data", options("data"))
def test_every_data_config_matches_its_constructor_and_has_a_task_set(data):
    required = ["data.path=x.csv", "data.schema=s.yaml"] if data == "tabular" else []
    cfg = composed(f"data={data}", *required)
    check_node(cfg.data, "data", late=("tasks", "seed"))
    assert (CONF / "tasks" / f"{data}.yaml").is_file()  # the `tasks: ${data}` default needs one


@pytest.mark.parametrize("weighting", options("weighting"))
def test_every_weighting_config_builds_with_the_tasks(weighting):
    cfg = composed(f"weighting={weighting}", "seed=3")
    tasks = tasks_from_config({"t1": {"kind": "binary"}, "t2": {"kind": "regression"}, "t3": {"kind": "binary"}})
    built = build(cfg.weighting, "weighting", tasks=tasks)
    assert built.task_names == ["t1", "t2", "t3"] and built.seed == 3
    assert cfg.weighting._name_ == weighting


@pytest.mark.parametrize("group", ["optimizer", "logger", "callbacks"])
def test_small_groups_instantiate(group, tmp_path):
    for option in options(group):
        cfg = composed(f"{group}={option}", f"paths.output_dir={tmp_path}")
        node = cfg[group]
        if group in ("logger", "callbacks"):
            build_all(node, group)
        else:
            build(node, group)


@pytest.mark.parametrize("trainer", options("trainer"))
def test_every_trainer_config_composes(trainer):
    cfg = composed(f"trainer={trainer}", "paths.output_dir=/tmp/x")
    check_node(cfg.trainer, "trainer")
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_resolves(experiment):
    cfg = composed(f"experiment={experiment}", "paths.output_dir=/tmp/x")
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.model._target_.startswith("mtlexp.models.")


def test_a_required_value_left_unset_is_named():
    cfg = composed("data=tabular")
    with pytest.raises(MtlexpError, match=r"^data.path: required, but not set"):
        check_node(cfg.data, "data")


@pytest.mark.parametrize("debug", options("debug"))
@pytest.mark.parametrize("experiment", [None, "paper_synthetic"])
def test_every_debug_config_fits_the_schema_and_lightning_takes_its_trainer(debug, experiment, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from mtlexp.components import build_trainer
    from mtlexp.config import validate_run

    picks = [f"experiment={experiment}"] if experiment else []
    cfg = composed(*picks, f"debug={debug}", f"paths.output_dir={tmp_path}")
    assert validate_run(cfg).full_tracebacks is True
    assert cfg.trainer.max_epochs == 1 and not cfg.logger  # debug comes after an experiment
    callbacks = build_all(cfg.callbacks, "callbacks")
    assert not any(isinstance(c, ModelCheckpoint) for c in callbacks)
    # Lightning refuses enable_checkpointing=false beside a ModelCheckpoint, when the Trainer is built.
    trainer = build_trainer(cfg, callbacks)
    assert trainer.checkpoint_callback is None and trainer.loggers == []
