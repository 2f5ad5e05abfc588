"""Figures drawn from run folders and from a study's tables (no training code).

The input: the tidy frames ``mtlexp report`` builds from a study's run folders: ``runs`` (one row per run:
``run``, ``group``, ``seed``, ``status``, ..., one column per swept key) and ``values`` (one row per run,
split, task and metric: ``run``, ``group``, ``seed``, the swept-key columns, ``split``, ``task``, ``metric``,
``value``; task ``*`` holds the split's norm_loss). ``study_figures`` picks the figures a study's design calls
for.

Each ``*_figure`` function builds and returns a matplotlib ``Figure`` (no pyplot state to leak between
figures); ``save_figure`` (``mtlexp.artefacts``, shared with the gate figure a run draws) writes one as PNG
and PDF through a temporary file and a rename. ``out`` arguments are paths without a suffix: a dotted swept
key such as ``data.correlation`` in a file name must not be taken for one. Every figure styles its groups (or
lines, or experts) through ``styles``, so a name keeps its colour and marker across the figures of a study,
and places a long legend right of its axes through ``_legend``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtlexp.artefacts import (
    expert_columns,
    expert_names,
    gate_heatmap_figure,
    new_figure,
    save_figure,
    short_expert,
)
from mtlexp.report.records import ALL_TASKS, recorded_direction
from mtlexp.report.stats import headline_metric, oriented, summarize
from mtlexp.run_record import STATUS, Status, read_record
from mtlexp.specs import MAX, MIN, ZERO

if TYPE_CHECKING:  # pandas and matplotlib are imported where they are used
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from mtlexp.report.search import Search

log = logging.getLogger(__name__)

# The columns of a ``values`` frame that every run has; the others are swept keys.
RECORD_COLUMNS = frozenset({"run", "group", "seed", "split", "task", "metric", "direction", "value"})
LEVEL = 0.95  # confidence level of every band and error bar
MIN_SEEDS_FOR_DISTRIBUTION = 5
# Markers cycle with a period prime to 10, so names that share a hue family in tab20 (i and i + 10) differ in
# marker too.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LEGEND_INSIDE_MAX = 6  # a legend of more entries goes right of its axes, where it covers no data
LEGEND_ROWS_MAX = 24  # about what fits beside a 4.5-inch panel at font size 8; more entries wrap into columns
DATA_NODES = ("data", "tasks")  # config nodes whose values change what the runs train and are judged on


# --- pure helpers ------------------------------------------------------------------------------------------


def mean_ci(frame: pd.DataFrame, by: list[str], column: str = "value") -> pd.DataFrame:
    """Per group of ``by`` (sorted): ``mean``, ``half`` (half-width of the Student t confidence interval of the
    mean; 0 for a single sample, so its band or error bar collapses onto the line) and ``n`` of ``column``."""
    import pandas as pd

    rows = []
    for key, sample in frame.groupby(by, sort=True)[column]:
        summary = summarize(sample, LEVEL)
        rows.append((*key, summary.mean, 0.0 if summary.n < 2 else summary.ci_high - summary.mean, summary.n))
    return pd.DataFrame(rows, columns=[*by, "mean", "half", "n"])


def pareto_front(points: Any, directions: Sequence[str]) -> np.ndarray:
    """Which of the (N, 2) ``points`` no other point dominates (at least as good on both axes and better on
    one, each axis judged in its ``directions``); ties are all on the front."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    better = np.stack([oriented(points[:, axis], d) for axis, d in enumerate(directions)], axis=1)
    at_least = (better[:, None, :] >= better[None, :, :]).all(-1)  # [j, i]: j at least as good as i everywhere
    strictly = (better[:, None, :] > better[None, :, :]).any(-1)
    dominated = (at_least & strictly).any(0)
    return ~dominated


def _is_numeric(column: pd.Series) -> bool:
    import pandas as pd

    return column.dtype != bool and bool(pd.to_numeric(column, errors="coerce").notna().all())


