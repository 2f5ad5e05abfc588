"""The weighting contract.

Losses stay per task (``{task: scalar}``) until a weighting combines them. A loss-based method (equal,
uncertainty, DWA) is an ``nn.Module`` whose ``forward`` returns the scalar to back-propagate; its own
parameters, if any, are optimised with the model's. A gradient-based method (PCGrad, MGDA, ...) will set
``needs_task_gradients = True`` and implement ``backward(losses, shared_parameters)``, writing the
aggregated gradient into ``.grad`` itself; the Lightning module already drives the backward pass by hand
(manual optimisation), so such methods plug in without touching it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


class Weighting(nn.Module):
    """Base class: combines per-task losses into the loss that is back-propagated."""

    needs_task_gradients = False

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def backward(
        self,
        losses: dict[str, Tensor],
        shared_parameters: Sequence[nn.Parameter],
        backward: Callable[[Tensor], None] = Tensor.backward,
        extra: Tensor | None = None,
    ) -> Tensor:
        """Back-propagate the combined loss (plus ``extra``, a model's auxiliary loss) and return it.

        ``backward`` is how to back-propagate (Lightning's ``manual_backward`` under mixed precision).
        Gradient-based methods override this to write aggregated gradients on ``shared_parameters``.
        """
        loss = self(losses)
        if extra is not None:
            loss = loss + extra
        backward(loss)
        return loss


def stack_losses(losses: dict[str, Tensor]) -> Tensor:
    return torch.stack(list(losses.values()))
