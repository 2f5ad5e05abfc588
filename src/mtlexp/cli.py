"""The ``mtlexp`` command: pops the subcommand, then hands the rest of the command line to Hydra.

    mtlexp train [overrides] [-m]      conf/config.yaml
    mtlexp eval ckpt_path=... [...]    conf/eval.yaml
    mtlexp data inspect [overrides]    conf/config.yaml, data and tasks only
    mtlexp report DIR...               reads run folders only
"""

from __future__ import annotations

import contextlib
import difflib
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
from mtlexp.errors import MtlexpError, UnknownMetric
from mtlexp.hpo import (
    HPARAMS_SEARCH,
    expose_sweeper_plugin,
    official_sweeper_installed,
    optuna_sweeper_installed,
    study_errors,
)
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
        # What a sweeper reads (hparams_search): the objective (a list for several metrics), or None for a
        # failed job, which the Optuna sweeper records as a failed trial before it goes on.
        return returned[0] if ok and returned else None

    app()
    return len(failures)


def _train(cfg: DictConfig) -> float | list[float] | None:
    from mtlexp.hpo import check_metric_name, metric_list, objective
    from mtlexp.processes import share_cores
    from mtlexp.train import train

    if HydraConfig.get().mode == RunMode.MULTIRUN and "ddp" in str(cfg.trainer.get("strategy", "")).lower():
        # Lightning starts DDP workers by re-running the command line, -m included: each would sweep again.
        raise MtlexpError("trainer.strategy: DDP runs one job at a time; run it without -m (or sweep on one device)")
    share_cores()
    metric = cfg.get("optimized_metric")
    for name in metric_list(metric):
        check_metric_name(name, cfg)
    metrics = train(cfg)
    return objective(metrics, metric) if metric else None


def _evaluate(cfg: DictConfig) -> None:
    from mtlexp.evaluate import evaluate

    evaluate(cfg)


def _inspect(overrides: list[str]) -> int:
    from hydra import compose, initialize_config_module

    from mtlexp.components import build_data
    from mtlexp.data.inspect import inspect_report
    from mtlexp.errors import MtlexpError

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


# Hydra options that take a value: the value is not an override.
_VALUE_OPTIONS = ("--cfg", "-c", "--package", "-p")


def composition_error(config_name: str, args: list[str]) -> str | None:
    """Compose the config once before Hydra does, to put two mistakes that Hydra reports in several lines
    into one: a misspelled key (``model.num_expert=4``) and a nested group the chosen config lacks
    (``model/gate=topk`` with ``model=shared_bottom``). None when the config composes, or when the mistake
    is one Hydra reports clearly itself (an unknown option, which lists the options)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    overrides = _overrides(args)
    if overrides is None:
        return None
    try:
        with initialize_config_module("mtlexp.conf", version_base="1.3"):
            compose(config_name, overrides=overrides)
        return None
    except MissingConfigException as error:
        # Hydra's own message spans a dozen lines (and a traceback under HYDRA_FULL_ERROR, which a search sets).
        if error.missing_cfg_file and error.options:
            group, _, _ = error.missing_cfg_file.rpartition("/")
            return f"Could not find '{error.missing_cfg_file}'; the options in {group}: {', '.join(error.options)}"
        return None
    except ConfigCompositionException as error:
        cause = error.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key and \
                isinstance(cause.parent_node, DictConfig):
            return _no_such_key(str(cause.full_key), [str(k) for k in cause.parent_node])
        if "No match in the defaults list" in str(error):
            group = next((o.split("=", 1)[0] for o in overrides if f"override '{o.split('=', 1)[0]}'" in str(error)), "")
            return _no_such_group(config_name, group, [o for o in overrides if not o.startswith(f"{group}=")])
    except Exception:  # noqa: BLE001 - anything else is Hydra's to report, as it always has
        return None
    return None


def _overrides(args: list[str]) -> list[str] | None:
    """The overrides among Hydra's arguments, a sweep's first value standing for the sweep; None for a command
    line with options that change what is composed (--config-name, ...) or no composing at all (--help)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    plain, skip = [], False
    for arg in args:
        if skip or arg in ("-m", "--multirun"):
            skip = False
            continue
        if arg in _VALUE_OPTIONS:
            skip = True
        elif arg.startswith("-"):
            return None
        else:
            plain.append(arg)
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
    except Exception:  # noqa: BLE001 - a syntax error: Hydra's message shows where
        return None
    overrides = []
    for override in parsed:
        if not override.is_sweep_override():
            overrides.append(override.input_line)
            continue
        try:
            overrides.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
        except Exception:  # noqa: BLE001 - a sweep that only its sweeper expands (interval, glob)
            continue
    return overrides


