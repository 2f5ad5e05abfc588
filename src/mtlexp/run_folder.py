"""Who may write a run folder: one live run at a time, and never over an earlier run's results unless asked.

A run holds an exclusive ``flock`` on ``.mtlexp.lock`` in its folder for as long as its process lives; the OS
drops it when the process ends, crash and ``kill -9`` included, so a lock is never left behind. The lock
file records the holder's pid and host for the message a second run gets.

Also what a run folder says about how it was started (``run_overrides``), which the resume hint, the sweep
summary and ``mtlexp report`` all read.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from mtlexp.errors import MtlexpError
from mtlexp.processes import this_host
from mtlexp.run_record import FILE, STATUS, read_record

LOCK = ".mtlexp.lock"
# What runs write into their folder (train, stack=K, eval); Hydra rewrites .hydra/ itself. Logger folders
# are added from the config, since their names are settings.
ARTEFACTS = (FILE, "provenance.json", "error.log", "mtlexp.log", "checkpoints", "figures", "replicas",
             "csv", "tensorboard")
# Set by launchers for the processes of one distributed run: those of rank > 0 re-run the command line in
# the folder that rank 0 already holds.
_RANK_VARS = ("LOCAL_RANK", "NODE_RANK", "RANK")

_held: dict[Path, int] = {}


def ddp_worker() -> bool:
    """Whether this process is a distributed run's worker of rank > 0 (rank 0 holds the folder)."""
    for var in _RANK_VARS:
        try:
            if int(os.environ.get(var) or 0) > 0:
                return True
        except ValueError:
            continue
    return False


def claim(folder: Path, key: str, overwrite: bool = False, logger_dirs: Iterable[str] = (),
          keep: str | None = None) -> None:
    """Lock ``folder`` for the life of this process, then refuse it if an earlier run left its results
    there, or with ``overwrite`` delete them (``keep``: a file inside that must survive, the checkpoint a
    run resumes from). ``key`` is the config key that chose the folder, for the messages. Claiming a
    folder this process holds, or claiming as a distributed worker, does nothing."""
    folder = folder.absolute()
    if folder in _held or ddp_worker():
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # The holder writes its pid just after it takes the lock: in that instant there is nothing to read yet.
        pid, host = [*os.read(fd, 256).decode(errors="replace").split(), "?", "?"][:2]
        os.close(fd)
        raise MtlexpError(f"{key}: {folder} is in use by another run (pid {pid} on {host}); wait for it to end, "
                          "or give the run a folder of its own") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {this_host()}\n".encode())
    _held[folder] = fd
    try:
        _check_earlier_run(folder, key, overwrite, [*ARTEFACTS, *logger_dirs], keep)
    except BaseException:
        release(folder)
        raise


def release(folder: Path) -> None:
    """Give the lock up (a multirun's job, done, in a process that runs more jobs). The file stays: removing
    it would let a third run lock a new file while a second still waits on the old one."""
    fd = _held.pop(folder.absolute(), None)
    if fd is not None:
        os.close(fd)


def earlier_run(folder: Path) -> str | None:
    """What an earlier run left in ``folder`` (``status ok``, ``checkpoints``), or None: a new folder, or one
    Hydra has only just written its ``.hydra/`` into."""
    try:
        record = read_record(folder)
    except ValueError:
        return f"a {FILE} that is not a run record"
    if record is not None:
        return f"{STATUS} {record.status or 'unknown'}"
    checkpoints = folder / "checkpoints"
    return "checkpoints" if checkpoints.is_dir() and any(checkpoints.iterdir()) else None


def _check_earlier_run(folder: Path, key: str, overwrite: bool, artefacts: list[str], keep: str | None) -> None:
    found = earlier_run(folder)
    if found is None:
        return
    checkpoints = folder / "checkpoints"
    if not overwrite:
        last = checkpoints / "last.ckpt"
        resume = (f"resume it with ckpt_path={last} (the resumed run writes a new folder)" if last.is_file()
                  else "it has no last.ckpt to resume from")
        raise MtlexpError(f"{key}: {folder} holds an earlier run ({found}); "
                          f"{resume}, or replace it with overwrite=true")
    if keep and Path(keep).absolute().is_relative_to(folder):
        raise MtlexpError(f"overwrite: would delete ckpt_path={keep}, which is inside {folder}; resume into a new "
                          f"folder (leave {key} out)")
    for name in dict.fromkeys(artefacts):
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def run_overrides(run: Path) -> list[str]:
    """The command-line overrides a run was started with, one ``key=value`` string each."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]


def swept_only(overrides: list[list[str]]) -> list[list[str]]:
    """Each run's overrides minus those every run shares: what the sweep varied."""
    common = set.intersection(*(set(o) for o in overrides)) if overrides else set()
    return [[o for o in run if o not in common] for run in overrides]
