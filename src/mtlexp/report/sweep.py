"""``mtlexp report <dir>...``: every configuration of one or more sweeps, summarised over seeds.

Built on the run records (``records.py``: each run's config and metrics.json, as tables) and on statistics
over seeds (``stats.py``), never on training code, so it reads old runs and runs from other machines. A group
is the runs that differ only in their seed; per group and task it reports the mean, sd and 95% confidence
interval of the headline metric and, against a baseline, the relative change and a paired test over seeds.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mtlexp.artefacts import format_table
from mtlexp.errors import MtlexpError
from mtlexp.io import write_atomic
from mtlexp.report.records import (
    ALL_TASKS,
    RECORD_SCHEMA,
    UNKNOWN_GROUP,
    Study,
    config_name,
    find_runs,
    format_value,
    load_runs,
    recorded_direction,
    run_overrides,
    run_state,
    swept_only,
)
from mtlexp.report.search import Search, front_table, read_search
from mtlexp.report.stats import (
    PairedTest,
    Summary,
    delta_m,
    headline_metric,
    paired_delta_m_test,
    paired_test,
    relative_change,
    summarize,
)
from mtlexp.run_record import STATUS, Status
from mtlexp.specs import MAX

# With the run-folder readers from records.py, which runner.py and older callers import from here.
__all__ = ["Report", "build_report", "config_name", "delta_m", "find_runs", "main", "markdown_table",
           "run_overrides", "run_state", "swept_only", "write_report"]

DELTA_M = "delta_m"  # the metric name of the Delta-m rows in report.csv (task "*")


@dataclass(frozen=True)
class Report:
    """A study summarised for one split: ``summary`` is tidy (one row per group x task, report.csv), ``header``
    and ``rows`` the same for people (one row per group: printed, and report.md's table)."""

    split: str
    metrics: dict[str, str]  # the headline metric of each task
    baseline: str | None
    alpha: float
    summary: pd.DataFrame
    header: list[str]
    rows: list[list[Any]]


def build_report(study: Study, split: str = "test", metric: str | None = None, baseline: str | None = None,
                 alpha: float = 0.05) -> Report:
    """Summarise ``study``; with ``baseline`` (``key=value``, a swept key), compare every group with the group
    that differs from it only in that key. Raises MtlexpError for a metric or baseline that does not fit."""
    values = study.values[study.values["split"] == split]
    tasks = [t for t in pd.unique(values["task"]) if t != ALL_TASKS]
    metrics = _headline_metrics(values, tasks, metric)
    judged = [*metrics.items(), (ALL_TASKS, "norm_loss")]
    directions = {task: recorded_direction(values, task, name) for task, name in judged}
    unknown = [f"{task} {name}" for task, name in judged if directions[task] is None]
    if baseline is not None and unknown:
        raise MtlexpError(f"--baseline: which way {', '.join(unknown)} improves is not recorded in metrics.json "
                          "nor known by name; compare on another --metric")
    settings = _group_settings(study)
    groups = sorted(settings, key=lambda g: (g == UNKNOWN_GROUP, [_order(settings[g][k]) for k in study.swept]))
    bases = _baseline_groups(settings, study.swept, baseline) if baseline is not None else {}
    measured = _Measured(values)
    records, rows = [], []
    for group in groups:
        runs = study.runs[study.runs["group"] == group]
        identity = {"schema": RECORD_SCHEMA, "split": split, "group": group, **settings[group]}
        row: list[Any] = [group, _runs_cell(runs)]
        gains = []
        for task, name in judged:
            s = measured.summary(group, task, name)
            record = {**identity, "task": task, "metric": name, "direction": directions[task], "n": s.n,
                      "mean": s.mean, "sd": s.sd, "ci_low": s.ci_low, "ci_high": s.ci_high}
            row.append(_estimate(s))
            if baseline is not None:
                change, test = _against(measured, group, bases.get(group), task, name, directions[task])
                record.update(_comparison(change, test, alpha))
                if task != ALL_TASKS:  # the normalised loss's change is in report.csv only
                    gains.append(_gain_cell(change, test, alpha))
            records.append(record)
        if baseline is not None:
            change, test = _delta_m_against(measured, group, bases.get(group), metrics, directions)
            records.append({**identity, "task": ALL_TASKS, "metric": DELTA_M, "direction": MAX,
                            "n": int((runs[STATUS] == Status.OK).sum()), **_comparison(change, test, alpha)})
            row += [*gains, _gain_cell(change, test, alpha)]
        rows.append(row)
    header = ["group", "runs", *(f"{t} {split} {m}" for t, m in metrics.items()), f"{split} norm_loss"]
    if baseline is not None:
        header += [*(f"{t} Δ% (p)" for t in metrics), f"Δm vs {baseline} (%)"]
    summary = pd.DataFrame(records, columns=_summary_columns(study.swept, baseline is not None))
    if baseline is not None:  # integers and booleans with gaps, not floats and objects
        summary = summary.astype({"n_pairs": "Int64", "significant": "boolean"})
    return Report(split, metrics, baseline, alpha, summary, header, rows)


def write_report(study: Study, report: Report, out_dir: Path, figures: bool = True,
                 searches: Sequence[Search] = ()) -> list[Path]:
    """Write ``report.md``, ``report.csv`` and (``figures``) the study's figures into ``out_dir``; return the
    paths written. The figures are drawn first, so that report.md links the ones that were. ``searches``:
    multi-objective search folders among those read, whose Pareto fronts report.md lists and the figures draw."""
    out_dir = Path(out_dir)
    paths = [out_dir / "report.md", out_dir / "report.csv"]
    drawn: list[Path] | None = None
    if figures:
        from mtlexp.report.figures import search_figures, study_figures  # matplotlib only when figures are drawn

        drawn = study_figures(study.runs, study.values, study.swept, out_dir / "figures", report.split)
        drawn += search_figures(searches, out_dir / "figures")
    write_atomic(paths[0], _markdown(study, report, _figure_links(drawn, out_dir), searches).encode())
    write_atomic(paths[1], report.summary.to_csv(index=False).encode())
    return paths + (drawn or [])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mtlexp report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep or run folders (searched recursively)")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--metric", default=None, help="metric per task (default: auroc, else mse)")
    parser.add_argument("--baseline", default=None,
                        help="a swept key=value (e.g. weighting=equal): compare every group with the one that "
                             "differs from it only there (relative change, paired test over seeds, Delta-m)")
    parser.add_argument("--group-by", default=None, metavar="KEY[,KEY...]",
                        help="group runs by these keys only (e.g. model, for a tuned study whose arms differ in lr "
                             "and widths too); report.md lists each group's other settings")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the paired tests")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.md/.csv (default: the first DIR)")
    parser.add_argument("--no-figures", action="store_true", help="tables only (figures/ takes a few seconds)")
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        return _fail(f"no such folder {str(missing[0])!r}")
    if not 0 < args.alpha < 1:
        return _fail(f"--alpha: expected a level in (0, 1), got {args.alpha}")
    runs = find_runs(args.dirs)
    if not runs:
        return _fail(f"no run folders (metrics.json + .hydra/) under {', '.join(map(str, args.dirs))}")
    try:
        study = load_runs(runs, _keys(args.group_by) if args.group_by is not None else ())
        searches = [search for search in map(read_search, args.dirs) if search is not None]
        report = build_report(study, args.split, args.metric, args.baseline, args.alpha)
        paths = write_report(study, report, args.out or args.dirs[0], figures=not args.no_figures, searches=searches)
    except MtlexpError as error:
        return _fail(str(error))
    print(format_table(report.header, report.rows))
    for search in searches:
        print(f"Pareto front of the search in {search.folder} ({len(search.front)} of {len(search.trials)} "
              "completed trials):")
        print(format_table(*front_table(search)))
    pooled = _pooled(study)
    if pooled:
        keys = ", ".join(dict.fromkeys(key for group in pooled.values() for key in group))
        print(f"{len(pooled)} group(s) pool runs that differ in {keys}: listed under 'Settings of each group' in "
              f"{paths[0]}")
    failed, pruned = len(_failed(study.runs)), len(_pruned(study.runs))
    if failed:
        print(f"{failed} run(s) not ok: listed under 'Failed runs' in {paths[0]}")
    if pruned:
        print(f"{pruned} run(s) pruned by their study: listed under 'Pruned runs' in {paths[0]}")
    print(f"report: {paths[0]}" + (f" (+ {len(paths) - 2} figure files in {paths[2].parent})" if len(paths) > 2 else ""))
    return 0


