"""What gates did on an evaluation split: mean weight per expert, and how many experts rows used.

Per gate the running statistics are one float64 vector of 2E + 2 values: summed weights (E), summed count of
experts with non-zero weight per row, the largest such count, and per expert whether any row used it (E).
The first E + 1 add up across batches and ranks, the last E + 1 merge by max. ``summary`` packs every gate
and the row count into one vector, so one gather syncs them under DDP; the gates to report come from the
model (``MTLModel.gate_experts``), not from the data, so a rank that saw no rows gathers the same shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class GateStatistics:
    def __init__(self) -> None:
        self.stats: dict[str, Tensor] = {}
        self.rows = 0

    def update(self, gates: dict[str, Tensor], rows: int) -> None:
        """Add one batch: ``gates[name]`` is (B, E)."""
        for name, weights in gates.items():
            weights = weights.detach().double()
            used = weights > 0
            active = used.sum(-1).double()  # (B,)
            stats = torch.cat([weights.sum(0), active.sum().view(1), active.max().view(1), used.any(0).double()])
            old = self.stats.get(name)
            if old is None:
                self.stats[name] = stats
            else:
                e = weights.shape[-1]
                old[: e + 1] += stats[: e + 1]
                old[e + 1 :] = torch.maximum(old[e + 1 :], stats[e + 1 :])
        self.rows += rows

    def summary(
        self, widths: dict[str, int], gather: Callable[[Tensor], Tensor], device: torch.device
    ) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
        """Mean weight per expert, and ``{per_row_mean, per_row_max, used}`` per gate, over all ranks."""
        packed = [torch.tensor([float(self.rows)], dtype=torch.float64, device=device)]
        for name, e in widths.items():
            packed.append(self.stats.get(name, torch.zeros(2 * e + 2, dtype=torch.float64, device=device)))
        size = sum(p.numel() for p in packed)
        gathered = gather(torch.cat(packed)).reshape(-1, size)  # (ranks, size)
        rows = gathered[:, 0].sum().clamp_min(1)
        means, active, at = {}, {}, 1
        for name, e in widths.items():
            stats = gathered[:, at : at + 2 * e + 2]
            at += 2 * e + 2
            means[name] = stats[:, :e].sum(0) / rows
            active[name] = {
                "per_row_mean": round(float(stats[:, e].sum() / rows), 4),
                "per_row_max": int(stats[:, e + 1].max()),
                "used": int(stats[:, e + 2 :].max(0).values.sum()),
            }
        return means, active
