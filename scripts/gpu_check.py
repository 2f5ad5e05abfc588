#!/usr/bin/env python
"""The GPU check's steps and its last line; ``scripts/gpu_check.sh`` sets up Python and runs this.

Steps, in order, each a subprocess with its own time limit inside one budget (``--budget-s``, 8 minutes),
its output in ``<logs>/<step>.log``:

1. ``cuda``: torch sees a CUDA device (without one every other step is skipped: nothing on the CUDA path
   would run);
2. ``gpu_tests``: the tests marked ``gpu`` (pytest ``-m gpu``); none may be skipped;
3. ``bf16_run``: ``mtlexp train trainer=gpu trainer.precision=bf16-mixed`` through the CLI, ending ``ok``
   with finite validation metrics;
4. ``stacked_b128``, ``stacked_b1024``: ``stack=10`` against 10 sequential runs of MMoE on the synthetic
   pair on the GPU (``scripts/bench_stacked.py``'s ``study``: whole commands, the same config and seeds);
5. ``bench_train``: ``scripts/bench_train.py --accelerator gpu`` at batch 1024 (mtlexp against a lean loop).

A failed step makes ``ok=0`` and the later steps still run; a figure whose step failed is ``nan``. The last
line printed is always::

    gpu_check ok=<0|1> stacked_speedup_b128=<x> stacked_speedup_b1024=<y> bench_ratio_b1024=<z>

``--dry-run`` prints every step's command and runs none (``ok=0``: nothing was checked). Only the standard
library is imported at the top, so ``--failed WHY`` prints the last line from any Python when the setup
itself failed.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("stacked_speedup_b128", "stacked_speedup_b1024", "bench_ratio_b1024")
BUDGET_S = 480  # the check's promise: at most 8 minutes on one GPU
STUDY_SEEDS = 10
# Sizes that fit the budget on one GPU: the synthetic pair's 20k training rows, 3 epochs per run.
STUDY_OVERRIDES = ("model=mmoe", "trainer=gpu", "trainer.max_epochs=3")
RUN_SIZES = ("data.num_train=20000", "data.num_val=5000", "data.num_test=5000", "trainer.max_epochs=2")


@dataclass
class Step:
    """One step: a command, the time it may take at most, and how its figures are read from its output."""

    name: str
    command: list[str]
    limit_s: float
    figures: Callable[[str], dict[str, float]] = lambda output: {}
    check: Callable[[str], str | None] = lambda output: None  # a reason to fail a step that exited 0


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float
    why: str = ""
    figures: dict[str, float] = field(default_factory=dict)


def final_line(ok: bool, figures: Mapping[str, float]) -> str:
    """The check's last line: every figure, ``nan`` where its step failed or never ran."""
    values = " ".join(f"{name}={_number(figures.get(name, math.nan))}" for name in FIGURES)
    return f"gpu_check ok={int(ok)} {values}"


def _number(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.2f}"


def key_values(output: str) -> dict[str, float]:
    """The ``key=number`` pairs of the last line of ``output`` that has any (a script's result line)."""
    for line in reversed(output.strip().splitlines()):
        pairs = re.findall(r"([A-Za-z_][\w]*)=([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))", line)
        if pairs:
            return {key: float(value) for key, value in pairs}
    return {}


def bench_train_figures(output: str) -> dict[str, float]:
    """``bench_ratio_b1024`` from bench_train.py's last line ``ratio_b1024=<z>``."""
    ratio = key_values(output).get("ratio_b1024")
    return {} if ratio is None else {"bench_ratio_b1024": ratio}


def study_figures(batch: int) -> Callable[[str], dict[str, float]]:
    def read(output: str) -> dict[str, float]:
        speedup = key_values(output).get("speedup")
        return {} if speedup is None else {f"stacked_speedup_b{batch}": speedup}

    return read


def pytest_check(output: str) -> str | None:
    """A gpu test that skipped on a machine with CUDA did not check what it is for."""
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    if "skipped" in summary:
        return f"tests skipped on a CUDA machine: {summary}"
    if "passed" not in summary:
        return f"no test passed: {summary}"
    return None


def bf16_check(run_dir: Path) -> Callable[[str], str | None]:
    def check(output: str) -> str | None:
        import json

        record_path = run_dir / "metrics.json"
        if not record_path.is_file():
            return f"no {record_path}"
        record = json.loads(record_path.read_text())
        values = [v for metrics in record.get("val", {}).values() for v in metrics.values()]
        if record.get("status") != "ok" or not values or not all(math.isfinite(v) for v in values):
            return f"status {record.get('status')}, val metrics {record.get('val')}"
        return None

    return check


