"""What gates did on an evaluation split: mean weight per expert, how many experts rows used, and how the
weights spread over rows.

Per gate the running statistics are one float64 vector of (HIST_BINS + 2)E + 2 values for E experts: summed
weights (E), summed count of experts with non-zero weight per row, the histogram of every expert's per-row
weight (E x HIST_BINS row counts, bins of equal width on [0, 1]), then the largest count of experts a row used,
and per expert whether any row used it (E). All but the last E + 1 add up across batches and ranks; those merge
by max. ``report`` packs every gate and the row count into one vector, so one gather syncs them under DDP; the
gates to report come from the model (``MTLModel.gate_experts``), not from the data, so a rank that saw no
rows gathers the same shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

HIST_BINS = 20  # histogram bins of equal width on [0, 1]; a weight of exactly 1 counts in the last


class GateReport(NamedTuple):
    """Per gate, over all ranks: mean weight per expert (E,), ``{per_row_mean, per_row_max, used}``, and the
    (E, HIST_BINS) counts of rows whose weight for the expert fell in each bin."""

    means: dict[str, Tensor]
    active: dict[str, dict[str, Any]]
    histograms: dict[str, Tensor]


def _summed_size(e: int) -> int:
    """How many leading values of a gate's vector add up (the remaining e + 1 merge by max)."""
    return (HIST_BINS + 1) * e + 1


def _vector_size(e: int) -> int:
    return _summed_size(e) + e + 1


class GateStatistics:
    def __init__(self) -> None:
        self.stats: dict[str, Tensor] = {}
        self.rows = 0

    def update(self, gates: dict[str, Tensor], rows: int) -> None:
        """Add one batch: ``gates[name]`` is (B, E)."""
        for name, weights in gates.items():
            weights = weights.detach().double()
            e = weights.shape[-1]
            used = weights > 0
            active = used.sum(-1).double()  # (B,)
            in_bin = (weights * HIST_BINS).long().clamp(0, HIST_BINS - 1)  # (B, E)
            # One bincount over all experts: expert j's bins are offset by j * HIST_BINS.
            offsets = torch.arange(e, device=weights.device) * HIST_BINS
            histogram = torch.bincount((in_bin + offsets).flatten(), minlength=e * HIST_BINS).double()  # (E*bins,)
            stats = torch.cat([weights.sum(0), active.sum().view(1), histogram,
                               active.max().view(1), used.any(0).double()])
            old = self.stats.get(name)
            if old is None:
                self.stats[name] = stats
            else:
                summed = _summed_size(e)
                old[:summed] += stats[:summed]
                old[summed:] = torch.maximum(old[summed:], stats[summed:])
        self.rows += rows

    def report(self, widths: dict[str, int], gather: Callable[[Tensor], Tensor], device: torch.device) -> GateReport:
        """Means, active counts and weight histograms per gate, over all ranks (``gather`` stacks every rank's
        vector)."""
        packed = [torch.tensor([float(self.rows)], dtype=torch.float64, device=device)]
        for name, e in widths.items():
            packed.append(self.stats.get(name, torch.zeros(_vector_size(e), dtype=torch.float64, device=device)))
        size = sum(p.numel() for p in packed)
        gathered = gather(torch.cat(packed)).reshape(-1, size)  # (ranks, size)
        rows = gathered[:, 0].sum().clamp_min(1)
        means, active, histograms, at = {}, {}, {}, 1
        for name, e in widths.items():
            stats = gathered[:, at : at + _vector_size(e)]
            at += _vector_size(e)
            summed, merged = stats[:, : _summed_size(e)].sum(0), stats[:, _summed_size(e) :].max(0).values
            means[name] = summed[:e] / rows
            histograms[name] = summed[e + 1 :].reshape(e, HIST_BINS)
            active[name] = {
                "per_row_mean": round(float(summed[e] / rows), 4),
                "per_row_max": int(merged[0]),
                "used": int(merged[1:].sum()),
            }
        return GateReport(means, active, histograms)
