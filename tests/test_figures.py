"""Study figures from hand-made report frames and run folders: every figure is written as PNG and PDF, the pure
parts (confidence intervals, the Pareto front, gate histograms) give known answers, and ``study_figures`` draws
what the study's design calls for and skips, with a warning, what the data cannot give."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_rgba

from mtlexp import artefacts
from mtlexp.artefacts import gate_heatmap_figure, plot_gates, save_figure
from mtlexp.gate_stats import HIST_BINS, GateStatistics
from mtlexp.report import figures
from mtlexp.report.figures import (
    final_distribution_figure,
    gate_distribution_figure,
    headline_metric,
    loss_curves,
    mean_ci,
    metric_against_figure,
    pareto_figure,
    pareto_front,
    pareto_table,
    read_loss_curves,
    study_figures,
    styles,
    training_curves_figure,
)
from mtlexp.report.stats import metric_direction
from mtlexp.specs import MAX, MIN, ZERO

# CGC's gates: each task gate sees its own experts and the shared ones, so the widths differ from the experts'.
CGC_EXPERTS = {"ctr": ["ctr_0", "shared_0", "shared_1"], "cvr": ["cvr_0", "cvr_1", "shared_0", "shared_1"]}
CGC_GATES = {"ctr": [0.5, 0.3, 0.2], "cvr": [0.1, 0.2, 0.3, 0.4]}


def assert_figures(paths: list[Path], stem: Path) -> None:
    """``paths`` are ``stem``'s PNG and PDF, both real files of their format."""
    assert sorted(p.name for p in paths) == sorted([f"{stem.name}.pdf", f"{stem.name}.png"])
    for path in paths:
        assert path.parent == stem.parent
        assert path.read_bytes()[:4] == (b"\x89PNG" if path.suffix == ".png" else b"%PDF")


def make_values(models=("mmoe", "shared_bottom"), correlations=(0.5, 0.9), seeds=range(3),
                tasks=("ctr", "cvr"), metrics=("auroc", "logloss", "norm_loss"), split="test") -> pd.DataFrame:
    """A ``values`` frame with a known pattern: MMoE is better the more tasks correlate, seeds add noise."""
    rng = np.random.default_rng(0)
    rows = []
    for model in models:
        for rho in correlations:
            for seed in seeds:
                run = f"runs/{model}-{rho}-{seed}"
                base = {"run": run, "group": f"model={model} data.correlation={rho}", "seed": seed, "model": model,
                        "data.correlation": rho, "split": split}
                for task in tasks:
                    for metric in metrics:
                        value = 0.7 + 0.1 * rho * (model == "mmoe") + 0.01 * rng.standard_normal()
                        rows.append({**base, "task": task, "metric": metric, "direction": metric_direction(metric),
                                     "value": value})
                rows.append({**base, "task": "*", "metric": "norm_loss", "direction": MIN, "value": 1 - 0.1 * rho})
    return pd.DataFrame(rows)


def write_run(folder: Path, metrics: dict | None = None, losses: list[tuple[int, float, float | None]] | None = None,
              evaluated_after_fit: bool = True) -> Path:
    """A run folder with ``metrics.json`` and a Lightning-style ``csv/metrics.csv`` of (epoch, train loss, val loss)."""
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"status": "ok", **(metrics or {})}))
    if losses is not None:
        rows = []
        for step, train, val in losses:
            rows.append({"epoch": step, "step": step, "train/loss_step": train + 100.0})  # not an epoch's loss
            if val is not None:
                rows.append({"epoch": step, "step": step, "val/loss": val})
            rows.append({"epoch": step, "step": step, "train/loss_epoch": train})
        if evaluated_after_fit:  # the best checkpoint validated and tested once more, after the last epoch
            last = losses[-1][0] + 1
            rows += [{"epoch": last, "step": last, "val/loss": 99.0}, {"epoch": last, "step": last, "test/loss": 99.0}]
        (folder / "csv").mkdir()
        pd.DataFrame(rows).to_csv(folder / "csv" / "metrics.csv", index=False)
    return folder


# --- pure parts ----------------------------------------------------------------------------------------------


