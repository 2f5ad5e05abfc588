"""The parts of scripts/study_tuned.sh that read files: a study's best parameters as overrides, and summary.md.

    python scripts/tuned_study.py best-params <search folder>     one override per line (key=value)
    python scripts/tuned_study.py summary <study folder> --models ... (see study_tuned.sh)

summary.md holds what a reader of the tuned table needs beside it: the budget, each phase's wall time (from
timings.tsv, written by the script), each model's trials by state (from its Optuna storage: a resumed study
counts every command's trials), its best validation value and configuration, and the parameter count of that
configuration (from the reruns' metrics.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml



def best_trial(search: Path) -> dict[str, Any]:
    """A model's study's best trial: its newest best_trial.yaml (the sweeper writes one over the whole study into
    each command's sweep folder, named by its start time; a command that found the study complete writes none)."""
    found = sorted(search.glob("*/best_trial.yaml"))
    if not found:
        raise SystemExit(f"tuned_study.py: error: no best_trial.yaml under {search}: the search did not finish")
    return yaml.safe_load(found[-1].read_text())


def best_params(search: Path) -> list[str]:
    """The overrides that set a study's best parameters; list values are kept as the override text
    Optuna stored (``[32]``)."""
    return [f"{key}={value}" for key, value in best_trial(search)["best_params"].items()]


def trial_states(storage: str, study_name: str) -> dict[str, int]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage)
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return counts


def num_params(rerun: Path) -> int | None:
    """The model's parameter count, as its runs recorded it (one replica's: they are one configuration)."""
    for record in sorted(rerun.rglob("metrics.json")):
        value = json.loads(record.read_text()).get("num_params")
        if value is not None:
            return int(value)
    return None


def summary(args: argparse.Namespace) -> str:
    # Here, not at the top: best-params runs once per model and needs neither pandas nor mtlexp.
    from mtlexp.artefacts import format_table
    from mtlexp.report.sweep import markdown_table

    root: Path = args.root
    first, count = args.rerun_seeds
    lines = [
        "# Tuned census comparison (scripts/study_tuned.sh)", "",
        f"Census-income task group 1 (experiment=paper_census_group1), data: `{args.data}`"
        + (f"; overrides: `{args.overrides}`" if args.overrides else "") + ".",
        f"Budget per model: {args.trials} trials x {args.seeds} stacked seeds x {args.epochs} epochs, TPE (seed 0), "
        f"median pruning, objective val/norm_loss; the best configuration rerun with seeds {first}-{first + count - 1} "
        f"(stack={count}). Models: {', '.join(args.models)}.",
        f"Tuned table: [report/report.md](report/report.md) (`mtlexp report {root / 'rerun'} --group-by model "
        "--baseline model=shared_bottom`).", "",
    ]
    rows, pruned, counted = [], 0, 0
    for model in args.models:
        search = root / "search" / model
        states = trial_states(f"sqlite:///{search / 'optuna.db'}", f"tuned_{model}")
        best = best_trial(search)
        pruned += states.get("pruned", 0)
        counted += states.get("complete", 0) + states.get("pruned", 0)
        params = num_params(root / "rerun" / model)
        rows.append([model, states.get("complete", 0), states.get("pruned", 0), states.get("fail", 0),
                     f"{best['best_value']:.5f}", " ".join(f"{k}={_short(v)}" for k, v in best["best_params"].items()),
                     "-" if params is None else f"{params:,}"])
    share = f"{pruned} of {counted} trials pruned ({100 * pruned / counted:.0f}%)" if counted else "no trials"
    header = ["model", "complete", "pruned", "failed", "best val/norm_loss", "best configuration", "parameters"]
    lines += ["## Searches", "", share + ".", "", markdown_table(header, rows)]
    times = [(phase, int(seconds)) for phase, seconds in
             (line.split("\t") for line in (root / "timings.tsv").read_text().splitlines() if line)]
    totals = {kind: sum(s for phase, s in times if phase.split()[0] == kind) for kind in ("search", "rerun")}
    total = sum(s for _, s in times)
    rows_time = [*([phase, seconds, _minutes(seconds)] for phase, seconds in times),
                 *([f"{kind} (all models)", s, _minutes(s)] for kind, s in totals.items()),
                 ["total", total, _minutes(total)]]
    lines += ["", "## Wall time", "", markdown_table(["phase", "seconds", "minutes"], rows_time)]
    print(format_table(header, rows))
    print(share)
    print(format_table(["phase", "seconds", "minutes"], rows_time))
    return "\n".join(lines) + "\n"


def _short(value: Any) -> Any:
    """A parameter as a table shows it: a float to 4 significant digits (the reruns used all of them)."""
    return f"{value:.4g}" if isinstance(value, float) else value


def _minutes(seconds: int) -> str:
    return f"{seconds / 60:.1f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    best = commands.add_parser("best-params")
    best.add_argument("search", type=Path, help="a model's search folder (<study folder>/search/<model>)")
    summarize = commands.add_parser("summary")
    summarize.add_argument("root", type=Path)
    summarize.add_argument("--models", nargs="+", required=True)
    for name in ("--trials", "--seeds", "--epochs"):
        summarize.add_argument(name, type=int, required=True)
    summarize.add_argument("--rerun-seeds", type=int, nargs=2, required=True, metavar=("FIRST", "COUNT"))
    summarize.add_argument("--data", required=True)
    summarize.add_argument("--overrides", default="", help="the overrides the study's runs were given, as one line")
    args = parser.parse_args(argv)
    if args.command == "best-params":
        print("\n".join(best_params(args.search)))
        return 0
    path = args.root / "summary.md"
    path.write_text(summary(args))
    print(f"summary: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
