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

Besides the wall times, each study prints the ratio of the runs' own ``duration_s`` (metrics.json: the run
without starting the process, importing torch and Lightning and composing the config), and ``--routes`` times
one optimizer step of MMoE three ways in this process: K single models one after another, and ``stack=K``'s
two routes (``stack_route``): ``vmap``, and ``native``, whose blocks carry the replica dimension themselves;
with the census files, also at the census study's shapes (3 seeds, batch 1024, its 30 embedded columns).

The last line printed is ``stacked_speedup_b128=<x> stacked_speedup_b1024=<y>[ stacked_speedup_census=<z>]``:
sequential wall time over stacked wall time (median over ``--rounds``).

``--studies`` times the studies the project ships instead (issue #24's table), with the flags
``scripts/reproduce_paper.sh`` gives every run (no progress bar, CSV logging): ``experiment=paper_synthetic
model=mmoe`` with 10 seeds, a seed sweep against ``stack=10``; ``experiment=paper_census_group1 model=mmoe``
with 3 seeds, against ``stack=3``; and the paper's census table as stacked runs (4 models x 2 task groups,
``stack=3``: 8 stacked runs in 2 commands), timed in total. It ends with
``study_speedup_synthetic=<x> study_speedup_census=<y> census_table_s=<z>`` (``skipped`` without the census
files, and always with ``--quick``, which shrinks the synthetic study to a smoke test).