def test_confidence_interval_is_student_t_and_empty_for_a_single_sample():
    # Samples 1, 2, 3: sd 1, t(0.975, df=2) = 4.302653.
    frame = pd.DataFrame({"g": ["a", "a", "a", "b"], "value": [1.0, 2.0, 3.0, 7.0]})
    table = mean_ci(frame, ["g"]).set_index("g")
    assert table.loc["a", "mean"] == 2.0 and table.loc["a", "n"] == 3
    assert table.loc["a", "half"] == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)
    assert table.loc["b", "half"] == 0.0  # a single seed: no band, not a NaN that hides the line


def test_pareto_front_respects_the_metric_direction():
    points = [(1, 5), (2, 2), (5, 1), (3, 3), (2, 2), (6, 6)]
    # Lower is better: (3, 3) is beaten by (2, 2), (6, 6) by everything; the tied (2, 2)s are both on the front.
    assert pareto_front(points, [MIN, MIN]).tolist() == [True, True, True, False, True, False]
    # Higher is better: (6, 6) beats every other point.
    assert pareto_front(points, [MAX, MAX]).tolist() == [False, False, False, False, False, True]
    assert pareto_front([(1, 5), (5, 1), (3, 3), (2, 2)], [MAX, MAX]).tolist() == [True, True, True, False]
    assert pareto_front([(0.7, 0.8)], [MAX, MAX]).tolist() == [True]
    # Nearer 0 is better: (-0.01, 0.02) beats (0.03, -0.02) on both; a larger value is no better.
    biases = [(-0.01, 0.02), (0.03, -0.02), (0.02, 0.01)]
    assert pareto_front(biases, [ZERO, ZERO]).tolist() == [True, False, True]


def test_headline_metrics():
    assert headline_metric(["logloss", "auroc", "norm_loss"]) == "auroc"
    assert headline_metric(["mae", "mse", "r2"]) == "mse"
    assert headline_metric(["accuracy", "logloss"]) == "accuracy"


def test_gate_statistics_count_every_experts_weights_in_bins_summed_over_batches_and_ranks():
    first = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    second = torch.tensor([[0.2, 0.3, 0.5]])
    one = GateStatistics()
    one.update({"t": first}, rows=2)
    one.update({"t": second}, rows=1)
    report = one.report({"t": 3}, lambda v: v, torch.device("cpu"))
    expected = torch.zeros(3, HIST_BINS, dtype=torch.float64)
    for weights in torch.cat([first, second]):
        for e, w in enumerate(weights.tolist()):
            expected[e, min(int(w * HIST_BINS), HIST_BINS - 1)] += 1  # a weight of 1 in the last bin
    torch.testing.assert_close(report.histograms["t"], expected)
    assert report.histograms["t"].sum(1).tolist() == [3, 3, 3]  # every row once per expert

    # Two ranks, one of which saw no rows, and a gate of another width: the same histograms as one rank.
    wide = torch.full((2, 5), 0.2)
    rank0, rank1 = GateStatistics(), GateStatistics()
    rank0.update({"t": first, "w": wide}, rows=2)
    rank0.update({"t": second, "w": wide[:1]}, rows=1)
    widths = {"t": 3, "w": 5}
    vectors = []
    for stats in (rank0, rank1):
        stats.report(widths, lambda v: vectors.append(v) or v, torch.device("cpu"))
    gathered = rank0.report(widths, lambda v: torch.stack(vectors), torch.device("cpu"))
    torch.testing.assert_close(gathered.histograms["t"], expected)
    assert gathered.histograms["w"][:, 4].tolist() == [3.0] * 5
    assert gathered.active == one.report({"t": 3}, lambda v: v, torch.device("cpu")).active | {
        "w": {"per_row_mean": 5.0, "per_row_max": 5, "used": 5}}


# --- each figure ---------------------------------------------------------------------------------------------