def _keys(text: str) -> list[str]:
    keys = [key.strip() for key in text.split(",")]
    if not all(keys):
        raise MtlexpError(f"--group-by: expected config keys separated by commas (e.g. model), got {text!r}")
    return list(dict.fromkeys(keys))


def _pooled(study: Study) -> dict[str, list[str]]:
    """The groups of a study grouped by chosen keys whose runs differ in some other key, with those keys."""
    return {group: [key for key, values in settings.items() if len(values) > 1]
            for group, settings in (study.others or {}).items() if any(len(v) > 1 for v in settings.values())}


def _failed(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that did not end as asked (a pruned trial did: its study stopped it)."""
    return runs[~runs[STATUS].isin([Status.OK.value, Status.PRUNED.value])]


def _pruned(runs: pd.DataFrame) -> pd.DataFrame:
    """The search trials their study pruned: like failed runs, they are no sample of the tables."""
    return runs[runs[STATUS] == Status.PRUNED.value]


def _fail(message: str) -> int:
    print(f"mtlexp: error: {message}", file=sys.stderr)
    return 1


def _headline_metrics(values: pd.DataFrame, tasks: list[str], metric: str | None) -> dict[str, str]:
    chosen = {}
    for task in tasks:
        available = list(pd.unique(values.loc[values["task"] == task, "metric"]))
        chosen[task] = metric or headline_metric(available)
        if chosen[task] not in available:
            raise MtlexpError(f"--metric: task {task!r} has no {chosen[task]!r}; it has {sorted(available)}")
    return chosen


def _group_settings(study: Study) -> dict[str, dict[str, Any]]:
    """Each group's value of every swept key (the same for all its runs)."""
    first = study.runs.drop_duplicates("group")
    return {row["group"]: {key: row[key] for key in study.swept} for _, row in first.iterrows()}


def _order(value: Any) -> tuple[int, float, str]:
    """Sorts groups by their values: numbers by size (0.5 before 1.5 before 10), then text, then a missing key."""
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, format_value(value))