def full_tracebacks_asked(args: list[str]) -> bool:
    """Whether the command line picks a debug config or sets full_tracebacks=true. Read from the command line,
    not the composed config, because Hydra's own errors (composition's included) come before any job."""
    for override in _overrides(args) or []:
        key, _, value = override.partition("=")
        key = key.lstrip("+")
        if (key == "debug" and value != "null") or (key == "full_tracebacks" and value.lower() == "true"):
            return True
    return False


def _no_such_key(full_key: str, keys: list[str]) -> str:
    parent, _, name = full_key.rpartition(".")
    keys = [k for k in keys if not k.startswith("_")]
    close = difflib.get_close_matches(name, keys, n=1)
    if close:
        return f"{full_key}: no such key; did you mean {parent + '.' if parent else ''}{close[0]}?"
    return (f"{full_key}: no such key; {parent or 'the config'} has {', '.join(keys)} (a new key is added with "
            f"+{full_key}=...)")


def _no_such_group(config_name: str, group: str, others: list[str]) -> str | None:
    """``model/gate: model=shared_bottom has no gate; models with one: cgc, mmoe, ...``, for a nested group."""
    import importlib.resources

    import yaml
    from hydra import compose, initialize_config_module

    parent, _, sub = group.partition("/")
    folder = importlib.resources.files("mtlexp.conf").joinpath(parent)
    if not sub or "/" in sub or not folder.is_dir():
        return None
    with_sub = []
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml"):
            defaults = (yaml.safe_load(entry.read_text()) or {}).get("defaults") or []
            if any(isinstance(d, dict) and sub in d for d in defaults):
                with_sub.append(entry.name[: -len(".yaml")])
    with initialize_config_module("mtlexp.conf", version_base="1.3"):
        chosen = compose(config_name, overrides=others, return_hydra_config=True).hydra.runtime.choices.get(parent)
    return f"{group}: {parent}={chosen} has no {sub}; the {parent} configs with one: {', '.join(sorted(with_sub))}"


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
    expose_sweeper_plugin()
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
        sys.exit("mtlexp: error: hparams_search needs Optuna: pip install 'mtlexp[hpo]'")
    if searching and official_sweeper_installed():
        sys.exit("mtlexp: error: hparams_search: hydra-optuna-sweeper is installed too, and it also registers "
                 "hydra/sweeper=optuna (on Optuna 2); mtlexp has its own: pip uninstall hydra-optuna-sweeper")
    # Hydra parses sys.argv itself; it must not see the subcommand. argv[0] stays the real script path,
    # which Lightning re-runs to start DDP workers.
    sys.argv = [sys.argv[0], *rest]
    os.environ[_COMMAND_ENV] = command
    # hydra/launcher=ray*: Ray folds console lines of different jobs that differ only in their numbers into
    # one "[repeated Nx across cluster]" line, which would hide all but one job's results table.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    config_name, task = apps[command]
    if full_tracebacks_asked(rest):  # an explicit HYDRA_FULL_ERROR=0 still wins
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    problem = composition_error(config_name, rest)
    if problem:
        sys.exit(f"mtlexp: error: {problem}")
    with study_errors() if searching else contextlib.nullcontext():
        failed = _hydra_app(config_name, task)
    if failed:
        sys.exit(1)