def test_metric_against_a_numeric_key_one_line_per_model(tmp_path):
    values = make_values()
    stem = tmp_path / "auroc_vs_data.correlation"  # the dotted key is kept in the name, not taken for a suffix
    assert_figures(save_figure(metric_against_figure(values, "data.correlation", "auroc", "test"), stem), stem)
    stem = tmp_path / "norm_loss"
    assert_figures(save_figure(metric_against_figure(values[values["task"] == "*"], "data.correlation", "norm_loss",
                                                     "test", by=["model"]), stem), stem)
    with pytest.raises(ValueError, match="not numeric"):
        metric_against_figure(values, "model", "auroc", "test")
    with pytest.raises(ValueError, match="no val auroc"):
        metric_against_figure(values, "data.correlation", "auroc", "val")


def test_training_curves_average_runs_of_different_lengths_and_skip_runs_without_a_log(tmp_path):
    long = [(s, 10.0 - s, 11.0 - s if s % 2 else None) for s in range(10)]
    short = [(s, train + 0.5, val) for s, train, val in long[:4]]  # stopped early
    runs = pd.DataFrame({
        "run": [str(write_run(tmp_path / "a0", losses=long)), str(write_run(tmp_path / "a1", losses=short)),
                str(write_run(tmp_path / "b0", losses=long, evaluated_after_fit=False)),
                str(write_run(tmp_path / "b1"))],  # no CSV log
        "group": ["model=mmoe", "model=mmoe", "model=cgc", "model=cgc"],
    })
    curves = read_loss_curves(runs["run"][0])
    assert curves[curves["curve"] == "train"]["epoch"].tolist() == list(range(10))
    assert curves[curves["curve"] == "train"]["value"].tolist() == [10.0 - s for s in range(10)]
    # The best checkpoint's validation after fit (99.0) is not a point of the curve.
    assert curves[curves["curve"] == "val"]["value"].tolist() == [10.0, 8.0, 6.0, 4.0, 2.0]
    assert read_loss_curves(runs["run"][3]) is None
    table = loss_curves(runs).set_index(["group", "curve", "epoch"])
    # MMoE's short run stopped after epoch 3: later epochs are the long run's alone.
    assert table.loc[("model=mmoe", "train", 2), "n"] == 2 and table.loc[("model=mmoe", "train", 2), "half"] > 0
    assert table.loc[("model=mmoe", "train", 9), "n"] == 1 and table.loc[("model=mmoe", "train", 9), "half"] == 0
    assert table.loc[("model=cgc", "val", 9), "n"] == 1  # the run without a log is not counted
    stem = tmp_path / "figures" / "training_curves"
    assert_figures(save_figure(training_curves_figure(runs), stem), stem)
    with pytest.raises(ValueError, match="no run has a csv"):
        training_curves_figure(runs.iloc[3:])


def test_final_distribution_over_200_seeds(tmp_path):
    values = make_values(models=("mmoe", "omoe", "shared_bottom"), correlations=(0.5,), seeds=range(200),
                         metrics=("auroc",))
    stem = tmp_path / "auroc_distribution"
    assert_figures(save_figure(final_distribution_figure(values, "auroc", "test"), stem), stem)


def test_gate_figures_align_gates_of_different_widths_on_expert_names(tmp_path):
    stem = tmp_path / "gates"
    assert_figures(save_figure(gate_heatmap_figure(CGC_GATES, CGC_EXPERTS), stem), stem)
    hist = {gate: [[5 * (b == e + 2) + 1 for b in range(HIST_BINS)] for e in range(len(names))]
            for gate, names in CGC_EXPERTS.items()}
    hist["cvr"][0] = [0] * HIST_BINS  # an expert no row reached: drawn as nothing
    stem = tmp_path / "gate_distribution"
    assert_figures(save_figure(gate_distribution_figure(hist, CGC_EXPERTS), stem), stem)
    stem = tmp_path / "unnamed"  # without names the columns are expert indices
    assert_figures(save_figure(gate_distribution_figure({"task1": hist["ctr"]}, None), stem), stem)
    # The run-folder heatmap train.py draws: one PNG at the given path.
    path = plot_gates(CGC_GATES, tmp_path / "figures" / "gates.png", experts=CGC_EXPERTS)
    assert path == tmp_path / "figures" / "gates.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in path.parent.iterdir()) == ["gates.png"]