def steps(python: str, logs: Path) -> list[Step]:
    """The check's steps, in order (see the module docstring)."""
    bf16_dir = logs / "bf16_run"
    studies = [Step(f"stacked_b{batch}", [python, str(Path(__file__).resolve()), "study", "--batch", str(batch),
                                          "--workdir", str(logs / f"study_b{batch}")], 90, study_figures(batch))
               for batch in (128, 1024)]
    return [
        Step("cuda", [python, "-c", "import torch; assert torch.cuda.is_available(), f'torch {torch.__version__} "
                                    "sees no CUDA device (a CPU build, or no driver)'; "
                                    "print(torch.__version__, torch.cuda.get_device_name())"], 30),
        Step("gpu_tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "-m", "gpu",
                           str(ROOT / "tests")], 120, check=pytest_check),
        Step("bf16_run", [python, "-m", "mtlexp", "train", "trainer=gpu", "trainer.precision=bf16-mixed",
                          "model=mmoe", *RUN_SIZES, f"hydra.run.dir={bf16_dir}"], 60, check=bf16_check(bf16_dir)),
        *studies,
        Step("bench_train", [python, str(ROOT / "scripts" / "bench_train.py"), "--accelerator", "gpu",
                             "--batch-sizes", "1024", "--samples", "100000", "--epochs", "2", "--rounds", "1",
                             "--no-census", "--no-architectures", "--no-weightings"], 90, bench_train_figures),
    ]


def run_step(step: Step, limit_s: float, log: Path) -> tuple[int | None, str]:
    """(exit status, None when it ran past ``limit_s``; its output, also written to ``log``)."""
    try:
        result = subprocess.run(step.command, cwd=ROOT, capture_output=True, text=True, timeout=limit_s)
        status, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as error:
        status, output = None, _text(error.stdout) + _text(error.stderr)
    log.write_text(output)
    return status, output


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def check(plan: Sequence[Step], logs: Path, budget_s: float = BUDGET_S,
          runner: Callable[[Step, float, Path], tuple[int | None, str]] = run_step) -> list[Outcome]:
    """Every step of ``plan`` within ``budget_s`` in all; a step whose time is gone, or that follows a failed
    ``cuda`` step, fails unrun."""
    logs.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    outcomes: list[Outcome] = []
    for step in plan:
        left = deadline - time.monotonic()
        if left < 1:
            outcomes.append(Outcome(step.name, False, 0.0, f"not run: the {budget_s:.0f} s budget is spent"))
            continue
        if outcomes and outcomes[0].name == "cuda" and not outcomes[0].ok:
            outcomes.append(Outcome(step.name, False, 0.0, "not run: no CUDA device"))
            continue
        started = time.monotonic()
        status, output = runner(step, min(step.limit_s, left), logs / f"{step.name}.log")
        seconds = time.monotonic() - started
        figures = step.figures(output) if status == 0 else {}
        if status is None:
            why = f"ran past its {min(step.limit_s, left):.0f} s"
        elif status != 0:
            tail = output.strip().splitlines()[-1:] or ["no output"]
            why = f"exit status {status}: {tail[0]}"
        else:
            why = step.check(output) or ""
        outcomes.append(Outcome(step.name, status == 0 and not why, seconds, why, figures))
        print(f"gpu_check: {step.name}: {'ok' if outcomes[-1].ok else 'FAILED'} in {seconds:.0f} s"
              f"{' (' + why + ')' if why else ''}; log {logs / (step.name + '.log')}", flush=True)
    return outcomes


def summary(outcomes: Sequence[Outcome]) -> str:
    figures: dict[str, float] = {}
    for outcome in outcomes:
        figures.update(outcome.figures)
    return final_line(bool(outcomes) and all(o.ok for o in outcomes), figures)


def study(batch: int, workdir: Path) -> None:
    """One row of the check: ``stack=10`` against 10 sequential runs on the GPU, by bench_stacked's ``study``."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_stacked

    workdir.mkdir(parents=True, exist_ok=True)
    speedup = bench_stacked.study(f"gpu-b{batch}", [*STUDY_OVERRIDES, f"data.batch_size={batch}"], STUDY_SEEDS, 1,
                                  workdir)
    print(f"speedup={speedup:.3f}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, default=ROOT / "gpu_check", help="folder for each step's log")
    parser.add_argument("--python", default=sys.executable, help="the interpreter the steps run with")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="seconds for every step together")
    parser.add_argument("--dry-run", action="store_true", help="print the steps' commands; run none")
    parser.add_argument("--failed", metavar="WHY", help="the setup failed: print why and the last line (ok=0)")
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("study", help="one stacked-against-sequential row (a step of the check)")
    one.add_argument("--batch", type=int, required=True)
    one.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "study":
        study(args.batch, args.workdir)
        return 0
    if args.failed is not None:
        print(f"gpu_check: {args.failed}", flush=True)
        print(final_line(False, {}))
        return 1
    plan = steps(args.python, args.logs.resolve())
    if args.dry_run:
        for step in plan:
            print(f"gpu_check: {step.name} (at most {step.limit_s:.0f} s): {' '.join(step.command)}")
        print(final_line(False, {}))
        return 0
    outcomes = check(plan, args.logs.resolve(), args.budget_s)
    line = summary(outcomes)
    print(line, flush=True)
    return 0 if line.startswith("gpu_check ok=1") else 1


if __name__ == "__main__":
    sys.exit(main())
