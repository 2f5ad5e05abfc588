"""Random loss weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

from torch import Tensor

from mtlexp.weighting.base import LossWeighting, StepInputs


class RandomLossWeighting(LossWeighting):
    """Fresh weights every step: ``softmax`` of a standard normal draw, so they sum to 1.

    Draws come from a generator seeded by (run seed, step): a resumed run draws what the uninterrupted one
    would have, and every DDP rank draws the same weights.
    """

    # Stacked, each replica draws from its own seed: the draws of its single run.
    stack_refusal = None

    def weights(self, inputs: StepInputs) -> Tensor:
        return self.random_weights(inputs.step).to(inputs.losses)