def _baseline_groups(settings: dict[str, dict[str, Any]], swept: list[str], baseline: str) -> dict[str, str | None]:
    """For every group, the group that differs from it only in having the baseline's value (None if not run)."""
    key, _, wanted = baseline.partition("=")
    ran = [s for g, s in settings.items() if g != UNKNOWN_GROUP]
    matches = [s[key] for s in ran if key in s and _is(s[key], wanted)]
    if "=" in baseline and key in swept and not matches:
        values = sorted({format_value(s[key]): s[key] for s in ran if key in s}.items(), key=lambda kv: _order(kv[1]))
        raise MtlexpError(f"--baseline: {wanted!r} is not among the swept values of {key}: "
                          f"{', '.join(text for text, _ in values)}")
    if "=" not in baseline or not matches:
        raise MtlexpError(f"--baseline: expected a swept override such as weighting=equal, got {baseline!r} "
                          f"(swept: {', '.join(swept) or 'nothing'})")

    def identity(setting: dict[str, Any]) -> tuple[str, ...]:
        return tuple(format_value(setting[k]) for k in swept)

    by_identity = {identity(s): g for g, s in settings.items() if g != UNKNOWN_GROUP}
    return {g: by_identity.get(identity({**s, key: matches[0]})) for g, s in settings.items() if g != UNKNOWN_GROUP}


def _is(value: Any, wanted: str) -> bool:
    """Whether a config value is the one typed on the command line (``0.50`` is 0.5)."""
    if format_value(value) == wanted:
        return True
    try:
        parsed = yaml.safe_load(wanted)
    except yaml.YAMLError:
        return False
    return parsed == (list(value) if isinstance(value, tuple) else value)


class _Measured:
    """One split's values, by (group, task, metric): their summary over runs, and their value per seed."""

    def __init__(self, values: pd.DataFrame) -> None:
        cells = dict(iter(values.groupby(["group", "task", "metric"])))
        self._summaries = {key: summarize(cell["value"]) for key, cell in cells.items()}
        # Runs of one group that share a seed (the same configuration run twice) are one sample: their mean.
        self._by_seed = {key: cell.groupby("seed")["value"].mean().to_dict() for key, cell in cells.items()}

    def summary(self, group: str, task: str, metric: str) -> Summary:
        return self._summaries.get((group, task, metric)) or summarize([])

    def by_seed(self, group: str, task: str, metric: str) -> dict[int, float]:
        return self._by_seed.get((group, task, metric), {})