def test_pareto_scatter_over_groups(tmp_path):
    values = make_values()
    stem = tmp_path / "pareto_logloss"
    assert_figures(save_figure(pareto_figure(values, "ctr", "cvr", "logloss", "test"), stem), stem)
    # Groups trained on other data do not compete: per correlation, MMoE is on the front (it beats
    # shared-bottom at both), though MMoE at 0.9 beats MMoE at 0.5 on both tasks.
    table = pareto_table(values, "ctr", "cvr", "auroc", "test", panel_by=["data.correlation"])
    assert sorted(table.loc[table["front"], "group"]) == ["model=mmoe data.correlation=0.5",
                                                           "model=mmoe data.correlation=0.9"]
    assert set(table["panel"]) == {"data.correlation=0.5", "data.correlation=0.9"}
    pooled = pareto_table(values, "ctr", "cvr", "auroc", "test")
    assert list(pooled.loc[pooled["front"], "group"]) == ["model=mmoe data.correlation=0.9"]
    stem = tmp_path / "pareto_auroc"
    assert_figures(save_figure(pareto_figure(values, "ctr", "cvr", "auroc", "test", panel_by=["data.correlation"]),
                               stem), stem)
    with pytest.raises(ValueError, match="no known direction"):
        pareto_figure(values.assign(metric="made_up", direction=None), "ctr", "cvr", "made_up", "test")
    biased = values[values["metric"] == "auroc"].assign(metric="pcvr_bias", direction=ZERO,
                                                        value=lambda v: v["value"] - 0.75)
    assert "nearer 0 is better" in pareto_figure(biased, "ctr", "cvr", "pcvr_bias", "test").get_suptitle()
    with pytest.raises(ValueError, match="both ctr and ctcvr"):
        pareto_figure(values, "ctr", "ctcvr", "auroc", "test")


# --- what the figures show: read from their artists ---------------------------------------------------------

WEIGHTINGS = ("equal", "static", "uncertainty", "dwa", "rlw", "gradnorm", "pcgrad", "mgda", "cagrad", "imtl",
              "aligned_mtl", "nash_mtl", "graddrop", "aitm", "trace_norm")  # 15: more than tab10's colours


def curve_runs(tmp_path: Path, groups, epochs: int) -> pd.DataFrame:
    """One run per group with ``epochs`` epochs of train and val losses, each group's a little higher."""
    runs = [str(write_run(tmp_path / name, losses=[(e, 1.0 + 0.1 * i - 0.01 * e, 0.9 + 0.1 * i) for e in range(epochs)]))
            for i, name in enumerate(groups)]
    return pd.DataFrame({"run": runs, "group": [f"weighting={name}" for name in groups], "status": "ok"})


def legend_styles(legend) -> dict[str, tuple]:
    """A legend's entries: label -> (RGBA colour, marker)."""
    return {text.get_text(): (to_rgba(handle.get_color()), handle.get_marker())
            for text, handle in zip(legend.get_texts(), legend.legend_handles)}


def placement(fig, ax) -> tuple:
    """The window extents of ``ax``, its legend and ``fig``, after laying the figure out."""
    fig.draw_without_rendering()
    return ax.get_window_extent(), ax.get_legend().get_window_extent(), fig.bbox


def drawn_lines(ax) -> list:
    return [line for line in ax.get_lines() if len(line.get_xdata())]


def test_training_curves_of_one_epoch_are_points_on_an_epoch_tick_named_by_their_keys(tmp_path):
    fig = training_curves_figure(curve_runs(tmp_path, ("equal", "uncertainty"), epochs=1))
    ax = fig.axes[0]
    lines = drawn_lines(ax)
    assert len(lines) == 4  # train and val of two groups
    assert all(line.get_marker() not in ("None", "", None) for line in lines)  # a single point shows
    low, high = ax.get_xlim()
    assert low <= -0.5 and high >= 0.5  # not +-0.04 around the epoch
    assert [t for t in ax.get_xticks() if low <= t <= high] == [0]
    assert "train/loss_epoch" in ax.get_ylabel() and "val/loss" in ax.get_ylabel()
    axes, legend, _ = placement(fig, ax)
    assert axes.contains(legend.x0, legend.y0) and axes.contains(legend.x1, legend.y1)  # 4 entries fit inside


