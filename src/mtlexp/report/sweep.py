"""``mtlexp report <dir>...``: mean and spread over seeds of every configuration in one or more sweeps.

Reads run folders only (``metrics.json`` and ``.hydra/overrides.yaml``), never training code, so it works on
old runs and runs from other machines. Runs are grouped by their overrides minus ``seed`` and minus the
overrides every run shares.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from mtlexp.errors import MtlexpError
from mtlexp.io import read_json, write_atomic
from mtlexp.processes import is_gone
from mtlexp.report.table import format_table


def find_runs(roots: list[Path]) -> list[Path]:
    """Training run folders under ``roots`` (``mtlexp eval`` folders, which look alike, are left out)."""
    found = {p.parent for root in roots for p in root.rglob("metrics.json") if (p.parent / ".hydra").is_dir()}
    return sorted(run for run in found if config_name(run) != "eval")


def config_name(run: Path) -> str | None:
    """The primary config a run was composed from (``config`` for mtlexp train, ``eval`` for mtlexp eval)."""
    path = run / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    job = (yaml.safe_load(path.read_text()) or {}).get("hydra", {}).get("job", {})
    return job.get("config_name")


def run_overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]


def swept_only(overrides: list[list[str]]) -> list[list[str]]:
    """Each run's overrides minus those every run shares: what the sweep varied."""
    common = set.intersection(*(set(o) for o in overrides)) if overrides else set()
    return [[o for o in run if o not in common] for run in overrides]


def default_metric(values: dict[str, float]) -> str:
    return "auroc" if "auroc" in values else "mse" if "mse" in values else next(iter(values))


LOWER_IS_BETTER = ("mse", "mae", "rmse", "loss", "norm_loss", "log_loss")


def delta_m(means: dict[str, float], base: dict[str, float], metrics: dict[str, str]) -> float:
    """Delta-m (%): the mean over tasks of the relative change against the baseline, signed so that a gain is
    positive whatever the metric's direction (as LibMTL reports it)."""
    changes = [(means[t] - base[t]) / base[t] * (-1 if metrics[t] in LOWER_IS_BETTER else 1) for t in means]
    return 100.0 * statistics.fmean(changes)


def run_state(metrics: dict[str, Any]) -> str:
    """``ok``, ``failed``, ``interrupted``, ``running``, or ``stale``: recorded as running, but its process is gone
    (killed without a chance to record it; resume it from its ``last.ckpt``)."""
    status = str(metrics.get("status", "failed"))
    if status != "running":
        return status
    return "stale" if is_gone(metrics.get("pid"), metrics.get("host")) else "running"


def summarise(runs: list[Path], split: str = "test", metric: str | None = None,
              baseline: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: one row per configuration, ``mean ± sd (n)`` per task; with ``baseline`` (``key=value``,
    a swept override), Delta-m of every configuration against the one that differs from it only there."""
    swept = swept_only([run_overrides(run) for run in runs])
    loaded = [(run, read_json(run / "metrics.json"), overrides) for run, overrides in zip(runs, swept)]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    others: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # runs not ok, by state
    tasks: list[str] = []
    for _, metrics, overrides in loaded:
        key = " ".join(o for o in overrides if not o.startswith("seed="))
        state = run_state(metrics)
        if state != "ok":
            others[key][state] += 1
            continue
        groups[key].append(metrics)
        tasks += [t for t in metrics.get(split, {}) if t not in tasks]
    header = ["configuration", "runs"]
    names = {}
    for task in tasks:
        sample = next(m[split][task] for ms in groups.values() for m in ms if task in m.get(split, {}))
        names[task] = metric or default_metric(sample)
        if names[task] not in sample:
            raise MtlexpError(f"--metric: task {task!r} has no {names[task]!r}; it has {sorted(sample)}")
        header.append(f"{task} {split} {names[task]}")
    header.append(f"{split} norm_loss")
    if baseline is not None:
        if "=" not in baseline or not any(baseline in key.split() for key in groups):
            raise MtlexpError(f"--baseline: expected a swept override such as weighting=equal, got {baseline!r}")
        header.append(f"Δm vs {baseline} (%)")
    means = {key: {t: statistics.fmean(m[split][t][names[t]] for m in ms) for t in tasks
                   if all(t in m.get(split, {}) for m in ms)} for key, ms in groups.items() if ms}
    rows = []
    for key in sorted(set(groups) | set(others)):
        ms = groups.get(key, [])
        extra = ", ".join(f"+{n} {state}" for state, n in sorted(others[key].items())) if key in others else ""
        row: list[Any] = [key or "(all)", f"{len(ms)}" + (f" ({extra})" if extra else "")]
        for task in tasks:
            row.append(_mean_sd([m[split][task][names[task]] for m in ms if task in m.get(split, {})]))
        row.append(_mean_sd([m[f"{split}_norm_loss"] for m in ms if m.get(f"{split}_norm_loss") is not None]))
        if baseline is not None:
            name = baseline.split("=", 1)[0] + "="
            base_key = " ".join(baseline if o.startswith(name) else o for o in key.split())
            ok = key in means and base_key in means and set(means[key]) == set(means[base_key])
            row.append(f"{delta_m(means[key], means[base_key], names):+.2f}" if ok else "-")
        rows.append(row)
    return header, rows


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mtlexp report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep or run folders")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--metric", default=None, help="metric per task (default: auroc, else mse)")
    parser.add_argument("--baseline", default=None,
                        help="a swept override (e.g. weighting=equal): add Delta-m against it, per configuration")
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        print(f"mtlexp: error: no such folder {str(missing[0])!r}", file=sys.stderr)
        return 1
    runs = find_runs(args.dirs)
    if not runs:
        print(f"mtlexp: error: no run folders (metrics.json + .hydra/) under {', '.join(map(str, args.dirs))}",
              file=sys.stderr)
        return 1
    try:
        header, rows = summarise(runs, args.split, args.metric, args.baseline)
    except MtlexpError as error:
        print(f"mtlexp: error: {error}", file=sys.stderr)
        return 1
    table = format_table(header, rows)
    print(table)
    out = args.dirs[0]
    write_atomic(out / "report.md", ("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
                                     + "".join("| " + " | ".join(map(str, r)) + " |\n" for r in rows)).encode())
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    write_atomic(out / "report.csv", buffer.getvalue().encode())
    print(f"report: {out / 'report.md'}")
    return 0
