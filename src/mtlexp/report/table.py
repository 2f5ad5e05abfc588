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
