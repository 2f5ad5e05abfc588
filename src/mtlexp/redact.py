"""Passwords out of what a run records: ``scheme://user:password@host`` is written ``scheme://user:***@host``.

A run records its config and command line in many places that get shared: the run folder (``.hydra/``,
``provenance.json``, ``metrics.json``, ``mtlexp.log``, the loggers' hyperparameters, checkpoints) and the
experiment tracker. A URI-valued key (a tracking server, a data source), given on the command line or read from
the environment (``${oc.env:...}``), can carry a password. Every place that records one goes through ``redact``;
the config in memory keeps the real value, so the run itself still connects with it.

Only the password of a URI's user part is masked: a user alone (``ssh://git@host``) is a name, not a secret,
and secrets elsewhere (query parameters, plain values) cannot be told from ordinary values.

Free of torch and Lightning: Hydra's job logging and callbacks import it before the job runs.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mtlexp.io import write_atomic

MASK = "***"
# scheme://user:password@ - the password runs to the last "@" before the host, as URI parsers read it (a
# password with an unescaped "@" is common); quotes end it, so a quoted URI in YAML or a repr stays whole.
# Hydra's sweepers write overrides with ":" and other special characters backslash-escaped
# (https\://user\:pass@host), in overrides.yaml and hydra.yaml: those are read too.
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*\\?://(?:\\[^:]|[^:/?#@\s'\"\\])*\\?:)(?:\\.|[^/?#\s'\"\\])*@")


def redact(text: str) -> str:
    """``text`` with the password of every URI in it masked."""
    return _USERINFO.sub(rf"\g<head>{MASK}@", text) if "://" in text else text


def redact_values(obj: Any) -> Any:
    """A copy of a plain container (dicts, lists, tuples, strings and scalars) with every string redacted."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {key: redact_values(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_values(value) for value in obj)
    return obj


def redact_file(path: Path) -> None:
    """Rewrite a text file with its passwords masked (it is left as it is when it holds none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    redacted = redact(text)
    if redacted != text:
        write_atomic(path, redacted.encode())


class RedactingFilter(logging.Filter):
    """A log handler filter (``hydra.job_logging``) that masks passwords in every message it passes on:
    ``mtlexp.log`` and the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


class RedactHydraFiles(Callback):
    """Hydra writes ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` (and a sweep's
    ``multirun.yaml``) from the command line before the job starts, and offers no hook to change what it writes:
    rewrite them as the job starts, before anything can copy them (the report, the tracker's artifacts)."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra = config.hydra
        if hydra.output_subdir is not None:
            folder = Path(str(hydra.runtime.output_dir)) / str(hydra.output_subdir)
            for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
                redact_file(folder / name)
        if hydra.mode == RunMode.MULTIRUN:
            redact_file(Path(str(hydra.sweep.dir)) / "multirun.yaml")