def swept_columns(frame: pd.DataFrame) -> list[str]:
    """The swept-key columns of a ``values`` frame: every column that is not part of the record itself."""
    return [c for c in frame.columns if c not in RECORD_COLUMNS]


def line_labels(frame: pd.DataFrame, by: Sequence[str]) -> pd.Series:
    """One legend label per row: its values of the keys ``by``, comma-separated (``all runs`` without keys);
    the legend's title names the keys."""
    import pandas as pd

    if not by:
        return pd.Series("all runs", index=frame.index)
    return frame[list(by)].astype(str).agg(", ".join, axis=1)


def group_name(group: str) -> str:
    """A group as shown in figures (the group of a study that swept only seeds is empty)."""
    return group or "all runs"


def _task_title(task: str) -> str:
    return "mean over tasks" if task == ALL_TASKS else task


def _selected(values: pd.DataFrame, metric: str, split: str) -> pd.DataFrame:
    """The rows of one metric on one split (one per run and task)."""
    rows = values[(values["split"] == split) & (values["metric"] == metric)]
    if rows.empty:
        raise ValueError(f"no {split} {metric} values")
    return rows


# --- drawing and writing -----------------------------------------------------------------------------------


def distinct_colours(n: int) -> list[Any]:
    """``n`` colours, no two alike: tab10 up to 10, tab20 up to 20 (its ten darker shades first, which are
    tab10's), else evenly spaced along turbo."""
    from matplotlib import colormaps

    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    if n <= 20:
        tab20 = colormaps["tab20"].colors
        return list(tab20[0::2] + tab20[1::2])[:n]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]


