"""Running a job so that a failure is one clear line and loses nothing already written.

``run_job`` wraps a task function: any error is printed as ``mtlexp: error: <one line>`` on stderr, the
traceback of an unexpected error goes to ``error.log`` in the run folder, and ``metrics.json`` records
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
from omegaconf import DictConfig

from mtlexp.errors import MtlexpError
from mtlexp.io import read_json, write_json
from mtlexp.report.table import format_table

log = logging.getLogger(__name__)


def run_job(task: Callable[[DictConfig], Any], cfg: DictConfig, output_dir: Path | None) -> bool:
    """Run ``task(cfg)``; return whether it succeeded."""
    try:
        task(cfg)
        return True
    except MtlexpError as error:
        message = str(error)
    except KeyboardInterrupt:
        message = "interrupted"
    except Exception as error:  # noqa: BLE001 - the one place unexpected errors become one line
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "error.log").write_text(traceback.format_exc())
            message += f" (traceback in {output_dir / 'error.log'})"
    print(f"mtlexp: error: {message}", file=sys.stderr, flush=True)
    if output_dir is not None:
        try:
            metrics = read_json(output_dir / "metrics.json")
            write_json(output_dir / "metrics.json", {**metrics, "status": "failed", "error": message})
        except OSError:
            pass
    return False


class SweepSummary(Callback):
    """At the end of a multirun: one row per job (its overrides, status, headline metric), and a non-zero
    exit status when any job failed. Reads only the job folders, so it works with every launcher."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        overrides = {job.name: _overrides(job) for job in jobs}
        # Show only what varies across jobs: the swept keys.
        common = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
        rows, failed = [], 0
        for job in jobs:
            metrics = read_json(job / "metrics.json")
            status = metrics.get("status", "missing")
            failed += status != "ok"
            swept = " ".join(o for o in overrides[job.name] if o not in common)
            rows.append([job.name, swept, status, metrics.get("test_norm_loss"), metrics.get("error", "")])
        if rows:
            print(format_table(["job", "overrides", "status", "test/norm_loss", "error"], rows))
        print(f"sweep dir: {sweep_dir}")
        if failed:
            print(f"mtlexp: error: {failed} of {len(rows)} jobs failed", file=sys.stderr)
            raise SystemExit(1)


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]
