#!/usr/bin/env python
"""A seed study as one stacked run (``stack=K``) against the same seeds run one after another, in one run.

Both sides are whole ``mtlexp train`` commands, timed from start to exit, so what is compared is what a user
waits for: the sequential side is one multirun over the seeds with the basic launcher (one process, imports
paid once: the cheapest sequential way), the stacked side one run with ``stack=K``. Same config, same seeds,
early stopping off and a fixed number of epochs, so both train the same number of steps; CSV logging only.

Studies: the MMoE paper's synthetic pair with MMoE at batch 128 and 1024 (``--seeds`` seeds, default 10),
and, when the census-income files are there (``--census DIR`` or ``../shared/data/census-income``), MMoE
on census with 3 seeds. The sides alternate (sequential first in even rounds) so both see the same machine.

Usage::

    .venv/bin/python scripts/bench_stacked.py              # the figures in the README
    .venv/bin/python scripts/bench_stacked.py --quick      # a smoke test (tiny sizes), not a measurement

The last line printed is ``stacked_speedup_b128=<x> stacked_speedup_b1024=<y>[ stacked_speedup_census=<z>]``:
sequential wall time over stacked wall time (median over ``--rounds``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(overrides: list[str], workdir: Path) -> float:
    """Wall seconds of one ``mtlexp train`` command (it must succeed)."""
    command = [sys.executable, "-m", "mtlexp", "train", *overrides, "logger=csv", "callbacks=no_early_stopping",
               "trainer.enable_progress_bar=false"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"bench_stacked: {' '.join(overrides)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def study(name: str, overrides: list[str], seeds: int, rounds: int, workdir: Path) -> float:
    """Median over rounds of sequential / stacked wall time for ``seeds`` seeds of one config."""
    ratios = []
    for r in range(rounds):
        sequential = ["-m", f"seed={','.join(map(str, range(seeds)))}", *overrides,
                      f"hydra.sweep.dir={workdir / f'{name}-seq-{r}'}"]
        stacked = [f"stack={seeds}", *overrides, f"hydra.run.dir={workdir / f'{name}-stack-{r}'}"]
        if r % 2 == 0:
            seq_s, stack_s = run(sequential, workdir), run(stacked, workdir)
        else:
            stack_s, seq_s = run(stacked, workdir), run(sequential, workdir)
        ratios.append(seq_s / stack_s)
        print(f"{name}: round {r}: {seeds} seeds sequential {seq_s:.1f} s, stacked {stack_s:.1f} s, "
              f"speedup {seq_s / stack_s:.2f}x", flush=True)
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--census", type=Path, default=ROOT.parent / "shared" / "data" / "census-income")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    args = parser.parse_args()
    print(f"bench_stacked: {os.cpu_count()} cores, python {sys.version.split()[0]}", flush=True)
    sizes = ["data.num_train=1024", "data.num_val=256", "data.num_test=256"] if args.quick else []
    epochs = 1 if args.quick else args.epochs
    seeds = 2 if args.quick else args.seeds
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-stacked-") as tmp:
        workdir = Path(tmp)
        for batch in (128, 1024):
            overrides = ["model=mmoe", f"data.batch_size={batch}", f"trainer.max_epochs={epochs}", *sizes]
            figures[f"b{batch}"] = study(f"synthetic-b{batch}", overrides, seeds, args.rounds, workdir)
        if (args.census / "census-income.data.gz").is_file() and not args.quick:
            overrides = ["data=census_income", f"data.path={args.census}", "model=mmoe", f"trainer.max_epochs={epochs}"]
            figures["census"] = study("census", overrides, 3, args.rounds, workdir)
        else:
            print(f"census: skipped (no census-income.data.gz in {args.census})")
    print(" ".join(f"stacked_speedup_{name}={ratio:.2f}" for name, ratio in figures.items()))


if __name__ == "__main__":
    main()
