"""The sweeper's config surface (``hydra/sweeper=optuna``), the official hydra-optuna-sweeper's keys on Optuna >= 4.

Hydra's plugin discovery imports this module, which registers the nodes: the sweeper, its samplers
(``hydra/sweeper/sampler``) and its pruners (``hydra/sweeper/pruner``). The schema's annotations are typing's
(``Optional``, ``Dict``): OmegaConf 2.3 does not read ``X | None``.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mtlexp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # The sweeper builds the sampler and the pruner itself: the seed moves on with a resumed study, and a resumed
    # study's pruner is stored in it for the trials (the jobs) to read.
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    # MISSING, not None: a MISSING value leaves the node its defaults list put there.
    sampler: Any = MISSING
    pruner: Any = MISSING
    # minimize or maximize; a list of them, one per metric, for a list optimized_metric (a multi-objective study).
    direction: Any = "minimize"
    study_name: Optional[str] = None
    # An RDB URL (sqlite:///path/optuna.db) keeps the study, which the same command then resumes; null: in memory.
    storage: Any = None
    # The study's total of complete (and pruned) trials, over every command that ran it.
    n_trials: int = 20
    # Trials asked for and launched at once, as one batch of jobs of the launcher.
    n_jobs: int = 2
    # The share of this command's trials that may fail before the search stops.
    max_failure_rate: float = 0.0
    # The search space, in Hydra's override grammar: choice(...), range(...), interval(...), tag(log, ...), int(...).
    params: Optional[Dict[str, Any]] = None


# Each sampler with the arguments most searches set; any other of its constructor's is added with +key=value.
SAMPLERS: dict[str, dict[str, Any]] = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None, "n_startup_trials": 10, "n_ei_candidates": 24},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": None, "n_startup_trials": 1, "sigma0": None},
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler", "seed": None, "population_size": 50,
               "crossover_prob": 0.9, "swapping_prob": 0.5},
    "gp": {"_target_": "optuna.samplers.GPSampler", "seed": None, "n_startup_trials": 10},
}

# NopPruner is Optuna's "never prune": the sweeper tells the trials there is no pruner at all.
PRUNERS: dict[str, dict[str, Any]] = {
    "none": {"_target_": "optuna.pruners.NopPruner"},
    "median": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 0,
               "interval_steps": 1},
    "hyperband": {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 1, "max_resource": "auto",
                  "reduction_factor": 3},
}

cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="mtlexp_optuna_sweeper")
for name, node in SAMPLERS.items():
    cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider="mtlexp_optuna_sweeper")
for name, node in PRUNERS.items():
    cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider="mtlexp_optuna_sweeper")
