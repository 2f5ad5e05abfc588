"""The objects a run config describes, built: the data module (set up), the Lightning module and the Trainer.

Shared by every kind of run (single, stacked, ``mtlexp eval``, ``mtlexp data inspect``), so none of them has
to import another to build what it runs.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from mtlexp.checkpoint_io import AtomicCheckpointIO
from mtlexp.data.base import MTLDataModule
from mtlexp.errors import MtlexpError
from mtlexp.instantiate import build, build_all
from mtlexp.module import MTLModule


def build_data(cfg: DictConfig) -> MTLDataModule:
    """The data module of a run config, set up (splits loaded, labels checked)."""
    tasks = OmegaConf.to_container(cfg.tasks, resolve=True) if cfg.get("tasks") is not None else {}
    data: MTLDataModule = build(cfg.data, "data", tasks=tasks, seed=int(cfg.seed))
    data.setup("fit")
    return data


def build_components(cfg: DictConfig) -> tuple[MTLDataModule, MTLModule]:
    """The data module (set up) and the Lightning module of a run config; shared by train and eval."""
    data = build_data(cfg)
    # Derived tasks (a product of other tasks' probabilities) have no tower: the module computes them.
    model = build(cfg.model, "model", features=data.features, tasks=[t for t in data.tasks if not t.derived])
    optimizer = build(cfg.optimizer, "optimizer")
    try:  # the optimizer checks its hyperparameters only when built: do it now, not deep inside fit
        optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:
        raise MtlexpError(f"optimizer: {error}") from None
    module = build(
        cfg.module,
        "module",
        model=model,
        tasks=data.tasks,
        optimizer=optimizer,
        weighting=build(cfg.weighting, "weighting", tasks=model.trained_tasks(data.tasks)),
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )
    return data, module


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any] | None = None) -> pl.Trainer:
    """The Trainer of a config, with its loggers (built from the config unless given) and the atomic
    checkpoint writer."""
    return build(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=(build_all(cfg.get("logger"), "logger") if loggers is None else loggers) or False,
        plugins=[AtomicCheckpointIO()],
    )


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