``--overhead`` runs one stacked run (``experiment=paper_synthetic model=mmoe stack=10``, the user's defaults:
CSV and TensorBoard logs, checkpoints, progress bar) in this process and splits its wall time into what is not
training or evaluation, each measured around the functions that do it (self time: a timed call inside another
counts once), and the rest: the steps' and evaluations' arithmetic, data loading and Lightning's loop. It ends
with ``stacked_overhead_share=<x>`` (outputs and building over the run's wall time; imports are printed apart).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The micro studies: a fixed number of epochs whatever the config, CSV logging only.
MICRO = ["logger=csv", "callbacks=no_early_stopping", "trainer.enable_progress_bar=false"]
# The shipped studies: what scripts/reproduce_paper.sh adds to every run (the experiments fix the epochs).
SHIPPED = ["trainer.enable_progress_bar=false", "logger=csv"]
# The fourth model of the paper's census table (scripts/reproduce_paper.sh): a tower per task on its own.
CENSUS_TABLE_MODELS = "single_task,shared_bottom,omoe,mmoe"


def run(overrides: list[str], workdir: Path, common: list[str] = MICRO) -> float:
    """Wall seconds of one ``mtlexp train`` command (it must succeed)."""
    command = [sys.executable, "-m", "mtlexp", "train", *overrides, *common]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"bench_stacked: {' '.join(overrides)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def run_seconds(folder: Path) -> float:
    """``duration_s`` of the run in ``folder``, or summed over the jobs of the sweep in ``folder``."""
    records = [folder / "metrics.json"] if (folder / "metrics.json").is_file() else folder.glob("*/metrics.json")
    return sum(json.loads(path.read_text())["duration_s"] for path in records)


def study(name: str, overrides: list[str], seeds: int, rounds: int, workdir: Path, common: list[str] = MICRO) -> float:
    """Median over rounds of sequential / stacked wall time for ``seeds`` seeds of one config."""
    ratios = []
    for r in range(rounds):
        seq_dir, stack_dir = workdir / f"{name}-seq-{r}", workdir / f"{name}-stack-{r}"
        sequential = ["-m", f"seed={','.join(map(str, range(seeds)))}", *overrides, f"hydra.sweep.dir={seq_dir}"]
        stacked = [f"stack={seeds}", *overrides, f"hydra.run.dir={stack_dir}"]
        if r % 2 == 0:
            seq_s, stack_s = run(sequential, workdir, common), run(stacked, workdir, common)
        else:
            stack_s, seq_s = run(stacked, workdir, common), run(sequential, workdir, common)
        ratios.append(seq_s / stack_s)
        seq_runs, stack_runs = run_seconds(seq_dir), run_seconds(stack_dir)
        print(f"{name}: round {r}: {seeds} seeds sequential {seq_s:.1f} s, stacked {stack_s:.1f} s, "
              f"speedup {seq_s / stack_s:.2f}x; without process start and imports {seq_runs:.1f} s vs "
              f"{stack_runs:.1f} s, {seq_runs / stack_runs:.2f}x", flush=True)
    return statistics.median(ratios)


def census_table(census: Path, workdir: Path) -> float:
    """Wall seconds of the paper's census table as stacked runs: per task group, one multirun over the models,
    each job ``stack=3`` (seeds 1-3)."""
    total = 0.0
    for group in (1, 2):
        seconds = run(["-m", f"experiment=paper_census_group{group}", f"data.path={census}",
                       f"model={CENSUS_TABLE_MODELS}", "seed=1", "stack=3",
                       f"hydra.sweep.dir={workdir / f'census-table-group{group}'}"], workdir, SHIPPED)
        print(f"census table, group {group}: {len(CENSUS_TABLE_MODELS.split(','))} models x 3 seeds as stacked runs "
              f"{seconds:.1f} s", flush=True)
        total += seconds
    return total


def studies(args: argparse.Namespace, workdir: Path) -> str:
    """The shipped studies, timed as whole commands; returns the closing line."""
    quick = ["data.num_train=1024", "data.num_val=256", "data.num_test=256", "trainer.max_epochs=1"]
    synthetic = ["experiment=paper_synthetic", "model=mmoe", *(quick if args.quick else [])]
    speedup = study("study-synthetic", synthetic, 2 if args.quick else 10, args.rounds, workdir, SHIPPED)
    census, table = "skipped", "skipped"
    if args.quick or not (args.census / "census-income.data.gz").is_file():
        print(f"census studies: skipped ({'--quick' if args.quick else f'no census-income.data.gz in {args.census}'})")
    else:
        group1 = ["experiment=paper_census_group1", f"data.path={args.census}", "model=mmoe"]
        census = f"{study('study-census', group1, 3, args.rounds, workdir, SHIPPED):.2f}"
        table = f"{census_table(args.census, workdir):.1f}"
    return f"study_speedup_synthetic={speedup:.2f} study_speedup_census={census} census_table_s={table}"


# What a stacked run does besides training and evaluation, by where it happens (module, attribute): timed around.
OVERHEAD = {
    "building the replicas (data, models)": [("mtlexp.stacking.train", "build_components"),
                                             ("mtlexp.data.base.MTLDataModule", "fingerprint"),
                                             ("mtlexp.data.synthetic.SyntheticDataModule", "describe")],
    "run folders, provenance, hyperparameters": [
        ("mtlexp.stacking.train", name) for name in ("start_run_folder", "write_hydra_folder", "environment",
                                                     "provenance", "write_json", "log_hyperparams")],
    "per-replica metric updates": [("mtlexp.module.MTLModule", "update_metrics"),
                                   ("mtlexp.stacking.module.StackedModule", "_update_train_metrics")],
    "per-replica metric compute": [("mtlexp.module.MTLModule", "split_results")],
    "per-replica logger writes": [("mtlexp.stacking.module.StackedModule", "_emit"),
                                  ("mtlexp.stacking.train._SaveLoggers", "on_train_epoch_start")],
    # _select: ModelCheckpoint's and EarlyStopping's rule, and the best checkpoint it writes.
    "checkpoints (best per replica, last)": [("mtlexp.stacking.module.StackedModule", "_select"),
                                            ("pytorch_lightning.Trainer", "save_checkpoint"),
                                            ("mtlexp.stacking.train", "_best_state")],
    "records, gate figures, logger close": [
        ("mtlexp.stacking.train", "record_run"), ("mtlexp.record", "plot_gates"),
        ("mtlexp.stacking.train", "plot_gates"),
        ("mtlexp.stacking.train", "_log_summary"), ("pytorch_lightning.loggers.CSVLogger", "finalize"),
        ("pytorch_lightning.loggers.TensorBoardLogger", "finalize")],
}


def overhead(quick: bool, extra: list[str]) -> float:
    """Seconds of one stacked run in this process by what they went to; returns the share that is not training or
    evaluation."""
    import importlib

    started = time.perf_counter()
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    from mtlexp.config import register_configs
    from mtlexp.train import train

    imports = time.perf_counter() - started
    spent = dict.fromkeys(OVERHEAD, 0.0)
    stack: list[float] = []  # per open timed call: the time of the timed calls inside it

    def timed(category: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            stack.append(0.0)
            begin = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - begin
                spent[category] += elapsed - stack.pop()
                if stack:
                    stack[-1] += elapsed
        return wrapper

    for category, places in OVERHEAD.items():
        for where, name in places:
            try:
                target = importlib.import_module(where)
            except ModuleNotFoundError:  # a class: import its module and take the class
                module_name, class_name = where.rsplit(".", 1)
                target = getattr(importlib.import_module(module_name), class_name, None)
            if hasattr(target, name):  # the code before a change may lack it
                setattr(target, name, timed(category, getattr(target, name)))
    sizes = ["data.num_train=2048", "data.num_val=512", "data.num_test=512", "trainer.max_epochs=2"] if quick else []
    sizes += extra
    print(f"overhead: overrides {' '.join(sizes) or '(none)'}", flush=True)
    register_configs()
    with tempfile.TemporaryDirectory(prefix="bench-stacked-") as tmp:
        with initialize_config_module("mtlexp.conf", version_base="1.3"):
            cfg = compose("config", overrides=["experiment=paper_synthetic", "model=mmoe", "stack=10", *sizes])
        with open_dict(cfg):
            cfg.paths.output_dir = tmp
        started = time.perf_counter()
        train(cfg)
        total = time.perf_counter() - started
    outside = sum(spent.values())
    print(f"overhead: one stacked run, experiment=paper_synthetic model=mmoe stack=10: {total:.1f} s "
          f"(imports before it {imports:.1f} s)")
    for category, seconds in spent.items():
        print(f"  {category:<42} {seconds:7.2f} s {100 * seconds / total:5.1f}%")
    rest = total - outside
    print(f"  {'training and evaluation (the rest)':<42} {rest:7.2f} s {100 * rest / total:5.1f}%", flush=True)
    return outside / total


def census_shapes(census: Path) -> tuple[Any, list[Any]]:
    """The features and tasks of ``experiment=paper_census_group1`` (its data module, set up from the files)."""
    from hydra import compose, initialize_config_module

    from mtlexp.components import build_data
    from mtlexp.config import register_configs

    register_configs()
    with initialize_config_module("mtlexp.conf", version_base="1.3"):
        cfg = compose("config", overrides=["experiment=paper_census_group1", f"data.path={census}"])
    data = build_data(cfg)
    return data.features, list(data.tasks)


def routes(seeds: int, batch: int, steps: int = 200, shapes: tuple[Any, list[Any]] | None = None) -> None:
    """Milliseconds per optimizer step (forward, backward, Adam) of MMoE with the synthetic task's sizes (or
    ``shapes``: census's features and tasks, random inputs of their cardinalities): one model at a time for every
    seed, and ``stack``'s vmap and native routes."""
    import torch

    from mtlexp.specs import FeatureSpec
    from mtlexp.models import MMoE
    from mtlexp.stacking.model import StackedModel
    from mtlexp.tasks import TaskSpec

    if shapes is None:
        features = FeatureSpec(numeric=tuple(f"x{i}" for i in range(100)))
        tasks = [TaskSpec("task1", "regression"), TaskSpec("task2", "regression")]
    else:
        features, tasks = shapes
    models = [MMoE(features, tasks) for _ in range(seeds)]
    x, y = torch.randn(seeds, batch, features.num_numeric), torch.randn(seeds, len(tasks), batch)
    categorical = torch.stack([torch.randint(0, c.cardinality, (seeds, batch)) for c in features.categorical], -1) \
        if features.categorical else torch.zeros(seeds, batch, 0, dtype=torch.long)

    def mse(logits: dict, k: Any = slice(None)) -> Any:
        return sum(((logits[t.name].squeeze(-1) - y[k, i]) ** 2).mean(-1) for i, t in enumerate(tasks))

    singles = [torch.optim.Adam(m.parameters()) for m in models]

    def one_at_a_time() -> None:
        for k, (model, opt) in enumerate(zip(models, singles)):
            opt.zero_grad(set_to_none=True)
            mse(model(x[k], categorical[k]).logits, k).backward()
            opt.step()

    stacked = {route: StackedModel(models) for route in ("vmap", "native")}
    forwards = {"vmap": stacked["vmap"].vectorised(lambda call, n, c: call(n, c).logits),
                "native": lambda n, c: stacked["native"].native(n, c).logits}
    optimizers = {route: torch.optim.Adam(model.parameters()) for route, model in stacked.items()}

    def stacked_step(route: str) -> None:
        optimizers[route].zero_grad(set_to_none=True)
        mse(forwards[route](x, categorical)).sum().backward()
        optimizers[route].step()

    timings = {}
    for label, step in [("one model at a time", one_at_a_time), ("vmap route", lambda: stacked_step("vmap")),
                        ("native route", lambda: stacked_step("native"))]:
        for _ in range(10):
            step()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        timings[label] = (time.perf_counter() - started) / steps * 1e3
    base = timings["one model at a time"]
    print(f"routes, MMoE{'' if shapes is None else ' on census shapes'}, {seeds} seeds, batch {batch}, ms per "
          "optimizer step of every seed: " + ", ".join(
        f"{label} {ms:.2f} ({base / ms:.2f}x)" for label, ms in timings.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--census", type=Path, default=ROOT.parent / "shared" / "data" / "census-income")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    parser.add_argument("--routes", action="store_true", help="also time one step of the vectorisation routes")
    parser.add_argument("--routes-only", action="store_true", help="time the routes (at --seeds) and stop")
    parser.add_argument("--studies", action="store_true", help="time the shipped studies instead of the micro ones")
    parser.add_argument("--overhead", action="store_true", help="split one stacked run's time instead")
    parser.add_argument("--override", action="append", default=[], help="--overhead: a config override (repeat)")
    args = parser.parse_args()
    print(f"bench_stacked: {os.cpu_count()} cores, python {sys.version.split()[0]}", flush=True)
    if args.overhead:
        print(f"stacked_overhead_share={overhead(args.quick, args.override):.3f}")
        return
    if args.studies:
        with tempfile.TemporaryDirectory(prefix="bench-stacked-") as tmp:
            print(studies(args, Path(tmp)))
        return
    sizes = ["data.num_train=1024", "data.num_val=256", "data.num_test=256"] if args.quick else []
    epochs = 1 if args.quick else args.epochs
    seeds = 2 if args.quick else args.seeds
    figures = {}
    if args.routes or args.routes_only:
        for batch in (128, 1024):
            routes(args.seeds if args.routes_only else seeds, batch, steps=5 if args.quick else 200)
        if (args.census / "census-income.data.gz").is_file() and not args.quick:
            routes(3, 1024, shapes=census_shapes(args.census))  # the census study's step: 3 seeds, batch 1024
        if args.routes_only:
            return
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
