"""The torchjd internals mtlexp relies on, in one place.

A stateful aggregator (GradVac's similarity targets, Nash-MTL's last solution, ExcessMTL's and PCD's running
statistics) keeps its state where torchjd chose to: plain attributes, and buffers it registers as None and
fills on its first step. torchjd offers no way to save and restore that state, and a resumed run must continue
from it, so mtlexp reads and writes those places itself. torchjd is pinned exactly (pyproject.toml), and
``tests/test_torchjd_compat.py`` runs each function on real aggregators, so an upgrade that moves any of it
fails there, loudly, rather than as a resumed run that silently starts its aggregator afresh.

Nothing here imports torchjd (2 s with its solvers): the functions take the aggregator as the ``nn.Module`` it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn


def aggregator_state(aggregator: nn.Module) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(submodule name, {attribute: value})`` for the aggregator and each of its submodules: every instance
    attribute as it is (torchjd's private ones included; the caller keeps those it can store) and every buffer
    that has been filled. The buffers a torchjd aggregator registers as None only hold state after a step."""
    for name, module in aggregator.named_modules():
        values = dict(vars(module))
        values.update(module.named_buffers(recurse=False, remove_duplicate=False))
        yield name, values


def restore_aggregator_state(aggregator: nn.Module, state: dict[str, dict[str, Any]]) -> None:
    """Put back, by submodule name, the values ``aggregator_state`` read (a filled buffer goes back into its
    buffer slot through ``setattr``), then rebuild what the first step would have built (``rebuild_solver``)."""
    modules = dict(aggregator.named_modules())
    for name, values in state.items():
        module = modules[name]
        for key, value in values.items():
            setattr(module, key, value)
        rebuild_solver(module)


def rebuild_solver(module: nn.Module) -> None:
    """Nash-MTL builds its cvxpy problem (``prob``) in ``_init_optim_problem`` on its first step only, when its
    ``step`` counter is 0; a module restored mid-run has a counter above 0 and no problem, and would fail on its
    next step. Any other module is left alone."""
    if getattr(module, "step", 0) and hasattr(module, "_init_optim_problem") and not hasattr(module, "prob"):
        module._init_optim_problem()