def test_fifteen_groups_keep_distinct_styles_across_figures_and_the_legend_beside_the_axes(tmp_path):
    fig = training_curves_figure(curve_runs(tmp_path, WEIGHTINGS, epochs=3))
    ax = fig.axes[0]
    assert len({to_rgba(line.get_color()) for line in drawn_lines(ax)}) == 15
    low, high = ax.get_xlim()
    assert [t for t in ax.get_xticks() if low <= t <= high] == [0, 1, 2]
    curves = legend_styles(ax.get_legend())
    assert len(curves) == 15 + 2  # a group per entry, and which key each line style is
    axes, legend, figure = placement(fig, ax)
    assert legend.x0 >= axes.x1 and legend.x1 <= figure.x1  # right of the data, on the canvas
    assert axes.width / fig.dpi > 3.5  # the figure widened for the legend: the plot kept its width (5-inch panel)

    values = make_values(models=WEIGHTINGS, correlations=(0.5,), seeds=range(2)).drop(columns="data.correlation")
    values["group"] = "weighting=" + values["model"]
    fig = pareto_figure(values, "ctr", "cvr", "auroc", "test")
    ax = fig.axes[0]
    assert len({to_rgba(c.lines[0].get_color()) for c in ax.containers}) == 15
    points = legend_styles(ax.get_legend())
    groups = {label: style for label, style in points.items() if label.startswith("weighting=")}
    assert groups == {label: style for label, style in curves.items() if label.startswith("weighting=")}
    assert groups["weighting=aitm"][0] != groups["weighting=trace_norm"][0]  # the shared blue
    axes, legend, figure = placement(fig, ax)
    assert legend.x0 >= axes.x1 and legend.x1 <= figure.x1


@pytest.mark.parametrize("n", [3, 10, 11, 20, 21, 40])
def test_styles_give_every_name_its_own_colour_whatever_the_order(n):
    names = [f"g{i}" for i in range(n)]
    named = styles(names)
    assert len({to_rgba(s["color"]) for s in named.values()}) == n
    assert named == styles(reversed(names))


