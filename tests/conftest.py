"""Shared fixtures: configs composed through Hydra's compose API, small and fast, one folder per test; the CLI
run in a forked process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from mtlexp.config import register_configs

# Tiny data and few steps: these tests check wiring and artefacts, not quality. Sizes only: the progress bar,
# the loggers and the callbacks stay as a user gets them (a DDP test with the bar off once hid a hang).
FAST = [
    "data.num_train=512",
    "data.num_val=256",
    "data.num_test=256",
    "data.batch_size=64",
    "data.chunk_steps=4",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip, with the reason, where torch sees no CUDA device (a skip, never a failure)."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_tests:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (scripts/gpu_check.sh runs it on one)"))


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


# The warning filters of a fresh interpreter (no -W, no PYTHONWARNINGS): what a forked child starts from
# instead of pytest's filters, which record warnings into a list where no test would see them.
FRESH_WARNING_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, ""),
                         ("ignore", PendingDeprecationWarning, ""), ("ignore", ImportWarning, ""),
                         ("ignore", ResourceWarning, "")]


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))


def _as_a_fresh_process(args: Sequence[str], cwd: Path, env: Mapping[str, str] | None) -> None:
    """In the forked child: what a new ``mtlexp`` process would start with, as far as the test can see."""
    import torch

    os.chdir(cwd)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    os.environ["HYDRA_FULL_ERROR"] = "0"
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - closed by os._exit
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    sys.argv = ["mtlexp", *args]
    warnings.resetwarnings()
    for action, category, module in FRESH_WARNING_FILTERS:
        warnings.filterwarnings(action, category=category, module=module, append=True)
    warnings.showwarning = _print_warning
    # The parent's OpenMP threads are gone in the child, and libgomp does not start new ones: a parallel region
    # on more than one thread would wait for them forever. On one thread it never asks the pool (checked with
    # torch 2.13: 30 forked children trained after the parent's pool ran, none hung). Arrow re-creates its CPU
    # and IO pools in the child by itself (atfork handlers since Arrow 11; checked with pyarrow 26).
    torch.set_num_threads(1)


def cli_in_fork(args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """``mtlexp <args>`` in a child forked from the test process: a fresh process (its own Hydra state, exit
    status, stdout and stderr, warnings printed as a new interpreter prints them) without paying the 5-10 s of
    importing torch and Lightning again. ``env`` replaces the environment, as subprocess.run's does.

    The child computes on one thread (xdist already runs a worker per core). Tests about the process itself
    (signals, DDP's re-run of the script, the console script's exit, plugins found by a new interpreter, what
    runs at exit) start a real one instead.
    """
    import tempfile
    import time

    import mtlexp.evaluate  # noqa: F401 - imported once here, so that no child imports torch and Lightning again
    import mtlexp.train  # noqa: F401
    from mtlexp.cli import main

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                _as_a_fresh_process(args, cwd, env)
                try:
                    main(list(args))
                    code = 0
                except SystemExit as exit_:  # as the interpreter reports it: a message is printed, status 1
                    if isinstance(exit_.code, str):
                        print(exit_.code, file=sys.stderr)
                    code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except BaseException:  # noqa: BLE001 - an uncaught error: the traceback, as Python prints it
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:  # as subprocess.run's timeout: the child is killed, the test fails
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                out.seek(0)
                err.seek(0)
                raise subprocess.TimeoutExpired(["mtlexp", *args], timeout, out.read(), err.read())
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(["mtlexp", *args], os.waitstatus_to_exitcode(status), out.read(), err.read())