def _against(measured: _Measured, group: str, base: str | None, task: str, metric: str,
             direction: str) -> tuple[float, PairedTest | None]:
    """A task's relative change (%) against the baseline group, and the paired test over seeds (none for the
    baseline itself)."""
    if base is None:
        return math.nan, None
    change = relative_change(measured.summary(group, task, metric).mean, measured.summary(base, task, metric).mean,
                             direction)
    if base == group:
        return change, None
    return change, paired_test(measured.by_seed(group, task, metric), measured.by_seed(base, task, metric))


def _delta_m_against(measured: _Measured, group: str, base: str | None, metrics: dict[str, str],
                     directions: dict[str, str]) -> tuple[float, PairedTest | None]:
    """Delta-m (%) against the baseline group, from the means over seeds, and its paired test (the per-seed
    Delta-m against 0). Undefined unless both groups measured every task. ``metrics``: each task's metric;
    ``directions``: which way it improves."""
    if base is None or not metrics:
        return math.nan, None
    if any(measured.summary(g, t, m).n == 0 for g in (group, base) for t, m in metrics.items()):
        return math.nan, None

    def means(g: str) -> dict[str, float]:
        return {t: measured.summary(g, t, m).mean for t, m in metrics.items()}

    def per_seed(g: str) -> dict[int, dict[str, float]]:
        seeds: dict[int, dict[str, float]] = {}
        for task, metric in metrics.items():
            for seed, value in measured.by_seed(g, task, metric).items():
                seeds.setdefault(seed, {})[task] = value
        return seeds

    judged = {task: directions[task] for task in metrics}
    change = delta_m(means(group), means(base), judged)
    return change, None if base == group else paired_delta_m_test(per_seed(group), per_seed(base), judged)


def _comparison(change: float, test: PairedTest | None, alpha: float) -> dict[str, Any]:
    p = None if test is None else test.p_value
    return {"rel_change_pct": change, "n_pairs": None if test is None else test.n_pairs, "p_value": p,
            "significant": None if p is None else p < alpha}


def _summary_columns(swept: list[str], compared: bool) -> list[str]:
    columns = ["schema", "split", "group", *swept, "task", "metric", "direction", "n", "mean", "sd", "ci_low",
               "ci_high"]
    return columns + (["rel_change_pct", "n_pairs", "p_value", "significant"] if compared else [])


def _runs_cell(runs: pd.DataFrame) -> str:
    """``2``, or ``2 (+1 failed)``: the ok runs, then the others by state."""
    states = runs[STATUS].value_counts()
    others = ", ".join(f"+{n} {state}" for state, n in sorted(states.items()) if state != Status.OK)
    return f"{states.get(Status.OK.value, 0)}" + (f" ({others})" if others else "")


def _estimate(s: Summary) -> str:
    """``mean ± sd [CI]``; the mean alone for one seed, ``-`` for none."""
    if s.n == 0:
        return "-"
    if s.n == 1:
        return f"{s.mean:.4f}"
    return f"{s.mean:.4f} ± {s.sd:.4f} [{s.ci_low:.4f}, {s.ci_high:.4f}]"


def _gain_cell(change: float, test: PairedTest | None, alpha: float) -> str:
    """``+1.23 (p=0.012)*``: the relative change, its p-value when there is one, ``*`` below ``alpha``."""
    if math.isnan(change):
        return "-"
    if test is None or test.p_value is None:
        return f"{change:+.2f}"
    p = test.p_value
    return f"{change:+.2f} (p{'<0.001' if p < 0.001 else f'={p:.3f}'})" + ("*" if p < alpha else "")


def _figure_links(drawn: list[Path] | None, out_dir: Path) -> list[str] | None:
    """report.md's lines for the figures ``drawn`` (None: none were asked for): an image link per PNG, relative
    to report.md; the PDF of the same name lies beside it."""
    if drawn is None:
        return None
    pngs = [p.relative_to(out_dir).as_posix() for p in drawn if p.suffix == ".png"]
    return [f"![{Path(png).stem}]({png})" for png in pngs] or ["None: the study's data gives none (see the log)."]


