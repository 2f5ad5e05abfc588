"""Dynamic weight average (Liu, Johns and Davison, CVPR 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlexp.errors import require
from mtlexp.specs import TaskSpec
from mtlexp.weighting.base import LossWeighting, StepInputs


class DynamicWeightAverage(LossWeighting):
    """Weights from the rate at which each task's loss fell over the last two epochs.

    ``w_t = T softmax_t(r_t / temperature)`` with ``r_t = L_t(e-1) / L_t(e-2)``, the epoch-mean training
    losses; weights are 1 in the first two epochs, when there is no history yet.
    """

    # Stacked, each replica's history holds its own epoch losses.
    stack_refusal = None

    def __init__(self, tasks: Sequence[TaskSpec], temperature: float = 2.0, seed: int = 0) -> None:
        super().__init__(tasks, seed)
        require(temperature > 0, "temperature", "a number > 0", temperature)
        self.temperature = float(temperature)
        # The last two epochs' mean losses (oldest first) and how many epochs they hold; in the checkpoint.
        self.register_buffer("history", torch.zeros(2, self.num_tasks))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("current", torch.ones(self.num_tasks))

    def weights(self, inputs: StepInputs) -> Tensor:
        return self.current

    def on_train_epoch_end(self, mean_losses: Tensor) -> None:
        self.history.copy_(torch.stack([self.history[1], mean_losses.detach().to(self.history)]))
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            rates = self.history[1] / self.history[0].clamp_min(1e-12)
            self.current.copy_(self.num_tasks * torch.softmax(rates / self.temperature, dim=0))
