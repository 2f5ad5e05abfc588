"""Who may write a run folder: one live run at a time.

A run holds an exclusive ``flock`` on ``.mtlexp.lock`` in its folder for as long as its process lives; the OS
drops it when the process ends, crash and ``kill -9`` included, so a lock is never left behind. The lock
file records the holder's pid and host for the message a second run gets.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mtlexp.errors import MtlexpError
from mtlexp.processes import this_host

LOCK = ".mtlexp.lock"
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


def claim(folder: Path, key: str) -> None:
    """Lock ``folder`` for the life of this process; ``key`` is the config key that chose it, for the message.
    Claiming a folder this process holds, or claiming as a distributed worker, does nothing."""
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


def release(folder: Path) -> None:
    """Give the lock up (a multirun's job, done, in a process that runs more jobs). The file stays: removing
    it would let a third run lock a new file while a second still waits on the old one."""
    fd = _held.pop(folder.absolute(), None)
    if fd is not None:
        os.close(fd)