def _markdown(study: Study, report: Report, figures: list[str] | None = None, searches: Sequence[Search] = ()) -> str:
    runs = study.runs
    lines = [
        "# mtlexp report",
        "",
        f"Record schema {RECORD_SCHEMA}; split: {report.split}; metric per task: "
        + (", ".join(f"{t} {m}" for t, m in report.metrics.items()) or "none") + ".",
        f"{len(runs)} runs ({int((runs[STATUS] == Status.OK).sum())} ok"
        + (f", {len(_pruned(runs))} pruned" if len(_pruned(runs)) else "") + f") in {runs['group'].nunique()} groups; "
        f"swept: {', '.join(study.swept) or 'nothing'}.",
        "Cells: mean ± sd [95% confidence interval of the mean] over seeds; the mean alone for one seed.",
    ]
    if report.baseline is not None:
        lines.append(f"Baseline {report.baseline}: every group against the one that differs from it only there. "
                     "Δ%: relative change, positive = better whatever the metric's direction (a bias: nearer 0); "
                     "Δm: its mean over "
                     f"tasks; p: paired t-test over seeds; * p < {report.alpha}.")
    if study.others is not None:
        lines.append(f"Grouped by {', '.join(study.swept)} only: each group's other settings are listed under "
                     "'Settings of each group'.")
    lines += ["", markdown_table(report.header, report.rows)]
    if study.others is not None:
        lines += ["", *_settings_section(study)]
    lines += ["", "## Failed runs", ""]
    failed, pruned = _failed(runs), _pruned(runs)
    if failed.empty:
        lines.append("None: every run is ok" + (" or pruned." if len(pruned) else "."))
    else:
        lines.append(markdown_table(
            ["run", "group", "seed", STATUS, "error"],
            [[r["run"], r["group"], _cell(r["seed"]), r[STATUS], r["error"] or "-"] for _, r in failed.iterrows()]))
    if not pruned.empty:  # only a search with a pruner has any: no empty section in every other report
        lines += ["", "## Pruned runs", "",
                  "Search trials their study stopped early (hydra.sweeper.pruner): left out of the tables above."]
        lines += ["", markdown_table(
            ["run", "group", "seed", "pruned after epoch", "best epoch"],
            [[r["run"], r["group"], _cell(r["seed"]), _cell(r["pruned_epoch"]), _cell(r["best_epoch"])]
             for _, r in pruned.iterrows()])]
    for search in searches:
        objectives = ", ".join(f"{m} ({d})" for m, d in zip(search.metrics, search.directions))
        lines += ["", f"## Pareto front: {search.folder}", "",
                  f"{len(search.front)} trials no other beats on every objective ({objectives}), of "
                  f"{len(search.trials)} completed; from its best_trials.yaml.", "",
                  markdown_table(*front_table(search, with_command=True))]
    if figures is not None:
        lines += ["", "## Figures"]
        for line in figures:  # a paragraph each: images on consecutive lines would run into one row
            lines += ["", line]
    return "\n".join(lines) + "\n"


def _settings_section(study: Study) -> list[str]:
    """report.md's account of what ``--group-by`` left out of the group names: per group, the keys its runs
    agree on, and the keys whose values differ between its runs (whose table cells pool those configurations)."""
    rows = []
    for group, settings in sorted((study.others or {}).items()):
        fixed = [f"{key}={values[0]}" for key, values in settings.items() if len(values) == 1]
        mixed = [f"{key} in {{{', '.join(values)}}}" for key, values in settings.items() if len(values) > 1]
        rows.append([group, ", ".join(fixed) or "-", "; ".join(mixed) or "-"])
    return ["## Settings of each group", "",
            "The keys the runs differ in beyond the grouping keys, per group: the settings its runs share, and "
            "those that differ between its runs (each table cell above then pools those configurations).", "",
            markdown_table(["group", "settings", "differ within the group"], rows)]


def _cell(value: Any) -> Any:
    """A table cell of a value a run may lack: ``-`` then; a whole number as an integer (pandas keeps a column
    with gaps as floats)."""
    if value is None or pd.isna(value):
        return "-"
    return int(value) if isinstance(value, float) and value.is_integer() else value


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (also what scripts/tuned_study.py writes its summary with)."""

    def cell(value: Any) -> str:  # one line, and a | inside a cell would end it
        return " ".join(str(value).split()).replace("|", "\\|")

    return "\n".join(["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(map(cell, row)) + " |" for row in rows)])
