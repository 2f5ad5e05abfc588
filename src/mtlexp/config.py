"""Typed schemas of the top-level run configs, registered in Hydra's ConfigStore.

Types are checked by OmegaConf when the config is composed (``seed=abc`` fails there, naming the key);
ranges are checked in ``__post_init__``, which ``validate_run`` triggers before any training starts.
Component nodes (data, model, ...) are ``_target_`` nodes whose constructor signatures are their schema
(see ``mtlexp.instantiate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from mtlexp.errors import MtlexpError


@dataclass
class TrialConfig:
    """``trial``: the Optuna trial a sweeper's job is (set by the sweeper when its study prunes; docs/hpo.md)."""

    study_name: Optional[str] = None  # noqa: UP045
    storage: Optional[str] = None  # noqa: UP045
    number: Optional[int] = None  # noqa: UP045


@dataclass
class RunConfig:
    """``mtlexp train``: one run."""

    data: Any = MISSING
    tasks: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    weighting: Any = MISSING
    module: Any = MISSING
    trainer: Any = MISSING
    callbacks: Any = field(default_factory=dict)
    logger: Any = field(default_factory=dict)
    paths: Any = MISSING
    seed: int = 0
    stack: int = 1
    stack_route: str = "auto"
    ckpt_path: Optional[str] = None  # noqa: UP045 - OmegaConf needs typing.Optional
    monitor: str = "val/norm_loss"
    monitor_mode: str = "min"
    run_test: bool = True
    # Replace the results an earlier run left in the run folder (an explicit hydra.run.dir) instead of refusing it.
    overwrite: bool = False
    # The value a sweeper optimises (hparams_search, docs/hpo.md): the train task returns it. A list of metrics
    # is a multi-objective search, and the task returns one value per metric.
    optimized_metric: Any = None
    # The study trial this run reports its epochs to (pruning): set by the sweeper, never by hand.
    trial: TrialConfig = field(default_factory=TrialConfig)
    # Print an unexpected error's traceback on the console as well as into error.log (debug=default).
    full_tracebacks: bool = False

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise MtlexpError(f"seed: expected an integer >= 0, got {self.seed}")
        if self.stack < 1:
            raise MtlexpError(f"stack: expected an integer >= 1 (seeds seed .. seed+stack-1 in one run), got {self.stack}")
        if self.stack_route not in ("auto", "native", "vmap"):
            raise MtlexpError(f"stack_route: expected 'auto', 'native' or 'vmap', got {self.stack_route!r}")
        if self.monitor_mode not in ("min", "max"):
            raise MtlexpError(f"monitor_mode: expected 'min' or 'max', got {self.monitor_mode!r}")
        if not self.monitor.startswith("val/"):
            raise MtlexpError(f"monitor: expected a validation metric ('val/...'), got {self.monitor!r}")
        metrics = self.optimized_metric
        if metrics is not None and not (isinstance(metrics, str) and metrics.startswith("val/")) and not (
                isinstance(metrics, Sequence) and not isinstance(metrics, str) and metrics
                and all(isinstance(m, str) and m.startswith("val/") for m in metrics)):
            raise MtlexpError("optimized_metric: expected a validation metric ('val/norm_loss' or "
                              f"'val/<task>/<metric>') or a list of them, got {metrics!r}")


def validate_run(cfg: DictConfig) -> RunConfig:
    """Run the range checks of ``RunConfig`` on the scalar top-level keys of a composed config."""
    scalars = {f.name: cfg.get(f.name) for f in fields(RunConfig) if f.name in cfg and f.default is not MISSING}
    scalars = {k: v for k, v in scalars.items() if not isinstance(v, DictConfig)}
    epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs != -1 and epochs < 1:
        # Lightning would "train" zero epochs and the run would report an untrained model as ok.
        raise MtlexpError(f"trainer.max_epochs: expected an integer >= 1 (or -1 for no limit), got {epochs}")
    return RunConfig(**scalars)


def register_configs() -> None:
    """Make the schemas available to the defaults lists (``- run_schema`` in conf/config.yaml)."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def flat_config(node: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """A plain config's leaves by key path (``model.num_experts``), in config order: the one flattening of a
    config, for the loggers' hyperparameter tables (a run's) and the report's swept keys (a run folder's). A
    list is one leaf, and so is an empty mapping, which the config has as a key all the same."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping) and value:
            flat.update({f"{key}{sep}{inner}": leaf for inner, leaf in flat_config(value, sep).items()})
        else:
            flat[str(key)] = value
    return flat
