"""Figures drawn from the contents of a run folder (no training code)."""

from __future__ import annotations

import io
from pathlib import Path

from mtlexp.io import write_atomic


def plot_gates(
    gates: dict[str, list[float]], path: str | Path, title: str = "", experts: dict[str, list[str]] | None = None
) -> Path:
    """A heatmap of the mean weight each gate (row) gives each expert (column).

    ``experts`` names the experts behind each gate's weights (``MTLModel.gate_experts``); gates are aligned
    on those names, so CGC/PLE's gates of different widths share the columns of the experts they share, and
    an expert a gate cannot reach is left blank. Without names, columns are expert indices.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = {g: (experts or {}).get(g) or [f"expert_{e}" for e in range(len(w))] for g, w in gates.items()}
    widest_first = sorted(gates, key=lambda g: -len(names[g]))  # a PLE shared gate lists its level in order
    columns = list(dict.fromkeys(e for g in widest_first for e in names[g]))
    grid = np.full((len(gates), len(columns)), np.nan)
    for row, (gate, weights) in enumerate(gates.items()):
        for name, weight in zip(names[gate], weights):
            grid[row, columns.index(name)] = weight
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(columns) + 2.5), 0.45 * len(gates) + 1.8))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, aspect="auto")
    for (row, col), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 * np.nanmax(grid) else "black")
    ax.set_xticks(range(len(columns)), [c.replace("expert_", "") for c in columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(gates)), list(gates), fontsize=8)
    ax.set_xlabel("expert")
    ax.set_title(title or "mean gate weight per expert (val)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, label="mean weight")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path = Path(path)
    write_atomic(path, buffer.getvalue())
    return path
