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
from omegaconf import MISSING, DictConfig, OmegaConf

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
    # Values a stacked run's replicas take besides their seeds: {key: [value, ...]}, crossed with the seeds.
    # {key: [value, ...]} or None, checked in __post_init__: typed as a dict it would be an empty node in struct
    # mode, and Hydra would refuse `stack_over={data.correlation:[...]}` as a merge of an unknown key.
    stack_over: Any = None
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
        check_stack_over(self.stack_over)
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


# Where a stacked run's replicas may differ: their data modules and their (fixed) task weights are their own,
# built from each replica's config. Everything else they share, so ``stack_over`` may not vary it: one model
# template runs every replica, one optimizer steps them all, one trainer drives them, and they are vectorised
# batch by batch (equal batch shapes). What varying a shared key would change, by key prefix:
STACKED_OVER = ("data.", "weighting.")
SHARED_BY_REPLICAS = {
    "data.batch_size": "the batch shapes",
    "data.eval_batch_size": "the batch shapes",
    "data.chunk_steps": "the batch shapes",
    "model": "the model (one architecture, with its sizes, runs every replica)",
    "optimizer": "the optimizer (one steps every replica)",
    "seed": "the seeds (seed .. seed+stack-1)",
    "stack": "the seeds (seed .. seed+stack-1)",
}


def check_stack_over(stack_over: Any) -> None:
    """Refuse, in one line naming it, a ``stack_over`` that is not ``{key: [values]}``, a key the replicas of a
    stacked run share, or values that are not distinct."""
    if stack_over is None:
        return
    if not isinstance(stack_over, Mapping):
        raise MtlexpError("stack_over: expected a mapping {key: [values]} (stack_over={data.correlation:[0.5,1.0]}), "
                          f"got {stack_over!r}")
    for key, values in stack_over.items():
        if not isinstance(values, list):
            raise MtlexpError(f"stack_over.{key}: expected a list of values, got {values!r}")
        shared = next((what for prefix, what in SHARED_BY_REPLICAS.items()
                       if key == prefix or key.startswith(f"{prefix}.")), None)
        if shared is None and not key.startswith(STACKED_OVER):
            shared = "what every replica shares (only keys under data. and weighting. may vary)"
        if shared is not None:
            raise MtlexpError(f"stack_over.{key}: cannot vary across the replicas of a stacked run: it changes "
                              f"{shared}; sweep it instead (-m {key}=a,b)")
        if not values:
            raise MtlexpError(f"stack_over.{key}: expected a non-empty list of values, got []")
        if len({repr(v) for v in values}) < len(values):
            raise MtlexpError(f"stack_over.{key}: expected distinct values (each is one set of replicas), got {values}")


def validate_run(cfg: DictConfig) -> RunConfig:
    """Run the range checks of ``RunConfig`` on the scalar top-level keys of a composed config (and on
    ``stack_over``, whose keys must also be keys of the config)."""
    scalars = {f.name: cfg.get(f.name) for f in fields(RunConfig) if f.name in cfg and f.default is not MISSING}
    scalars = {k: v for k, v in scalars.items() if not isinstance(v, DictConfig)}
    stack_over = cfg.get("stack_over")
    if isinstance(stack_over, DictConfig):
        stack_over = OmegaConf.to_container(stack_over)
        missing = object()
        for key in stack_over:
            if OmegaConf.select(cfg, str(key), default=missing) is missing:
                raise MtlexpError(f"stack_over.{key}: not a key of the config (expected e.g. data.correlation)")
    scalars["stack_over"] = stack_over
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
