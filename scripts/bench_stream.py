#!/usr/bin/env python
"""Streaming Parquet against the in-memory path: training samples/s and peak memory, in the same run.

A generated click/purchase table (``--rows`` rows, 8 numeric and 4 categorical features of 10 to 10,000
values, two binary tasks drawn from a logistic model of the features) is written once as Parquet in row groups
of ``--row-group`` rows. Each path then trains MMoE on it through mtlexp's own components
(``build_components``/``build_trainer``, ``data=tabular``, ``data.streaming`` false or true) in a process of
its own, so its peak resident memory (``ru_maxrss``) is its own:

* setup: parsing the whole file (in memory) or the one fitting pass (streaming), with a cold cache;
* samples/s: training only (validation and checkpoints off), over ``--steps`` optimizer steps after a
  warm-up of 10 ``training_step`` calls, stamped by a callback at every ``training_step`` end.

The streaming path reads the training row groups again in every epoch, so its samples/s include the reading
(a background thread overlaps it with training). The last line printed is
``stream_ratio=<samples/s streaming over in memory> stream_peak_rss_mb=<x> memory_peak_rss_mb=<y>``.

Usage::

    .venv/bin/python scripts/bench_stream.py                 # 20M rows (about 5 minutes, ~1 GB of disk)
    .venv/bin/python scripts/bench_stream.py --quick         # a smoke test (seconds), not a measurement
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CARDINALITIES = (10, 100, 1000, 10_000)
NUMERIC = 8


def generate(path: Path, rows: int, row_group: int, seed: int = 0) -> None:
    """Write the table in slices of one row group, so that generating it never needs it in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=NUMERIC)
    effects = [rng.normal(size=c) for c in CARDINALITIES]
    writer = None
    try:
        for start in range(0, rows, row_group):
            n = min(row_group, rows - start)
            x = rng.normal(size=(n, NUMERIC)).astype(np.float32)
            cats = [rng.integers(0, c, n, dtype=np.int32) for c in CARDINALITIES]
            score = x @ weights / np.sqrt(NUMERIC) + sum(e[c] for e, c in zip(effects, cats)) / 2
            click = rng.random(n) < 1 / (1 + np.exp(-score))
            buy = rng.random(n) < 1 / (1 + np.exp(-(score - 1.5 + x[:, 0])))
            columns = {f"n{i}": x[:, i] for i in range(NUMERIC)}
            columns.update({f"c{i}": c for i, c in enumerate(cats)})
            columns.update(click=click.astype(np.int8), buy=buy.astype(np.int8))
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=row_group)
    finally:
        if writer is not None:
            writer.close()


def schema() -> dict[str, Any]:
    return {
        "numeric": [f"n{i}" for i in range(NUMERIC)],
        "categorical": {f"c{i}": {"embedding_dim": 8} for i in range(len(CARDINALITIES))},
        "tasks": {"click": {"kind": "binary"}, "buy": {"kind": "binary"}},
    }


def child(args: argparse.Namespace) -> None:
    """Train one path and print its figures as one JSON line."""
    import pytorch_lightning as pl
    import torch
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    from mtlexp.config import register_configs
    from mtlexp.noise import silence
    from mtlexp.components import build_components, build_trainer

    silence()
    register_configs()
    overrides = [
        "data=tabular", f"data.path={args.data}", f"data.schema={args.data.with_suffix('.yaml')}",
        f"data.streaming={args.child == 'stream'}", f"data.cache_dir={args.workdir / ('cache-' + args.child)}",
        f"data.batch_size={args.batch_size}", "model=mmoe", "logger=none", "trainer.max_epochs=1",
        f"+trainer.limit_train_batches={10 + args.steps // args.chunk_steps}", "+trainer.limit_val_batches=0",
        "+trainer.enable_checkpointing=false", "trainer.enable_progress_bar=false", f"data.chunk_steps={args.chunk_steps}",
    ]
    with initialize_config_module("mtlexp.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(args.workdir / f"run-{args.child}")
    pl.seed_everything(0, verbose=False)
    started = time.perf_counter()
    data, module = build_components(cfg)
    setup_s = time.perf_counter() - started

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.stamps: list[tuple[float, int]] = []
            self.rows = 0

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            self.rows += sum(len(b["numeric"]) for b in batch)
            self.stamps.append((time.perf_counter(), self.rows))

    timer = StepTimer()
    trainer = build_trainer(cfg, [timer])
    trainer.fit(module, datamodule=data)
    (t0, r0), (t1, r1) = timer.stamps[9], timer.stamps[-1]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"path": args.child, "setup_s": setup_s, "samples_per_s": (r1 - r0) / (t1 - t0),
                      "steps": (len(timer.stamps) - 10) * args.chunk_steps, "peak_rss_mb": peak,
                      "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--row-group", type=int, default=1 << 18)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--chunk-steps", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4000, help="timed optimizer steps per path")
    parser.add_argument("--workdir", type=Path, default=None, help="where the table goes (default: a temp folder)")
    parser.add_argument("--quick", action="store_true", help="a tiny run that checks the script works")
    parser.add_argument("--child", choices=["memory", "stream"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.rows, args.row_group, args.steps, args.batch_size = 20_000, 2048, 40, 64
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mtlexp-bench-stream-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / f"table-{args.rows}.parquet"
    try:
        if not data.is_file():
            started = time.perf_counter()
            generate(data, args.rows, args.row_group)
            print(f"generated {args.rows:,} rows ({data.stat().st_size / 2**20:.0f} MiB) in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        import yaml

        data.with_suffix(".yaml").write_text(yaml.safe_dump(schema()))
        results = {}
        for path in ("memory", "stream"):
            shutil.rmtree(workdir / f"cache-{path}", ignore_errors=True)
            command = [sys.executable, __file__, "--child", path, "--data", str(data), "--workdir", str(workdir),
                       "--batch-size", str(args.batch_size), "--chunk-steps", str(args.chunk_steps),
                       "--steps", str(args.steps)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"bench_stream: the {path} run failed:\n{done.stderr[-3000:]}")
            results[path] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[path]
            print(f"{path:>7}: setup {r['setup_s']:7.1f} s   {r['samples_per_s']:10,.0f} samples/s over "
                  f"{r['steps']} steps   peak RSS {r['peak_rss_mb']:8,.0f} MiB", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    ratio = results["stream"]["samples_per_s"] / results["memory"]["samples_per_s"]
    print(f"stream_ratio={ratio:.3f} stream_peak_rss_mb={results['stream']['peak_rss_mb']:.0f} "
          f"memory_peak_rss_mb={results['memory']['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
