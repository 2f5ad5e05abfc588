"""Data-parallel runs (Lightning's DDP) that cannot hang for ever.

Two failure modes of a run over several processes, each bounded here:

- A collective that never completes (a rank stopped, crashed, or fell out of step): ``DDP`` gives every
  collective a finite timeout, and ``collective_errors`` turns torch's timeout into one line naming the key.
- A signal while the main thread waits inside a collective: Python runs signal handlers only between
  bytecodes, so Lightning's SIGTERM handler (and Ctrl-C) never runs while torch blocks in C++.
  ``ended_on_signal`` hears the signal on a thread of its own (through ``signal.set_wakeup_fd``, which the
  interpreter writes to from its C-level handler) and, if the process has not ended by itself after a grace
  period, records the run as interrupted and ends it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy

from mtlexp.errors import MtlexpError

TIMEOUT_KEY = "trainer.strategy.timeout_s"
# Long enough for rank 0's own work between collectives (writing checkpoints and the run folder) on slow
# storage; short enough that a stuck run fails within the hour a scheduler slot lasts.
DEFAULT_TIMEOUT_S = 600.0
# How long a signalled process may take to end through Lightning's own handler (which stops at the next
# batch and lets mtlexp record the run) before it counts as stuck. Schedulers wait ~30 s before SIGKILL.
GRACE_S = 10.0


class DDP(DDPStrategy):
    """Lightning's ``DDPStrategy`` with its collective timeout in seconds (``trainer.strategy.timeout_s``).

    :param timeout_s: how long a rank waits for the others in one collective before the run fails.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs: Any) -> None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise MtlexpError(f"{TIMEOUT_KEY}: expected a number of seconds > 0, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        super().__init__(timeout=timedelta(seconds=self.timeout_s), **kwargs)


def is_distributed(trainer: pl.Trainer) -> bool:
    return trainer.world_size > 1


_TIMED_OUT = re.compile(r"timed? ?out|timeout", re.IGNORECASE)
_PEER_GONE = re.compile(r"connection (closed|reset) by peer|broken pipe|connection refused", re.IGNORECASE)


@contextlib.contextmanager
def collective_errors(trainer: pl.Trainer) -> Iterator[None]:
    """Torch's errors from a collective that failed, as one line that says what happened and what to change."""
    if not is_distributed(trainer):
        yield
        return
    try:
        yield
    except RuntimeError as error:  # torch.distributed.DistBackendError is one
        text = str(error)
        if _TIMED_OUT.search(text) or _PEER_GONE.search(text):
            _stop_workers(trainer)  # a worker stuck for good would outlive the run, holding its console
        if _TIMED_OUT.search(text):
            timeout = getattr(trainer.strategy, "timeout_s", None) or trainer.strategy._timeout.total_seconds()
            raise MtlexpError(
                f"{TIMEOUT_KEY}: the {trainer.world_size} DDP processes waited {timeout:g} s for each other in a "
                "collective and gave up: one of them stopped or fell out of step (its own error, if any, is above); "
                f"raise {TIMEOUT_KEY} only if a rank legitimately works that long alone"
            ) from None
        if _PEER_GONE.search(text):
            raise MtlexpError(
                f"another of the {trainer.world_size} DDP processes ended while this one waited for it in a "
                "collective (its own error, if any, is above)"
            ) from None
        raise


@contextlib.contextmanager
def ended_on_signal(trainer: pl.Trainer, on_stuck: Callable[[int], None], grace_s: float = GRACE_S) -> Iterator[None]:
    """While the block runs, a SIGTERM or SIGINT that the process does not act on within ``grace_s`` (its main
    thread is blocked in a collective) calls ``on_stuck(signum)``, stops the DDP worker processes this one
    started, and exits with 128 + the signal. A no-op for a single process, which cannot block that way."""
    if not is_distributed(trainer) or threading.current_thread() is not threading.main_thread():
        yield
        return
    # The wakeup fd receives only signals that have a Python-level handler: SIGINT always, SIGTERM while Lightning
    # runs a stage (fit, validate, test), the only time a rank waits in a collective. Outside a stage SIGTERM keeps
    # its default action and ends the process at once.
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            signum = next((s for s in data if s in (signal.SIGTERM, signal.SIGINT)), None)
            if signum is None or done.wait(grace_s):
                continue
            with contextlib.suppress(Exception):
                on_stuck(signum)
            _stop_workers(trainer)
            sys.stderr.flush()
            os._exit(128 + signum)

    thread = threading.Thread(target=watch, name="mtlexp-signal-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        writer.close()  # wakes the thread: recv returns b""
        thread.join(timeout=1)
        reader.close()


def _stop_workers(trainer: pl.Trainer) -> None:
    """Kill the worker processes Lightning's launcher started (rank 0 only has any): they are blocked in the same
    collective, and only rank 0 writes the run folder, so nothing of theirs is lost."""
    for proc in getattr(trainer.strategy.launcher, "procs", None) or []:
        with contextlib.suppress(Exception):
            proc.kill()
