"""Plain-text tables for the end of a run and of a sweep."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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


def summary_table(metrics: dict[str, Any], tasks: Sequence[Any]) -> str:
    """Per task and metric: the best checkpoint's validation and test values."""
    rows = []
    for task in tasks:
        name = getattr(task, "name", task)
        for metric, value in metrics.get("val", {}).get(name, {}).items():
            rows.append([name, metric, value, metrics.get("test", {}).get(name, {}).get(metric)])
    title = (
        f"{metrics.get('model', '')}  seed={metrics.get('seed')}  best_epoch={metrics.get('best_epoch')}  "
        f"params={metrics.get('num_params')}"
    )
    return title + "\n" + format_table(["task", "metric", "val", "test"], rows)
