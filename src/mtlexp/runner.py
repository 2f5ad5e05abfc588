"""Running a job so that a failure is one clear line and loses nothing already written.

``run_job`` wraps a task function: any error is printed as ``mtlexp: error: <one line>`` on stderr, the
traceback of an unexpected error goes to ``error.log`` in the run folder (and to stderr too under
``full_tracebacks: true``, which ``debug=default`` sets), and ``metrics.json`` records
``status: failed`` with the message. It never exits the process, so one failed job cannot take the rest
of a multirun down; the CLI turns failures into a non-zero exit status at the end.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mtlexp.artefacts import format_table
from mtlexp.errors import MtlexpError
from mtlexp.io import write_atomic
from mtlexp.noise import silence
from mtlexp.redact import redact
from mtlexp.run_folder import claim, ddp_worker, earlier_run, run_overrides, swept_only
from mtlexp.run_record import STATUS, RunRecord, Status, read_record, update_record

log = logging.getLogger(__name__)


def run_job(task: Callable[[DictConfig], Any], cfg: DictConfig, output_dir: Path | None) -> bool:
    """Run ``task(cfg)``; return whether it succeeded."""
    silence()
    if ddp_worker():  # rank 0 holds and writes the run folder; a worker's errors still reach the console
        output_dir = None
    try:
        task(cfg)
        _end_tracking("FINISHED")
        return True
    except MtlexpError as error:
        message = str(error)
    except (KeyboardInterrupt, SystemExit) as error:
        # Lightning turns Ctrl-C during fit into SystemExit(1), and SIGTERM (what schedulers send on
        # preemption) into a SystemExit without a code, which would exit 0: record it, say how to resume,
        # and stop the whole sweep with a non-zero status (128 + the signal when there is no code).
        record_interrupted(output_dir)
        code = error.code if isinstance(error, SystemExit) else None
        raise SystemExit(code if code not in (None, 0) else 130 if isinstance(error, KeyboardInterrupt) else 143) from None
    except Exception as error:  # noqa: BLE001 - the one place unexpected errors become one line
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        trace = redact(traceback.format_exc())
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(output_dir / "error.log", trace.encode())
            message += f" (traceback in {output_dir / 'error.log'})"
        if cfg.get("full_tracebacks", False):  # debug=default: whoever debugs wants it where they look
            print(trace, file=sys.stderr, end="", flush=True)
    message = redact(message)  # errors quote config values, and this line is kept in the run folder
    print(f"mtlexp: error: {message}", file=sys.stderr, flush=True)
    _log_to_file(f"mtlexp: error: {message}")
    _mark(output_dir, Status.FAILED, message)
    _end_tracking("FAILED")
    return False


def record_interrupted(output_dir: Path | None) -> None:
    """Record the run as interrupted and say how to resume it (rank 0's to do, under DDP)."""
    if output_dir is None:
        return
    _mark(output_dir, Status.INTERRUPTED, Status.INTERRUPTED.value)
    _end_tracking("KILLED")
    print(f"mtlexp: interrupted; {_resume_hint(output_dir)}", file=sys.stderr, flush=True)


def _end_tracking(status: str) -> None:
    """End the job's experiment-tracker runs (logger=mlflow) with its outcome. A no-op, and no import, unless
    the job built such a logger."""
    tracking = sys.modules.get("mtlexp.tracking")
    if tracking is not None:
        tracking.end_runs(status)


def _log_to_file(message: str) -> None:
    """Put the error into the run's log file (mtlexp.log) too; the console already has it, on stderr."""
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _resume_hint(output_dir: Path | None) -> str:
    """The command line that resumes an interrupted run from its last checkpoint."""
    last = output_dir / "checkpoints" / "last.ckpt" if output_dir is not None else None
    if last is None or not last.is_file():
        return "no checkpoint was written yet: run the same command again"
    # A resumed run writes a folder of its own (and keeps the better best checkpoint of the two). A search
    # trial's study never hears how a run resumed by hand ends, so it does not report to it (trial.*) either.
    overrides = [o for o in run_overrides(output_dir) if not o.startswith(("ckpt_path=", "hydra.", "trial."))]
    return "resume with: mtlexp train " + " ".join([*overrides, f"ckpt_path={last}"])


def _mark(output_dir: Path | None, status: Status, message: str) -> None:
    """Record the outcome in metrics.json, keeping whatever the run wrote there."""
    if output_dir is None:
        return
    try:
        update_record(output_dir, status=status, error=message)
    except OSError:
        pass


class OutputFolderCheck(Callback):
    """Before Hydra creates the run (or sweep) folder: a folder that cannot be created is one line, not
    Hydra's traceback. The check creates the missing folders and removes them again: the sweep folder may
    hold ``${now:...}``, which resolves anew (to another microsecond) when Hydra creates the real one.

    A single run's folder is then locked (``run_folder.claim``) here, before Hydra writes its ``.hydra/``
    and log file into it: ``hydra.run.dir`` resolves to the same folder now as for the job (the ``now``
    resolver caches its value in the config). A sweep's jobs lock theirs when they start."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.run.dir))
        _check_creatable(folder, "hydra.run.dir")
        try:
            claim_for(config, folder, "hydra.run.dir")
        except MtlexpError as error:
            print(f"mtlexp: error: {error}", file=sys.stderr)
            raise SystemExit(1) from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        _check_creatable(sweep_dir, "hydra.sweep.dir")
        # Hydra writes each job's .hydra/ before the job can look: a sweep rerun into the same folder is refused
        # here, while the earlier jobs' records are intact.
        earlier = sorted(p.name for p in sweep_dir.glob("*") if p.is_dir() and earlier_run(p)) if sweep_dir.is_dir() else []
        if earlier and not config.get("overwrite"):
            print(f"mtlexp: error: hydra.sweep.dir: {sweep_dir} holds the runs of an earlier sweep ({', '.join(earlier)}); "
                  "give the sweep a folder of its own, or replace them with overwrite=true", file=sys.stderr)
            raise SystemExit(1)


def claim_for(cfg: DictConfig, folder: Path, key: str) -> None:
    """``run_folder.claim`` with what a run config says: ``overwrite``, the loggers' folders to clear, and the
    checkpoint a resumed run reads (it must survive the clearing)."""
    loggers = [n for n in (cfg.get("logger") or {}).values() if isinstance(n, DictConfig) and "save_dir" in n]
    claim(folder, key, overwrite=bool(cfg.get("overwrite", False)),
          logger_dirs=[str(n.name) for n in loggers if n.get("name")],
          keep=OmegaConf.select(cfg, "ckpt_path", default=None))


def _check_creatable(folder: Path, key: str) -> None:
    missing = []
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        for path in reversed(missing):
            path.mkdir()
        for path in missing:
            path.rmdir()
    except OSError as error:
        print(f"mtlexp: error: {key}: cannot create the output folder {folder} ({error.strerror or error})",
              file=sys.stderr)
        raise SystemExit(1) from None


class SweepSummary(Callback):
    """At the end of a multirun: one row per job (its overrides, status, headline metric), and a non-zero
    exit status when any job failed (a trial its study pruned did not). Reads only the job folders, so it works
    with every launcher."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        swept = dict(zip((job.name for job in jobs), swept_only([run_overrides(job) for job in jobs])))
        rows, failed = [], 0
        for job in jobs:
            record = read_record(job) or RunRecord()
            failed += not record.settled  # a trial its study pruned ended as asked
            rows.append([job.name, " ".join(swept[job.name]), record.status or "missing", record.test_norm_loss,
                         record.error or ""])
        if rows:
            print(format_table(["job", "overrides", STATUS, "test/norm_loss", "error"], rows))
        print(f"sweep dir: {sweep_dir}")
        if not rows and next(sweep_dir.rglob(".hydra"), None) is None:
            # Jobs that ran elsewhere wrote their folders elsewhere: on a running Ray cluster a relative
            # hydra.sweep.dir resolves in the workers' working directory, not in this one.
            print(f"mtlexp: error: no job folder in {sweep_dir}: the jobs wrote theirs elsewhere; on a cluster, "
                  "give an absolute hydra.sweep.dir that every node shares", file=sys.stderr)
            raise SystemExit(1)
        if failed:
            print(f"mtlexp: error: {failed} of {len(rows)} jobs failed", file=sys.stderr)
            raise SystemExit(1)

