"""Time one sweep run one job after another (hydra/launcher=basic) and in parallel processes on this machine
(hydra/launcher=joblib), each as one ``python -m mtlexp train -m ...`` command, start to exit.

    python scripts/bench_sweep.py                       # 4 MMoE jobs (seed=0..3) on the default synthetic data
    python scripts/bench_sweep.py --one-thread          # and the sequential sweep with torch on one thread

Prints each job's training time and torch thread count (from its run folder) and, as its last line,
``parallel_ratio=<joblib wall / sequential wall>``. The joblib jobs each get max(1, cores // jobs at once)
torch threads (docs/scaling.md); the sequential ones torch's default, every core. Other processes on the
machine move the figures: the load average before and after each command is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep(launcher: str, common: list[str], sweep_dir: Path, label: str = "", env: dict[str, str] | None = None) -> float:
    command = [sys.executable, "-m", "mtlexp", "train", "-m", f"hydra/launcher={launcher}", *common,
               f"hydra.sweep.dir={sweep_dir}"]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"bench_sweep: {launcher} sweep failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    jobs = sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    durations = [json.loads((job / "metrics.json").read_text())["duration_s"] for job in jobs]
    threads = sorted({json.loads((job / "provenance.json").read_text()).get("threads", {}).get("torch") for job in jobs},
                     key=str)
    print(f"{label or launcher:16s} wall {wall:6.1f} s  jobs {len(jobs)}  job train+test {min(durations):.1f}-{max(durations):.1f} s  "
          f"torch threads {threads}  load {load:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="jobs in the sweep (seed=0..jobs-1)")
    parser.add_argument("--n-jobs", type=int, default=-1, help="hydra.launcher.n_jobs of the joblib sweep (-1: all cores)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--num-train", type=int, default=20000)
    parser.add_argument("--num-eval", type=int, default=5000, help="validation and test rows each")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--one-thread", action="store_true",
                        help="also time the sequential sweep with torch on one thread (OMP_NUM_THREADS=1)")
    args = parser.parse_args()

    common = [
        "model=mmoe", "callbacks=no_early_stopping", "logger=none", "trainer.enable_progress_bar=false",
        f"trainer.max_epochs={args.epochs}", f"data.num_train={args.num_train}", f"data.num_val={args.num_eval}",
        f"data.num_test={args.num_eval}", f"data.batch_size={args.batch_size}",
        "seed=" + ",".join(str(s) for s in range(args.jobs)),
    ]
    print(f"cores {os.cpu_count()}; sweep: {' '.join(common)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        sequential = sweep("basic", common, Path(tmp) / "basic")
        parallel = sweep("joblib", [*common, f"hydra.launcher.n_jobs={args.n_jobs}"], Path(tmp) / "joblib")
        if args.one_thread:
            # How much of the gain is the parallel jobs, and how much torch's threads on their own.
            one = sweep("basic", common, Path(tmp) / "basic1", "basic, 1 thread", {"OMP_NUM_THREADS": "1"})
            print(f"joblib / (basic, 1 thread) = {parallel / one:.3f}")
    print(f"parallel_ratio={parallel / sequential:.3f}")


if __name__ == "__main__":
    main()
