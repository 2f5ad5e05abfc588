"""How much task gradients conflict on the shared parameters: their pairwise cosine similarities."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mtlexp.weighting.gradients import task_jacobian


def task_gradient_cosines(losses: Tensor, shared: Sequence[nn.Parameter]) -> Tensor:
    """``(T, T)`` cosine similarities between the task losses' gradients on ``shared``."""
    jacobian = task_jacobian(losses, shared)
    unit = jacobian / jacobian.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


def cosine_pairs(names: Sequence[str]) -> list[tuple[int, int, str]]:
    """The task pairs of the upper triangle, with the key they are logged under (``task1-task2``)."""
    return [(i, j, f"{names[i]}-{names[j]}") for i in range(len(names)) for j in range(i + 1, len(names))]


def loss_scale_warning(losses: Tensor, names: Sequence[str], limit: float = 100.0) -> str | None:
    """A one-line warning when the task losses differ in scale by more than ``limit`` times, else ``None``.

    A regression label in its own units (an age, MSE ~80) next to a binary task (BCE ~0.1) makes a summed
    loss, and the shared parameters' update, almost entirely the large task's.
    """
    values = [float(v) for v in losses.detach().float()]
    positive = [v for v in values if v > 0]
    if len(positive) < 2 or max(positive) <= limit * min(positive):
        return None
    detail = ", ".join(f"{name} {value:.3g}" for name, value in zip(names, values))
    return (f"task losses differ in scale by {max(positive) / min(positive):.0f}x at the first step ({detail}): the "
            "largest dominates a summed loss; set standardize: true on a regression task, or balance the tasks "
            "(weighting=uncertainty, gradnorm, ...; docs/weighting.md)")
