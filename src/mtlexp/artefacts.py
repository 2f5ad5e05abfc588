"""What a run leaves besides its numbers: the summary table it logs and the gate figure in its run folder.

Kept out of ``mtlexp.report`` because every training run writes them, and the report's statistics need scipy
and pandas, which a run should not pay for. ``mtlexp report`` draws its own figures with the same helpers.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtlexp.io import write_atomic

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not by every run that imports this
    from matplotlib.figure import Figure

FORMATS = ("png", "pdf")  # every figure is written in each


# --- tables ------------------------------------------------------------------------------------------------


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers with 4 decimals."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def summary_table(metrics: dict[str, Any], tasks: Sequence[Any], splits: Sequence[str] = ("val", "test")) -> str:
    """Per task and metric, one column per split (by default: the best checkpoint's val and test values)."""
    rows = []
    for task in tasks:
        name = getattr(task, "name", task)
        for metric in metrics.get(splits[0], {}).get(name, {}):
            rows.append([name, metric, *(metrics.get(s, {}).get(name, {}).get(metric) for s in splits)])
    title = f"{metrics.get('model', '')}  seed={metrics.get('seed')}  params={metrics.get('num_params')}"
    if metrics.get("best_epoch") is not None:
        title += f"  best_epoch={metrics['best_epoch']}"
    return title + "\n" + format_table(["task", "metric", *splits], rows)


# --- figures -----------------------------------------------------------------------------------------------


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.8, **kwargs: Any
            ) -> tuple[Figure, np.ndarray]:
    """A figure with a grid of axes (always a 2-D array), sized per panel."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def save_figure(fig: Figure, out: str | Path, formats: Sequence[str] | None = None) -> list[Path]:
    """Write ``fig`` as ``<out>.<format>`` for each format (default ``FORMATS``), each through a temporary file
    and a rename."""
    out = Path(out)
    paths = []
    for fmt in FORMATS if formats is None else formats:
        buffer = io.BytesIO()
        # Without a creation date the PDF is the same bytes for the same figure. bbox_inches="tight" grows the
        # saved area to whatever was drawn outside the canvas (a legend taller than the figure), not clipping it.
        fig.savefig(buffer, format=fmt, dpi=120, bbox_inches="tight",
                    metadata={"CreationDate": None} if fmt == "pdf" else None)
        path = out.parent / f"{out.name}.{fmt}"
        write_atomic(path, buffer.getvalue())
        paths.append(path)
    return paths


def expert_names(gates: dict[str, Any], experts: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """The experts behind each gate's weights (``MTLModel.gate_experts``); expert indices without names."""
    return {g: (experts or {}).get(g) or [f"expert_{e}" for e in range(len(w))] for g, w in gates.items()}


def expert_columns(names: dict[str, list[str]]) -> list[str]:
    """Every expert once, in the order of the widest gate first: a PLE shared gate lists its level in order."""
    widest_first = sorted(names, key=lambda g: -len(names[g]))
    return list(dict.fromkeys(e for g in widest_first for e in names[g]))


def short_expert(expert: str) -> str:
    return expert.replace("expert_", "")


def gate_heatmap_figure(gates: dict[str, list[float]], experts: dict[str, list[str]] | None,
                        title: str = "") -> Figure:
    """The mean weight each gate (row, a task) gives each expert (column). ``experts`` names the experts behind
    each gate's weights (``MTLModel.gate_experts``); gates are aligned on those names, so CGC/PLE's gates of
    different widths share the columns of the experts they share, and an expert a gate cannot reach is left
    blank. Without names, columns are expert indices."""
    names = expert_names(gates, experts)
    columns = expert_columns(names)
    grid = np.full((len(gates), len(columns)), np.nan)
    for row, (gate, weights) in enumerate(gates.items()):
        for name, weight in zip(names[gate], weights):
            grid[row, columns.index(name)] = weight
    fig, axes = new_figure(width=max(4.0, 0.55 * len(columns) + 2.5), height=0.45 * len(gates) + 1.8)
    ax = axes[0, 0]
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, aspect="auto")
    for (row, col), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 * np.nanmax(grid) else "black")
    ax.set_xticks(range(len(columns)), [short_expert(c) for c in columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(gates)), list(gates), fontsize=8)
    ax.set_xlabel("expert")
    ax.set_ylabel("gate (task)")
    ax.set_title(title or "mean gate weight per expert (val)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, label="mean weight")
    return fig


def plot_gates(
    gates: dict[str, list[float]], path: str | Path, title: str = "", experts: dict[str, list[str]] | None = None
) -> Path:
    """``gate_heatmap_figure`` as one PNG at ``path``: the figure train.py leaves in a run folder."""
    path = Path(path)
    (written,) = save_figure(gate_heatmap_figure(gates, experts, title), path.parent / path.stem, formats=("png",))
    return written