def pareto_values(points: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """One run per group, with its (ctr, cvr) auroc."""
    return pd.DataFrame([{"run": g, "group": g, "seed": 0, "split": "test", "task": task, "metric": "auroc",
                          "direction": MAX, "value": value}
                         for g, pair in points.items() for task, value in zip(("ctr", "cvr"), pair)])


def test_pareto_legend_names_the_front_line_only_where_one_is_drawn():
    fig = pareto_figure(pareto_values({"a": (0.8, 0.8), "b": (0.6, 0.7)}), "ctr", "cvr", "auroc", "test")
    ax = fig.axes[0]
    assert not [line for line in drawn_lines(ax) if line.get_linestyle() == "--"]  # a one-group front
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Pareto front" not in labels and "on the Pareto front" in labels
    ringed = {c.lines[0].get_xdata()[0]: to_rgba(c.lines[0].get_markeredgecolor()) for c in ax.containers}
    assert ringed[0.8] == to_rgba("black") and ringed[0.6] != to_rgba("black")

    fig = pareto_figure(pareto_values({"a": (0.8, 0.6), "b": (0.6, 0.8), "c": (0.5, 0.5)}), "ctr", "cvr", "auroc",
                        "test")
    ax = fig.axes[0]
    (front,) = [line for line in drawn_lines(ax) if line.get_linestyle() == "--"]
    assert sorted(front.get_xdata()) == [0.6, 0.8]
    assert "Pareto front" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_gate_distribution_legend_explains_the_white_markers():
    hist = {gate: [[1 + (b == e) for b in range(HIST_BINS)] for e in range(len(names))]
            for gate, names in CGC_EXPERTS.items()}
    fig = gate_distribution_figure(hist, CGC_EXPERTS, title="cgc: per-row gate weight per expert (val)")
    marks = [line for ax in fig.axes for line in drawn_lines(ax)]
    assert marks and {to_rgba(m.get_markerfacecolor()) for m in marks} == {to_rgba("white")}
    entries = {t.get_text(): h for t, h in zip(fig.axes[0].get_legend().get_texts(),
                                               fig.axes[0].get_legend().legend_handles)}
    assert to_rgba(entries["mean weight over rows"].get_markerfacecolor()) == to_rgba("white")


# --- a study's figures ---------------------------------------------------------------------------------------


def make_study(tmp_path: Path, models=("cgc",), correlations=(0.5, 0.9), seeds=range(5)):
    """A study's ``runs`` and ``values`` frames over run folders with gates (CGC's of different widths) and CSV
    logs; one run failed."""
    values = make_values(models=models, correlations=correlations, seeds=seeds)
    runs = values.drop_duplicates("run")[["run", "group", "seed", "model", "data.correlation"]].copy()
    runs["run"] = [str(tmp_path / r) for r in runs["run"]]
    values["run"] = [str(tmp_path / r) for r in values["run"]]
    runs["status"] = "ok"
    for i, (run, model) in enumerate(zip(runs["run"], runs["model"])):
        experts = CGC_EXPERTS if model == "cgc" else {t: [f"expert_{e}" for e in range(3)] for t in ("ctr", "cvr")}
        gates = {g: [1 / len(names)] * len(names) for g, names in experts.items()}
        hist = {g: [[1] * HIST_BINS for _ in names] for g, names in experts.items()}
        losses = [(s, 5.0 - 0.1 * s, 5.0 - 0.1 * s) for s in range(6 + i % 3)]  # of different lengths
        write_run(Path(run), {"gates": gates, "gate_experts": experts, "gate_hist": hist}, losses)
    runs.iloc[0, runs.columns.get_loc("status")] = "failed"
    return runs, values


@pytest.fixture
def png_only(monkeypatch):
    """PNG only: the formats are checked figure by figure above, and a study draws many figures."""
    monkeypatch.setattr(artefacts, "FORMATS", ("png",))


def test_study_figures_draw_what_the_design_calls_for(tmp_path, png_only):
    runs, values = make_study(tmp_path)
    out = tmp_path / "figures"
    written = study_figures(runs, values, ["model", "data.correlation", "seed"], out)
    names = {str(p.relative_to(out).with_suffix("")) for p in written}
    groups = ["model=cgc_data.correlation=0.5", "model=cgc_data.correlation=0.9"]
    assert names == {
        "auroc_vs_data.correlation", "norm_loss_vs_data.correlation",  # a numeric key: the headline and norm_loss
        "training_curves",  # CSV logs
        "auroc_distribution", "norm_loss_distribution",  # five seeds per group
        *(f"gates/{g}_weights" for g in groups), *(f"gates/{g}_weight_distribution" for g in groups),
        "pareto_auroc",  # two tasks, several groups
    }
    assert len(written) == len(names) and all(p.read_bytes()[:4] == b"\x89PNG" for p in written)


def test_study_figures_without_a_numeric_key_many_seeds_gates_or_two_tasks(tmp_path):
    values = make_values(correlations=(0.5,), seeds=range(2), tasks=("income",), metrics=("auroc",))
    values = values.drop(columns="data.correlation").assign(group=lambda v: "model=" + v["model"])
    runs = values.drop_duplicates("run")[["run", "group", "seed", "model"]].assign(status="ok")
    assert study_figures(runs, values, ["model", "seed"], tmp_path) == []


def test_a_figure_the_data_cannot_give_is_skipped_with_a_warning(tmp_path, caplog, png_only):
    values = make_values(correlations=(0.5,), seeds=range(2), metrics=("made_up",))  # no direction: no Pareto front
    values["group"] = "model=" + values["model"]
    runs = values.drop_duplicates("run")[["run", "group", "seed", "model"]].assign(status="ok")
    runs["run"] = [str(write_run(tmp_path / r, losses=None)) for r in runs["run"]]
    (Path(runs["run"].iloc[0]) / "metrics.json").write_text(json.dumps({"status": "ok", "gates": {"ctr": "broken"}}))
    with caplog.at_level(logging.WARNING, logger="mtlexp.report.figures"):
        written = study_figures(runs, values, ["model", "seed"], tmp_path / "figures")
    assert written == []
    assert "figure pareto skipped" in caplog.text and "made_up has no known direction" in caplog.text
    assert "figure gates of model=mmoe skipped" in caplog.text
