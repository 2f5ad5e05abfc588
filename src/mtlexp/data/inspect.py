"""``mtlexp data inspect``: a readable report of what a data module hands to the model."""

from __future__ import annotations

import torch

from mtlexp.data.base import SPLITS, MTLDataModule
from mtlexp.kinds import kind_of, observed_rows
from mtlexp.specs import TaskSpec


def _observed(task: TaskSpec, labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """A task's labels on the rows where they are observed (``observed_if``)."""
    observed = observed_rows(task, labels)
    return labels[task.name] if observed is None else labels[task.name][observed]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def inspect_report(dm: MTLDataModule) -> str:
    """The report for a data module after ``setup()``: sizes, features, label rates, correlation, leaks."""
    lines = [f"data: {type(dm).__name__}"]
    summary = dm.describe()
    streamed = bool(summary.get("streaming"))  # no tensors in memory: the fitting pass's counts instead
    lines.append("rows: " + " | ".join(f"{split} {summary['rows'][split]:,}" for split in SPLITS)
                 + (" (streamed)" if streamed else ""))

    features = dm.features
    embedding = sum(c.embedding_dim for c in features.categorical)
    lines.append(
        f"features: {features.num_numeric} numeric + {len(features.categorical)} categorical "
        f"(embeddings {embedding} wide) = input width {features.input_dim}"
    )
    if features.categorical:
        cardinalities = sorted(features.categorical, key=lambda c: -c.cardinality)
        shown = ", ".join(f"{c.name} {c.cardinality}" for c in cardinalities[:5])
        lines.append(f"  largest vocabularies (incl. index 0 = unseen/missing): {shown}")
    weight = None if streamed else dm.splits["train"].weight
    if weight is not None:
        lines.append(f"  sample weight: mean {float(weight.double().mean()):.4g} (train)")

    if streamed:
        lines.append("labels (train): " + ", ".join(f"{name} mean {mean:.4g}"
                                                    for name, mean in summary["label_mean"].items()))
        lines += [f"label correlation (train, Pearson): {pair} r = {r:+.4f}"
                  for pair, r in summary.get("label_pearson", {}).items()]
        return "\n".join(lines)
    lines.append("labels:")
    rows = [["task", "kind", *SPLITS]]
    for task in dm.tasks:
        rows.append(
            [task.name, task.kind]
            + [kind_of(task).describe_labels(task, _observed(task, dm.splits[s].labels)) for s in SPLITS]
        )
    lines += _table(rows)

    correlated = [t for t in dm.tasks if kind_of(t).quantitative]
    if len(correlated) >= 2:
        lines.append("label correlation (train, Pearson):")
        train = dm.splits["train"].labels
        matrix = torch.corrcoef(torch.stack([train[t.name].double() for t in correlated]))
        for i, a in enumerate(correlated):
            for j, b in enumerate(correlated[i + 1 :], start=i + 1):
                r = float(matrix[i, j])
                lines.append(f"  {a.name} ~ {b.name}: r = {r:+.4f}  |r| = {abs(r):.4f}")

    leaks = summary.get("leaks")
    if leaks is not None:
        lines.append("leaks (one feature alone, train split; categorical: two-fold category means):")
        for leak in leaks:
            status = "known" if leak["known"] else "WARNING: not a known leak"
            lines.append(f"  {leak['feature']} -> {leak['task']}: {leak['metric']} {leak['score']:.4f} ({status})")
        if not any(not leak["known"] for leak in leaks):
            other = " other" if leaks else ""
            lines.append(f"  no{other} feature reaches {getattr(dm, 'leak_auc_threshold', 'the threshold')}")
        for name in summary.get("dropped", []):
            lines.append(f"  dropped column: {name}")
        for name in summary.get("excluded_as_labels", []):
            lines.append(f"  excluded from the features (a label): {name}")
    return "\n".join(lines)
