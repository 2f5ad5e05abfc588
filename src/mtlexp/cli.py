"""The ``mtlexp`` command: pops the subcommand, then hands the rest of the command line to Hydra.

    mtlexp train [overrides] [-m]      conf/config.yaml
    mtlexp eval ckpt_path=... [...]    conf/eval.yaml
    mtlexp data inspect [overrides]    conf/config.yaml, data and tasks only
    mtlexp report DIR...               reads run folders only
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mtlexp.config import register_configs
from mtlexp.errors import MtlexpError
from mtlexp.hpo import HPARAMS_SEARCH, UnknownMetric, optuna_sweeper_installed, study_errors
from mtlexp.noise import silence

COMMANDS = ("train", "eval", "data", "report")
_COMMAND_ENV = "MTLEXP_COMMAND"
USAGE = """usage: mtlexp <command> [hydra overrides]

commands:
  train          train and test a model (conf/config.yaml); -m for a sweep; --help lists config groups
  eval           re-evaluate a checkpoint: mtlexp eval ckpt_path=<run>/checkpoints/best.ckpt
  data inspect   rows, features, label rates and label correlation of a data/tasks config
  report DIR...  mean ± sd over seeds of every configuration in sweep folders (reads run folders only)

options:
  -V, --version  the installed version, and the git commit when running from a checkout
"""


def _hydra_app(config_name: str, task: Callable[[DictConfig], Any]) -> int:
    """Run ``task`` under ``@hydra.main``; returns the number of failed single-run jobs."""
    from mtlexp.run_folder import release
    from mtlexp.runner import claim_for, run_job

    failures: list[str] = []

    @hydra.main(config_path="conf", config_name=config_name, version_base="1.3")
    def app(cfg: DictConfig) -> Any:
        output_dir = Path(cfg.paths.output_dir)
        returned: list[Any] = []
        stop: list[bool] = []

        def job(job_cfg: DictConfig) -> None:
            try:
                returned.append(task(job_cfg))
            except UnknownMetric:
                stop.append(True)
                raise

        sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
        if sweeping:  # a single run locked its folder before Hydra wrote into it (runner.OutputFolderCheck)
            try:
                claim_for(cfg, output_dir, "hydra.sweep.dir")
            except MtlexpError as error:
                # Not run_job's failure path: that writes error.log and metrics.json into the other run's folder.
                print(f"mtlexp: error: {error}", file=sys.stderr, flush=True)
                return None
        try:
            ok = run_job(job, cfg, output_dir)
        finally:
            if sweeping:  # the launcher may run the sweep's next job in this process
                release(output_dir)
        if not ok and not sweeping:
            failures.append(str(output_dir))
        if stop and sweeping:
            raise SystemExit(1)  # every other job of the sweep would train only to fail the same way
        # What a sweeper reads (hparams_search): the objective, or None for a failed job, which the Optuna
        # sweeper records as a failed trial before it goes on (NaN would abort the whole study).
        return returned[0] if ok and returned else None

    app()
    return len(failures)


def _train(cfg: DictConfig) -> float | None:
    from mtlexp.hpo import check_metric_name, objective
    from mtlexp.processes import share_cores
    from mtlexp.train import train

    if HydraConfig.get().mode == RunMode.MULTIRUN and "ddp" in str(cfg.trainer.get("strategy", "")):
        # Lightning starts DDP workers by re-running the command line, -m included: each would sweep again.
        raise MtlexpError("trainer.strategy: DDP runs one job at a time; run it without -m (or sweep on one device)")
    share_cores()
    metric = cfg.get("optimized_metric")
    if metric:
        check_metric_name(str(metric), cfg)
    metrics = train(cfg)
    return objective(metrics, str(metric)) if metric else None


def _evaluate(cfg: DictConfig) -> None:
    from mtlexp.evaluate import evaluate

    evaluate(cfg)


def _inspect(overrides: list[str]) -> int:
    from hydra import compose, initialize_config_module

    from mtlexp.data.inspect import inspect_report
    from mtlexp.errors import MtlexpError
    from mtlexp.train import build_data

    try:
        with initialize_config_module("mtlexp.conf", version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        print(inspect_report(build_data(cfg)))
        return 0
    except MtlexpError as error:
        print(f"mtlexp: error: {error}", file=sys.stderr)
    except Exception as error:  # noqa: BLE001 - Hydra composition errors, as one readable message
        print(f"mtlexp: error: {error}", file=sys.stderr)
    return 1


def version_line() -> str:
    """``mtlexp <version>``, plus the commit of the checkout the code runs from: a version alone does not say
    which code an editable install runs."""
    from importlib import metadata

    from mtlexp.provenance import git_state

    try:
        line = f"mtlexp {metadata.version('mtlexp')}"
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        line = "mtlexp (not installed)"
    git = git_state(Path(__file__).resolve().parent)
    if git["commit"]:
        line += f" (git {git['commit']}{', with uncommitted changes' if git['dirty'] else ''})"
    return line


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    silence()  # again in every job (runner.run_job): joblib workers are other processes
    register_configs()
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if args[0] in ("-V", "--version"):
        print(version_line())
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS and os.environ.get(_COMMAND_ENV) and "LOCAL_RANK" in os.environ:
        # A DDP worker that Lightning started by re-running this script: it gets our arguments minus the
        # subcommand (Hydra never saw it), so the subcommand travels in the environment.
        command, rest = os.environ[_COMMAND_ENV], args
    if command == "report":
        from mtlexp.report.sweep import main as report_main

        sys.exit(report_main(rest))
    if command == "data":
        if not rest or rest[0] != "inspect":
            sys.exit("mtlexp: error: expected 'mtlexp data inspect [overrides]'")
        sys.exit(_inspect(rest[1:]))
    apps = {"train": ("config", _train), "eval": ("eval", _evaluate)}
    if command not in apps:
        sys.exit(f"mtlexp: error: unknown command {command!r}; expected one of {sorted(COMMANDS)}\n{USAGE}")
    searching = command == "train" and any(HPARAMS_SEARCH.match(a) for a in rest)
    if searching and not optuna_sweeper_installed():
        sys.exit("mtlexp: error: hparams_search needs Hydra's Optuna sweeper: pip install 'mtlexp[hpo]'")
    # Hydra parses sys.argv itself; it must not see the subcommand. argv[0] stays the real script path,
    # which Lightning re-runs to start DDP workers.
    sys.argv = [sys.argv[0], *rest]
    os.environ[_COMMAND_ENV] = command
    # hydra/launcher=ray*: Ray folds console lines of different jobs that differ only in their numbers into
    # one "[repeated Nx across cluster]" line, which would hide all but one job's results table.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    config_name, task = apps[command]
    with study_errors() if searching else contextlib.nullcontext():
        failed = _hydra_app(config_name, task)
    if failed:
        sys.exit(1)
