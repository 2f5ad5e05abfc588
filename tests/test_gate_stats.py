"""Gate statistics: known weights in, known means and active counts out; ranks merge as one split."""

import torch

from mtlexp.gate_stats import GateStatistics


def test_means_and_active_counts_over_batches_and_ranks():
    first = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    second = torch.tensor([[0.2, 0.3, 0.5]])
    one = GateStatistics()
    one.update({"t": first}, rows=2)
    one.update({"t": second}, rows=1)
    means, active, _ = one.report({"t": 3}, lambda v: v, torch.device("cpu"))
    torch.testing.assert_close(means["t"], torch.tensor([1.7, 0.8, 0.5], dtype=torch.float64) / 3)
    assert active["t"] == {"per_row_mean": 2.0, "per_row_max": 3, "used": 3}

    # Two ranks, one of which saw no rows: gathered, they give the same figures as one rank that saw all.
    rank0, rank1 = GateStatistics(), GateStatistics()
    rank0.update({"t": torch.cat([first, second])}, rows=3)
    vectors = []
    for stats in (rank0, rank1):
        stats.report({"t": 3}, lambda v: vectors.append(v) or v, torch.device("cpu"))
    gathered = torch.stack(vectors)
    means2, active2, _ = rank0.report({"t": 3}, lambda v: gathered, torch.device("cpu"))
    torch.testing.assert_close(means2["t"], means["t"])
    assert active2 == active
