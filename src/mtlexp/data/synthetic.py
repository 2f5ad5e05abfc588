"""The MMoE paper's synthetic regression tasks with a controlled task correlation (Ma et al., KDD 2018, Sec. 3.2).

For tasks k = 1..K with orthonormal directions u_1..u_K in R^d:

    w_1 = c * u_1,    w_k = c * (p * u_1 + sqrt(1 - p^2) * u_k)   (k >= 2)
    y_k = w_k^T x + sum_{j=1..m} sin(alpha_j * w_k^T x + beta_j) + eps,   x ~ N(0, I_d),  eps ~ N(0, noise_std^2)

so cos(w_1, w_k) = p (the paper's knob; for K > 2 two later tasks have cosine p^2). ``correlation`` is that
cosine, not the correlation of the labels: the measured Pearson correlation of the labels is reported by
``describe()``. The paper leaves c, m and the alpha/beta distribution open; the defaults follow the PLE paper's
re-run (c = 1, m = 10, alpha, beta ~ N(0, 1)). alpha/beta are the paper's "given parameters" of the function:
they are drawn from ``data_seed`` and stay fixed across runs, while the directions, the samples and (through
the run seed) the initialisation vary with ``seed``, so that seed-to-seed variation measures the models, not a
different function each time (see docs/synthetic.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from mtlexp.data.base import MTLDataModule
from mtlexp.data.tensors import TensorTable
from mtlexp.errors import require
from mtlexp.kinds import kind_of
from mtlexp.specs import FeatureSpec
from mtlexp.tasks import kinds_that


class SyntheticDataModule(MTLDataModule):
    """Seeded, vectorised generator of the paper's task pairs (or K tasks) of controlled correlation.

    :param tasks: the ``tasks`` node; every task must be a regression task.
    :param correlation: cosine p between the task weight vectors, in [-1, 1].
    :param num_features: input dimension d.
    :param scale: c, the norm of every task weight vector.
    :param num_sinusoids: m, the number of sine terms.
    :param alpha_std: standard deviation of the sine frequencies alpha_j ~ N(0, alpha_std^2).
    :param beta_std: standard deviation of the sine phases beta_j ~ N(0, beta_std^2).
    :param noise_std: standard deviation of the label noise eps.
    :param num_train: training samples.
    :param num_val: validation samples.
    :param num_test: test samples.
    :param data_seed: seeds alpha/beta (the function's given parameters), kept apart from ``seed``.
    :param seed: the run seed: seeds the directions u_k, the samples and the training order.
    """

    def __init__(
        self,
        tasks: Mapping[str, Any],
        correlation: float = 0.5,
        num_features: int = 100,
        scale: float = 1.0,
        num_sinusoids: int = 10,
        alpha_std: float = 1.0,
        beta_std: float = 1.0,
        noise_std: float = 0.1,
        num_train: int = 20000,
        num_val: int = 5000,
        num_test: int = 5000,
        data_seed: int = 0,
        seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 8192,
        chunk_steps: int = 16,
    ) -> None:
        super().__init__(tasks, batch_size, eval_batch_size, chunk_steps, seed)
        require(-1.0 <= correlation <= 1.0, "correlation", "a cosine in [-1, 1]", correlation)
        require(num_features >= len(self.tasks), "num_features", f"at least the number of tasks ({len(self.tasks)})", num_features)
        require(scale > 0, "scale", "a positive number", scale)
        require(num_sinusoids >= 0, "num_sinusoids", "an integer >= 0", num_sinusoids)
        require(noise_std >= 0, "noise_std", "a number >= 0", noise_std)
        for name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            require(n >= 2, name, "an integer >= 2", n)
        unsimulated = [t.name for t in self.tasks if not kind_of(t).simulated]
        require(not unsimulated, "tasks", f"{kinds_that('simulated')} tasks only for synthetic data", unsimulated)
        self.correlation = float(correlation)
        self.num_features = num_features
        self.scale = scale
        self.num_sinusoids = num_sinusoids
        self.alpha_std = alpha_std
        self.beta_std = beta_std
        self.noise_std = noise_std
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.data_seed = data_seed

    def task_weights(self, generator: torch.Generator) -> torch.Tensor:
        """The (K, d) task weight vectors, from orthonormal directions drawn with ``generator``."""
        k, d, p = len(self.tasks), self.num_features, self.correlation
        directions, _ = torch.linalg.qr(torch.randn(d, k, generator=generator, dtype=torch.float64))
        u = directions.T  # (K, d), orthonormal rows
        w = torch.empty_like(u)
        w[0] = u[0]
        w[1:] = p * u[0] + math.sqrt(max(0.0, 1.0 - p * p)) * u[1:]
        return self.scale * w

    def load(self) -> tuple[dict[str, TensorTable], FeatureSpec]:
        function_rng = torch.Generator().manual_seed(self.data_seed)
        alpha = self.alpha_std * torch.randn(self.num_sinusoids, generator=function_rng, dtype=torch.float64)
        beta = self.beta_std * torch.randn(self.num_sinusoids, generator=function_rng, dtype=torch.float64)
        run_rng = torch.Generator().manual_seed(self.seed)
        w = self.task_weights(run_rng)
        splits = {}
        for split, n in self.sizes.items():
            x = torch.randn(n, self.num_features, generator=run_rng, dtype=torch.float64)
            z = x @ w.T  # (N, K)
            y = z + torch.sin(z.unsqueeze(-1) * alpha + beta).sum(-1)  # (N, K)
            y = y + self.noise_std * torch.randn(y.shape, generator=run_rng, dtype=torch.float64)
            splits[split] = TensorTable(
                numeric=x.float(),
                categorical=torch.empty(n, 0, dtype=torch.long),
                labels={t.name: kind_of(t).labels_from_signal(t, y[:, i]) for i, t in enumerate(self.tasks)},
            )
        self._w = w
        features = FeatureSpec(numeric=tuple(f"x{i}" for i in range(self.num_features)))
        return splits, features

    def describe(self) -> dict[str, Any]:
        summary = super().describe()
        w = self._w
        cos = (w @ w.T) / (w.norm(dim=1, keepdim=True) * w.norm(dim=1))
        summary["weight_cosine"] = {
            f"{a.name}~{b.name}": round(float(cos[i, j]), 6)
            for i, a in enumerate(self.tasks)
            for j, b in enumerate(self.tasks)
            if i < j
        }
        summary["data_seed"] = self.data_seed
        return summary
