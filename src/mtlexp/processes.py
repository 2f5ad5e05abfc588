"""Whether a process recorded by id and host (a run, a cache writer) has gone without a word."""

from __future__ import annotations

import os
import socket


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
