"""Shared fixtures: configs composed through Hydra's compose API, small and fast, one folder per test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from mtlexp.config import register_configs

# Tiny data and few steps: these tests check wiring and artefacts, not quality.
FAST = [
    "data.num_train=512",
    "data.num_val=256",
    "data.num_test=256",
    "data.batch_size=64",
    "data.chunk_steps=4",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides, config_name="config", fast=True)``: a composed config writing under tmp_path."""
    register_configs()
    counter = iter(range(1000))

    def make(*overrides: str, config_name: str = "config", fast: bool = True) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_module("mtlexp.conf", version_base="1.3"):
            cfg = compose(config_name, overrides=[*(FAST if fast and config_name == "config" else []), *overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"run{next(counter)}")
        return cfg

    yield make
    GlobalHydra.instance().clear()
