"""Smooth Tchebycheff scalarization (Lin et al., ICML 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlexp.errors import require
from mtlexp.specs import TaskSpec
from mtlexp.weighting.base import LossScalarization, StepInputs


class SmoothTchebycheff(LossScalarization):
    """``T mu logsumexp_t(log(L_t / z_t) / mu)``: a smooth maximum of the losses relative to a reference.

    As ``mu -> 0`` it tends to the worst task's log-loss (Tchebycheff scalarization: only the worst task
    moves); a large ``mu`` tends to the mean of the log-losses. The reference ``z`` is the mean training loss
    over the last warm-up epoch; during the warm-up the model follows the sum of the log-losses.

    :param mu: the smoothing, > 0 (1.0 in the paper's MTL experiments).
    :param warmup_epochs: epochs of warm-up (0: no reference, ``z = 1``, from the first step).
    """

    def __init__(self, tasks: Sequence[TaskSpec], mu: float = 1.0, warmup_epochs: int = 4, seed: int = 0) -> None:
        super().__init__(tasks, seed)
        require(mu > 0, "mu", "a number > 0", mu)
        require(isinstance(warmup_epochs, int) and warmup_epochs >= 0, "warmup_epochs", "an integer >= 0",
                warmup_epochs)
        self.mu = float(mu)
        self.warmup_epochs = warmup_epochs
        self.register_buffer("reference", torch.ones(self.num_tasks))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))

    def scalarize(self, losses: Tensor, inputs: StepInputs) -> Tensor:
        logs = (losses / self.reference).clamp_min(1e-20).log()
        if int(self.epochs_seen) < self.warmup_epochs:
            return logs.sum()
        return self.num_tasks * self.mu * torch.logsumexp(logs / self.mu, dim=0)

    def on_train_epoch_end(self, mean_losses: Tensor) -> None:
        self.epochs_seen += 1
        if int(self.epochs_seen) == self.warmup_epochs:
            self.reference.copy_(mean_losses.detach().clamp_min(1e-12).to(self.reference))
