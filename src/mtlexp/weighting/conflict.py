"""How much task gradients conflict on the shared parameters: their pairwise cosine similarities."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def task_gradient_cosines(losses: Tensor, shared: Sequence[nn.Parameter]) -> Tensor:
    """``(T, T)`` cosine similarities between the task losses' gradients on ``shared``.

    One vectorised backward pass (``is_grads_batched``); the graph is kept for the step's own backward.
    """
    eye = torch.eye(losses.numel(), dtype=losses.dtype, device=losses.device)
    grads = torch.autograd.grad(losses, list(shared), grad_outputs=eye, retain_graph=True, allow_unused=True,
                                is_grads_batched=True)
    flat = torch.cat([g.flatten(1) for g in grads if g is not None], dim=1).float()
    unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


def cosine_pairs(names: Sequence[str]) -> list[tuple[int, int, str]]:
    """The task pairs of the upper triangle, with the key they are logged under (``task1-task2``)."""
    return [(i, j, f"{names[i]}-{names[j]}") for i in range(len(names)) for j in range(i + 1, len(names))]