def styles(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """A ``color`` and ``marker`` per name (plot keyword arguments), different for every name. Names are
    sorted first, so every figure that shows the same names gives each the same style, whatever order its
    rows came in; the result iterates in that order, the order of the legends."""
    ordered = sorted(set(names))
    colours = distinct_colours(len(ordered))
    return {name: {"color": colours[i], "marker": MARKERS[i % len(MARKERS)]} for i, name in enumerate(ordered)}


def _style_handles(named: dict[str, dict[str, Any]], **kwargs: Any) -> list[Any]:
    """Legend entries for ``styles``: a marker in each name's colour, labelled with the name."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], label=name, **{"linestyle": "", **style, **kwargs}) for name, style in named.items()]


def _legend(ax: Axes, handles: Sequence[Any] | None = None, outside: bool | None = None, **kwargs: Any) -> Any:
    """A legend of ``handles`` (default: the labelled artists of ``ax``), inside ``ax`` where it is short, else
    (or with ``outside``) right of it; the figure then widens by the legend's width, so the axes keep theirs."""
    handles = list(ax.get_legend_handles_labels()[0] if handles is None else handles)
    if outside is None:
        outside = len(handles) > LEGEND_INSIDE_MAX
    if not outside:
        return ax.legend(handles=handles, loc="best", fontsize=8, title_fontsize=8, **kwargs)
    legend = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                       fontsize=8, title_fontsize=8, ncols=-(-len(handles) // LEGEND_ROWS_MAX), **kwargs)
    fig = ax.get_figure(root=True)
    fig.set_figwidth(fig.get_figwidth() + legend.get_window_extent().width / fig.dpi)
    return legend


def _band(ax: Axes, x: Any, mean: Any, half: Any, **kwargs: Any) -> None:
    """A line of means with its confidence band in the line's colour."""
    (line,) = ax.plot(x, mean, **kwargs)
    ax.fill_between(x, np.asarray(mean) - np.asarray(half), np.asarray(mean) + np.asarray(half),
                    color=line.get_color(), alpha=0.2, linewidth=0)


# --- metric against a swept key (MMoE paper, Fig. 3/4) -----------------------------------------------------


def metric_against_figure(values: pd.DataFrame, key: str, metric: str, split: str,
                          by: Sequence[str] | None = None) -> Figure:
    """A metric against a numeric swept key, one panel per task (norm_loss: the task mean), one line per value
    of the other swept keys ``by`` (default: every swept-key column but ``key``), each the mean over seeds
    with its 95% Student t confidence band. The view of the MMoE paper's Figs. 3 and 4 (loss against task
    correlation)."""
    import pandas as pd

    rows = _selected(values, metric, split)
    x = pd.to_numeric(rows[key], errors="coerce")
    if x.isna().any():
        raise ValueError(f"{key} is not numeric: {sorted(rows.loc[x.isna(), key].astype(str).unique())}")
    by = [c for c in swept_columns(values) if c != key] if by is None else list(by)
    rows = rows.assign(x=x, line=line_labels(rows, by))
    tasks = list(dict.fromkeys(rows["task"]))
    lines = styles(rows["line"])
    fig, axes = new_figure(len(tasks), sharex=True)
    for ax, task in zip(axes[0], tasks):
        table = mean_ci(rows[rows["task"] == task], ["line", "x"])
        for line, part in table.groupby("line", sort=False):
            _band(ax, part["x"], part["mean"], part["half"], markersize=4, **lines[line])
        ax.set_title(_task_title(task), fontsize=10)
        ax.set_xlabel(key)
        ax.set_ylabel(f"{split} {metric}")
        ax.grid(alpha=0.3)
    _legend(axes[0, -1], _style_handles(lines, markersize=4, linestyle="-"), title=", ".join(by) or None)
    fig.suptitle(f"{split} {metric} against {key}: mean over seeds, {LEVEL:.0%} CI", fontsize=11)
    return fig


# --- training curves ---------------------------------------------------------------------------------------

# Per epoch: the epoch's mean training loss and the validation loss after it. (The CSV's ``step`` counts
# training_steps, chunks of data.chunk_steps optimizer steps, and step-level training losses are only written
# every trainer.log_every_n_steps chunks: epochs are the grid every run has.) They are not the same sum: the
# training loss is what the weighting optimised (weighted task losses, plus its regulariser and the model's
# auxiliary loss), the validation loss the plain sum of the trained tasks' losses (module.py).
TRAIN_LOSS, VAL_LOSS = "train/loss_epoch", "val/loss"
CURVES = {"train": (TRAIN_LOSS, "weighted objective", "-"), "val": (VAL_LOSS, "sum of task losses", "--")}


def read_loss_curves(run: str | Path) -> pd.DataFrame | None:
    """A run's logged losses from ``csv/metrics.csv`` as rows of ``curve`` (train/val), ``epoch``, ``value``;
    None without the log."""
    import pandas as pd

    path = Path(run) / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    logged = pd.read_csv(path)
    if "epoch" not in logged:
        return None
    # After fit, the best checkpoint is validated once more (and tested): those rows come after the last row
    # that logs a train/ metric, and are not part of the curve.
    trained = logged.filter(like="train/").notna().any(axis=1)
    during_fit = logged.index <= (trained[trained].index.max() if trained.any() else -1)
    parts = []
    for column, curve in ((TRAIN_LOSS, "train"), (VAL_LOSS, "val")):
        if column in logged:
            rows = (logged[during_fit] if curve == "val" else logged)[["epoch", column]].dropna()
            parts.append(pd.DataFrame({"curve": curve, "epoch": rows["epoch"].astype(int), "value": rows[column]}))
    return pd.concat(parts, ignore_index=True) if parts else None


def loss_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per ``group``, ``curve`` (train/val) and ``epoch``: the ``mean``, CI ``half``-width and ``n`` of the loss
    over the group's runs that logged that epoch (runs without a CSV log are left out), so runs that stopped
    early shorten a curve's support instead of breaking it."""
    import pandas as pd

    curves = []
    for run, group in zip(runs["run"], runs["group"]):
        losses = read_loss_curves(run)
        if losses is not None:
            curves.append(losses.assign(run=str(run), group=group))
    if not curves:
        raise ValueError(f"no run has a csv/metrics.csv with {TRAIN_LOSS} or {VAL_LOSS}")
    frame = pd.concat(curves, ignore_index=True)
    per_run = frame.groupby(["group", "curve", "epoch", "run"], sort=False)["value"].mean().reset_index()
    return mean_ci(per_run, ["group", "curve", "epoch"])


def training_curves_figure(runs: pd.DataFrame, panel_key: str | None = None) -> Figure:
    """Training loss (``train/loss_epoch``, solid) and validation loss (``val/loss``, dashed) over epochs, per
    group: the mean with its 95% confidence band over the group's seeds (``loss_curves``), from each run's
    ``csv/metrics.csv``. With ``panel_key`` (a swept column of ``runs``, e.g. the task correlation), one panel
    per value of it, as the MMoE paper's Fig. 4. The loss axis is logarithmic, where late epochs differ, unless
    a loss is not positive (an uncertainty weighting's objective can be negative)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    table = loss_curves(runs)
    panels = [None] if panel_key is None else list(dict.fromkeys(runs[panel_key]))
    fig, axes = new_figure(ncols=len(panels), width=5.0, height=4.5, sharey=True)
    labels = {group: group_name(group) for group in table["group"].unique()}
    if panel_key is not None:  # the panel says the key's value: the legend names the rest
        member = dict(zip(runs["group"], runs[panel_key]))
        labels = {g: " ".join(p for p in g.split() if not p.startswith(f"{panel_key}=")) or "all runs" for g in labels}
    named = styles(labels.values())
    log_scale = bool((table["mean"] > 0).all())
    for ax, value in zip(axes[0], panels):
        epochs = []
        for group, part in table.groupby("group", sort=False):
            if panel_key is not None and member.get(group) != value:
                continue
            for curve, (_, _, linestyle) in CURVES.items():
                line = part[part["curve"] == curve]
                if not line.empty:
                    # Val markers are open, so a single epoch's train and val points stay apart.
                    _band(ax, line["epoch"], line["mean"], line["half"], linestyle=linestyle, markersize=4,
                          markerfacecolor="white" if curve == "val" else None, **named[labels[group]])
                    epochs += line["epoch"].tolist()
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one epoch: one tick
        if epochs and min(epochs) == max(epochs):  # one epoch: autoscaling would span +-0.04 around it
            ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        if value is not None:
            ax.set_title(f"{panel_key} = {value}", fontsize=10)
    axes[0, 0].set_ylabel(f"{TRAIN_LOSS} / {VAL_LOSS}" + (" (log scale)" if log_scale else ""))
    keys = [Line2D([], [], color="grey", linestyle=linestyle, marker="o", markersize=4,
                   markerfacecolor="white" if curve == "val" else "grey", label=f"{key}: {meaning}")
            for curve, (key, meaning, linestyle) in CURVES.items()]
    _legend(axes[0, -1], [*_style_handles(named, linestyle="-", markersize=4), *keys])
    fig.suptitle(f"training (solid) and validation (dashed) loss: mean over seeds, {LEVEL:.0%} CI", fontsize=10)
    return fig


# --- distribution of the final metric over seeds (MMoE paper, Fig. 5) --------------------------------------


def final_distribution_figure(values: pd.DataFrame, metric: str, split: str) -> Figure:
    """The distribution over seeds of a final metric per group, one panel per task: a box plot (quartiles,
    whiskers at 1.5 IQR) with every run as a point, the view of the MMoE paper's Fig. 5 (trainability: how much
    the outcome depends on the seed)."""
    rows = _selected(values, metric, split)
    tasks = list(dict.fromkeys(rows["task"]))
    groups = list(dict.fromkeys(rows["group"]))
    named = styles(groups)
    fig, axes = new_figure(len(tasks), width=max(4.0, 1.0 + 0.8 * len(groups)), height=4.5, sharey=True)
    jitter = np.random.default_rng(0)  # fixed, so the same study draws the same figure
    for ax, task in zip(axes[0], tasks):
        samples = [rows.loc[(rows["task"] == task) & (rows["group"] == g), "value"].to_numpy() for g in groups]
        ax.boxplot(samples, widths=0.6, showfliers=False, medianprops={"color": "black"})
        for position, (group, sample) in enumerate(zip(groups, samples), start=1):
            ax.scatter(position + jitter.uniform(-0.2, 0.2, len(sample)), sample, s=6, alpha=0.5,
                       color=named[group]["color"], linewidths=0)
        ax.set_xticks(range(1, len(groups) + 1), [f"{group_name(g)} (n={len(s)})" for g, s in zip(groups, samples)],
                      rotation=30, ha="right", fontsize=8)
        ax.set_title(_task_title(task), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel(f"{split} {metric}")
    fig.suptitle(f"final {split} {metric} over seeds, per group", fontsize=11)
    return fig


# --- gates -------------------------------------------------------------------------------------------------


MEAN_MARKER = {"marker": "o", "color": "white", "markeredgecolor": "black", "markersize": 4}


def gate_distribution_figure(gate_hist: dict[str, list[list[float]]], gate_experts: dict[str, list[str]] | None,
                             title: str = "") -> Figure:
    """How each gate's weight for each expert spreads over rows: per gate a panel, per expert a violin-like
    shape drawn from the histogram (``metrics.json``'s ``gate_hist``: per gate, per expert, row counts in
    equal bins on [0, 1]), its width the share of rows in the bin relative to the expert's fullest bin, and a
    white dot at the mean; a legend says so. Experts are aligned on names across gates, as in the heatmap."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = expert_names(gate_hist, gate_experts)
    columns = expert_columns(names)
    colours = distinct_colours(len(columns))
    fig, axes = new_figure(nrows=len(gate_hist), width=max(4.0, 0.6 * len(columns) + 2.0), height=1.9, sharex=True)
    for ax, (gate, counts) in zip(axes[:, 0], gate_hist.items()):
        counts = np.asarray(counts, dtype=float)  # (E, bins)
        edges = np.linspace(0.0, 1.0, counts.shape[1] + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        for name, row in zip(names[gate], counts):
            col = columns.index(name)
            if row.sum() == 0:
                continue
            width = 0.45 * row / row.max()
            ax.fill_betweenx(centers, col - width, col + width, step="mid", color=colours[col], alpha=0.7,
                             linewidth=0)
            ax.plot(col, (centers * row).sum() / row.sum(), **MEAN_MARKER)
        ax.set_ylim(0.0, 1.0)
        ax.set_ylabel(f"{gate}\nweight", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xticks(range(len(columns)), [short_expert(c) for c in columns], rotation=45, ha="right", fontsize=8)
    axes[-1, 0].set_xlim(-0.6, len(columns) - 0.4)
    axes[-1, 0].set_xlabel("expert")
    # The study's titles name the group instead of explaining the marks: the legend explains them in every one.
    _legend(axes[0, 0], [Line2D([], [], linestyle="", label="mean weight over rows", **MEAN_MARKER),
                         Patch(color="grey", alpha=0.7, linewidth=0, label="width: share of rows\nat that weight")],
            outside=True)
    fig.suptitle(title or "per-row gate weight per expert (val): distribution over rows, dot at the mean",
                 fontsize=10)
    return fig


# --- trade-off between two tasks ---------------------------------------------------------------------------


def _directions(values: pd.DataFrame, tasks: Sequence[str], metric: str) -> list[str]:
    """Which way ``metric`` improves on each of ``tasks``, as the runs record it; unknown is an error, not a
    guess."""
    found = [recorded_direction(values, task, metric) for task in tasks]
    if None in found:
        unknown = [task for task, d in zip(tasks, found) if d is None]
        raise ValueError(f"{metric} has no known direction on {', '.join(unknown)}")
    return found


def pareto_table(values: pd.DataFrame, task_a: str, task_b: str, metric: str, split: str,
                 panel_by: Sequence[str] = ()) -> pd.DataFrame:
    """Per group: ``panel`` (its values of ``panel_by``, as ``key=value`` text), the mean and 95% CI half-width
    of the metric on both tasks (``<task>``, ``<task>_half``), and ``front``: whether no group of its panel is
    at least as good on both tasks and better on one (in the metric's direction).

    ``panel_by``: swept keys that change the data (``data.correlation``): groups trained on other data do not
    compete."""
    rows = _selected(values, metric, split)
    rows = rows[rows["task"].isin([task_a, task_b])]
    missing = ValueError(f"no group has {split} {metric} for both {task_a} and {task_b}")
    if rows.empty:
        raise missing
    panel = rows[list(panel_by)].astype(str).apply(lambda r: " ".join(f"{k}={v}" for k, v in r.items()), axis=1)
    table = mean_ci(rows.assign(panel=panel if panel_by else ""), ["panel", "group", "task"])
    mean = table.pivot(index=["panel", "group"], columns="task", values="mean")
    if task_a not in mean or task_b not in mean or mean[[task_a, task_b]].dropna().empty:
        raise missing
    mean = mean[[task_a, task_b]].dropna()
    half = table.pivot(index=["panel", "group"], columns="task", values="half").loc[mean.index, [task_a, task_b]]
    frame = mean.join(half.add_suffix("_half")).reset_index()
    directions = _directions(rows, [task_a, task_b], metric)
    frame["front"] = False
    for _, part in frame.groupby("panel", sort=False):
        frame.loc[part.index, "front"] = pareto_front(part[[task_a, task_b]].to_numpy(), directions)
    return frame


FRONT_MARKER = {"markersize": 8, "markeredgecolor": "black", "markeredgewidth": 1.5}
BETTER = {MAX: "higher is better", MIN: "lower is better", ZERO: "nearer 0 is better"}  # in a figure's title


def pareto_figure(values: pd.DataFrame, task_a: str, task_b: str, metric: str, split: str,
                  panel_by: Sequence[str] = ()) -> Figure:
    """Task A against task B on one metric, a point per group (mean over seeds, 95% CI error bars); the groups
    no other group beats on both tasks are ringed and, where there are two or more, joined as the Pareto front;
    a panel per value of ``panel_by`` (``pareto_table``)."""
    from matplotlib.lines import Line2D

    table = pareto_table(values, task_a, task_b, metric, split, panel_by)
    panels = list(table.groupby("panel", sort=True))
    # Within a panel a group is named without the panel's keys, and keeps its colour across panels.
    names = [group_name(" ".join(t for t in group.split(" ") if t not in panel.split(" ")))
             for panel, group in zip(table["panel"], table["group"])]
    table = table.assign(name=names)
    named = styles(names)
    fig, axes = new_figure(len(panels), width=6.0, height=4.8)
    joined = False
    for ax, (panel, part) in zip(axes[0], panels):
        for row in table.loc[part.index].to_dict("records"):
            ax.errorbar(row[task_a], row[task_b], xerr=row[f"{task_a}_half"], yerr=row[f"{task_b}_half"],
                        linestyle="", capsize=3, **named[row["name"]],
                        **FRONT_MARKER if row["front"] else {"markersize": 5})
        front = part[part["front"]].sort_values(task_a)
        if len(front) > 1:  # a front of one group is its ring alone: a line needs two ends
            ax.plot(front[task_a], front[task_b], "--", color="grey", linewidth=1, zorder=0)
            joined = True
        ax.set_xlabel(f"{task_a} {split} {metric}")
        ax.set_ylabel(f"{task_b} {split} {metric}")
        ax.grid(alpha=0.3)
        if panel:
            ax.set_title(panel, fontsize=10)
    keys = [Line2D([], [], linestyle="", marker="o", color="white", label="on the Pareto front", **FRONT_MARKER)]
    if joined:
        keys.append(Line2D([], [], linestyle="--", color="grey", linewidth=1, label="Pareto front"))
    _legend(axes[0, -1], [*_style_handles(named, markersize=5), *keys])
    better = "; ".join(dict.fromkeys(BETTER[d] for d in _directions(values, [task_a, task_b], metric)))
    fig.suptitle(f"{task_a} vs {task_b}: {split} {metric} per group ({better}; mean, {LEVEL:.0%} CI)", fontsize=10)
    return fig


# --- a study's figures -------------------------------------------------------------------------------------


def _file_name(text: str) -> str:
    """A group or key as a file name: anything but letters, digits and ``._=-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "all"


def group_gates(run_dirs: Iterable[str | Path]) -> tuple[dict[str, list[float]], dict[str, list[str]],
                                                         dict[str, list[list[float]]]]:
    """Gates of a group's runs, from their ``metrics.json``: the mean weights over runs, the expert names, and
    the summed weight histograms (summing row counts pools the runs' rows). Runs whose gates name other
    experts than the first gated run's are left out of the mean."""
    records = {r: m for r in run_dirs if (m := read_record(r)) is not None and m.gates}
    if not records:
        return {}, {}, {}
    first = next(iter(records))
    experts = records[first].gate_experts or {}
    same = [m for m in records.values() if (m.gate_experts or {}) == experts
            and m.gates.keys() == records[first].gates.keys()]
    if len(same) < len(records):
        log.warning("gates: %d of %d runs have other gates or experts than %s; left out of the mean",
                    len(records) - len(same), len(records), first)
    gates = {g: np.mean([m.gates[g] for m in same], axis=0).round(6).tolist() for g in same[0].gates}
    with_hist = [m.gate_hist for m in same if m.gate_hist and m.gate_hist.keys() == gates.keys()]
    hist = {g: np.sum([h[g] for h in with_hist], axis=0).tolist() for g in gates} if with_hist else {}
    return gates, experts, hist


def group_gate_figures(run_dirs: Iterable[str | Path], name: str, stem: Path) -> dict[Path, Figure]:
    """A group's mean gate weights (``<stem>_weights``) and, when its runs recorded them, the distribution of
    the weights over rows (``<stem>_weight_distribution``), by the paths to save them at; nothing for a group
    without gates."""
    gates, experts, hist = group_gates(run_dirs)
    if not gates:
        return {}
    drawn = {stem.with_name(f"{stem.name}_weights"):
             gate_heatmap_figure(gates, experts, title=f"{name}: mean gate weight per expert (val)")}
    if hist:
        drawn[stem.with_name(f"{stem.name}_weight_distribution")] = gate_distribution_figure(
            hist, experts, title=f"{name}: per-row gate weight per expert (val)")
    return drawn


def study_figures(runs: pd.DataFrame, values: pd.DataFrame, swept: Sequence[str], out_dir: str | Path,
                  split: str = "test") -> list[Path]:
    """The figures a study calls for, written under ``out_dir``; returns their paths.

    - per numeric swept key: the headline metric of every task (auroc, else mse, else the first) and norm_loss
      against it (``metric_against_figure``);
    - training curves, when runs have CSV logs;
    - the distribution over seeds of the same metrics, when a group has at least 5 seeds;
    - per group with gates: the mean gate weights and, when recorded, their distribution over rows (``gates/``);
    - the Pareto front of the two tasks, when there are exactly two and at least two groups; a panel per value
      of the swept keys that change the data (``data``, ``tasks``).

    A figure the data cannot give (a metric missing, a key not numeric, a log unreadable) is skipped with a
    warning, never an error that stops the report.
    """
    out_dir = Path(out_dir)
    keys = [k for k in swept if k != "seed"]
    values = values[values["split"] == split]
    ok_runs = runs[runs[STATUS] == Status.OK]
    tasks = [t for t in dict.fromkeys(values["task"]) if t != ALL_TASKS]
    headline = {t: headline_metric(dict.fromkeys(values.loc[values["task"] == t, "metric"])) for t in tasks}
    judged = [(m, [t for t in tasks if headline[t] == m]) for m in dict.fromkeys(headline.values())]
    judged.append(("norm_loss", [ALL_TASKS]))
    written: list[Path] = []

    def attempt(name: str, draw: Callable[[], dict[Path, Figure]]) -> None:
        """Draw and save figures now, by the paths ``draw`` gives them; an error here is the data's (the figure
        has nothing to show), and the report and the other figures go on."""
        try:
            for stem, fig in draw().items():
                written.extend(save_figure(fig, stem))
        except Exception as err:
            log.warning("figure %s skipped: %s", name, err)

    for key in keys:
        if key not in values or not _is_numeric(values[key]):
            continue
        for metric, its_tasks in judged:
            subset = values[values["task"].isin(its_tasks)]
            others = [o for o in keys if o != key]
            attempt(f"{metric} vs {key}", lambda: {out_dir / f"{metric}_vs_{_file_name(key)}": metric_against_figure(
                subset, key, metric, split, by=others)})

    if any((Path(r) / "csv" / "metrics.csv").is_file() for r in ok_runs["run"]):
        numeric = [k for k in keys if k in ok_runs and _is_numeric(ok_runs[k])]
        attempt("training curves", lambda: {out_dir / "training_curves": training_curves_figure(
            ok_runs, numeric[0] if numeric else None)})

    if not values.empty and values.groupby("group")["seed"].nunique().max() >= MIN_SEEDS_FOR_DISTRIBUTION:
        for metric, its_tasks in judged:
            subset = values[values["task"].isin(its_tasks)]
            attempt(f"{metric} distribution", lambda: {out_dir / f"{metric}_distribution": final_distribution_figure(
                subset, metric, split)})

    for group, members in ok_runs.groupby("group", sort=False):
        attempt(f"gates of {group_name(group)}", lambda: group_gate_figures(
            members["run"], group_name(group), out_dir / "gates" / _file_name(group)))

    if len(tasks) == 2 and values["group"].nunique() >= 2:
        a, b = tasks
        metric = headline[a] if headline[a] == headline[b] else "norm_loss"
        data_keys = [k for k in keys if k in values and (k.split(".")[0] in DATA_NODES)]
        attempt("pareto", lambda: {out_dir / f"pareto_{metric}": pareto_figure(values, a, b, metric, split,
                                                                               panel_by=data_keys)})
    return written


# --- a multi-objective search ------------------------------------------------------------------------------


def search_figure(search: Search) -> Figure:
    """A multi-objective search's first two objectives: a point per completed trial, and the Pareto front the
    study chose (ringed, labelled with their trial numbers, and joined where it has two or more trials)."""
    if len(search.metrics) < 2:
        raise ValueError(f"{len(search.metrics)} objective: a front needs two")
    x, y = search.metrics[:2]
    fig, axes = new_figure(width=6.0, height=4.8)
    ax = axes[0, 0]
    ax.plot(search.trials[x], search.trials[y], linestyle="", marker="o", markersize=5, color="tab:blue", alpha=0.6,
            label=f"trial ({len(search.trials)})")
    front = search.front.sort_values(x)
    ax.plot(front[x], front[y], linestyle="--" if len(front) > 1 else "", color="grey", linewidth=1, marker="o",
            markerfacecolor="none", **FRONT_MARKER, label=f"Pareto front ({len(front)})")
    for row in front.to_dict("records"):
        ax.annotate(str(row["number"]), (row[x], row[y]), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    _legend(ax)
    better = "; ".join(f"{m}: {BETTER[d]}" for m, d in zip(search.metrics[:2], search.directions[:2]))
    shown = "" if len(search.metrics) == 2 else f", the first 2 of {len(search.metrics)} objectives"
    fig.suptitle(f"search {search.folder.name}: completed trials and the Pareto front{shown}\n({better})",
                 fontsize=10)
    return fig


def search_figures(searches: Sequence[Search], out_dir: str | Path) -> list[Path]:
    """``search_figure`` of each search, written under ``out_dir`` (``pareto_trials``, or one per search folder
    when there are several); a search the figure cannot show is skipped with a warning, as in ``study_figures``."""
    written: list[Path] = []
    for search in searches:
        name = "pareto_trials" if len(searches) == 1 else f"pareto_trials_{_file_name(str(search.folder))}"
        try:
            written.extend(save_figure(search_figure(search), Path(out_dir) / name))
        except Exception as err:  # noqa: BLE001 - a figure the data cannot give never stops the report
            log.warning("figure %s skipped: %s", name, err)
    return written
