"""What a run was made of: the project's git commit, package versions, the data actually used."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from mtlexp.redact import redact_values

PACKAGES = ("mtlexp", "torch", "pytorch-lightning", "hydra-core", "omegaconf", "torchmetrics", "numpy", "pandas", "pyarrow")


def git_state(path: Path) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``path`` (``None`` for an installed copy)."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(path), *args], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()

        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def threads() -> dict[str, Any]:
    """The CPU threads the run's torch computes on, and what set them (parallel sweep jobs share the cores)."""
    import torch

    return {"torch": torch.get_num_threads(), "cpus": os.cpu_count(),
            **{var: os.environ[var] for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if var in os.environ}}


def environment() -> dict[str, Any]:
    """What the process runs on and with: provenance less the data (the same for every replica of a stacked run,
    which asks git and the package metadata once instead of once per replica)."""
    return {
        "git": git_state(Path(__file__).resolve().parent),
        "versions": versions(),
        "command": redact_values(sys.argv),
        "host": platform.node(),
        "threads": threads(),
    }


def provenance(data_fingerprint: str, data_summary: dict[str, Any],
               env: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(environment() if env is None else env), "data": {"sha256": data_fingerprint, **data_summary}}
