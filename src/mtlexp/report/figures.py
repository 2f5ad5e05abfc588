"""Figures drawn from the contents of a run folder (no training code)."""

from __future__ import annotations

import io
from pathlib import Path

from mtlexp.io import write_atomic


def plot_gates(gates: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """Grouped bars: the mean weight each task's gate gives each expert (one group per expert)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(gates)
    num_experts = len(next(iter(gates.values())))
    width = 0.8 / max(1, len(tasks))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * num_experts + 2), 3.2))
    for i, task in enumerate(tasks):
        positions = [e + (i - (len(tasks) - 1) / 2) * width for e in range(num_experts)]
        ax.bar(positions, gates[task], width=width, label=task)
    ax.axhline(1 / num_experts, color="grey", linestyle=":", linewidth=1, label="uniform")
    ax.set_xticks(range(num_experts))
    ax.set_xlabel("expert")
    ax.set_ylabel("mean gate weight (val)")
    ax.set_title(title or "gate distribution per task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path = Path(path)
    write_atomic(path, buffer.getvalue())
    return path
