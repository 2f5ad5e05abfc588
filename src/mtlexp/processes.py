"""Processes: whether one recorded by id and host (a run, a cache writer) has gone without a word, and how
many threads a job gets when a sweep runs jobs side by side."""

from __future__ import annotations

import os
import socket

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def this_host() -> str:
    return socket.gethostname()


def is_gone(pid: object, host: object) -> bool:
    """True only when ``host`` is this machine and no process ``pid`` exists; another machine's process, or a
    record without a usable id, cannot be checked and counts as alive."""
    if not isinstance(pid, int) or host != this_host():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        pass
    return False


def share_cores() -> int | None:
    """Parallel jobs on one machine (hydra/launcher=joblib): give torch in each job max(1, cores // jobs at
    once) threads, so that the jobs together use the cores without oversubscribing them. Returns the thread
    count set, or None (a single run, or another launcher: torch's default, every core)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or "joblib" not in str(hydra_cfg.launcher.get("_target_", "")):
        return None
    import joblib
    import torch

    cores = joblib.cpu_count()  # what joblib's n_jobs=-1 means: CPUs this process may use (affinity, cgroups)
    n_jobs = hydra_cfg.launcher.get("n_jobs")
    jobs = 1 if n_jobs is None else max(1, cores + 1 + int(n_jobs)) if int(n_jobs) < 0 else int(n_jobs)
    # The sweeper hands the launcher batches of jobs: the Optuna sweeper n_jobs trials at a time, the basic one
    # max_batch_size jobs (null: the whole sweep).
    batch = hydra_cfg.sweeper.get("n_jobs") or hydra_cfg.sweeper.get("max_batch_size")
    if batch:
        jobs = min(jobs, int(batch))
    threads = max(1, cores // jobs)
    torch.set_num_threads(threads)
    # For libraries that read them later and for any process the job starts (loky sets them in its workers
    # only where the parent had none, so a user's OMP_NUM_THREADS=8 would otherwise win).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    return threads
