"""A click -> conversion simulator with known truth, for sample-selection bias (the ESMM setting).

Users and items have latent vectors; an impression pairs a random user with a random item. With ``h`` the
two latent vectors side by side (unit-variance entries), orthogonal unit directions ``w_c`` and ``w_o``, and
an intent ``z ~ N(0, 1)`` that the model never sees:

    click logit      s_c = signal * (h @ w_c)                                       + bias * z + b_c
    conversion logit s_v = signal * (rho * (h @ w_c) + sqrt(1 - rho^2) * (h @ w_o))  + bias * z + b_v

A click is drawn from sigmoid(s_c). Every impression also has a potential conversion, drawn from
sigmoid(s_v), but it is observed only after a click: the conversion label is ``click AND potential``. The
intercepts are solved so that the mean click rate and the mean conversion propensity over all impressions are
``click_rate`` and ``conversion_rate``.

* ``correlation`` (rho) ties pCVR to pCTR through the shared latent direction ``w_c``.
* ``selection_bias`` scales the unseen intent in both logits: clicked impressions then convert more often
  than unclicked ones with the same features, so a CVR model fitted on clicked impressions overestimates
  pCVR over the entire space. 0 leaves only the selection on observed features (a covariate shift).

The model sees a user id and an item id (categorical) and a noisy copy of both latent vectors (numeric).
Because the truth is known, every conversion metric also has its entire-space form: ``auroc_entire`` (AUC of
pCVR against the potential conversion of every impression) and ``pcvr_bias`` (mean predicted minus true
pCVR over every impression), under the conversion task in ``metrics.json``.

Everything is drawn from ``data_seed`` (None: the run seed), vectorised: 1M impressions take about a second.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mtlexp.data.base import SPLITS, MTLDataModule
from mtlexp.data.tensors import TensorTable
from mtlexp.errors import MtlexpError, require
from mtlexp.specs import CategoricalFeature, FeatureSpec


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def solve_intercept(scores: np.ndarray, rate: float) -> float:
    """The b with mean(sigmoid(scores + b)) = rate (bisection; the mean is increasing in b)."""
    low, high = -30.0, 30.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _sigmoid(scores + mid).mean() < rate else (low, mid)
    return (low + high) / 2


class SelectionBiasSimDataModule(MTLDataModule):
    """Simulated impressions with clicks, conversions and the true propensities behind them.

    :param tasks: the ``tasks`` node: a click task, a conversion task ``observed_if`` it, and optionally
        their product (``conf/tasks/selection_bias_sim.yaml``).
    :param num_users, num_items: sizes of the two populations.
    :param latent_dim: dimension of the latent vectors.
    :param signal: the standard deviation of the part of each logit that the features explain.
    :param click_rate: mean click probability over impressions.
    :param conversion_rate: mean conversion propensity over impressions (clicked or not).
    :param correlation: rho, how much of the conversion score is the click score's direction, in [-1, 1].
    :param selection_bias: weight of the unseen intent in both logits, >= 0.
    :param feature_noise: standard deviation of the noise on the observed latent vectors.
    :param num_train, num_val, num_test: impressions per split.
    :param data_seed: seeds the whole simulation (None: the run seed).
    """

    def __init__(
        self,
        tasks: Mapping[str, Any],
        num_users: int = 2000,
        num_items: int = 1000,
        latent_dim: int = 8,
        signal: float = 2.0,
        click_rate: float = 0.1,
        conversion_rate: float = 0.05,
        correlation: float = 0.5,
        selection_bias: float = 1.0,
        feature_noise: float = 0.5,
        num_train: int = 200_000,
        num_val: int = 50_000,
        num_test: int = 50_000,
        data_seed: int | None = 0,
        seed: int = 0,
        batch_size: int = 1024,
        eval_batch_size: int = 16384,
        chunk_steps: int = 8,
    ) -> None:
        super().__init__(tasks, batch_size, eval_batch_size, chunk_steps, seed)
        for name, value in (("num_users", num_users), ("num_items", num_items), ("latent_dim", latent_dim)):
            require(isinstance(value, int) and value >= 1, name, "an integer >= 1", value)
        for name, value in (("click_rate", click_rate), ("conversion_rate", conversion_rate)):
            require(0 < value < 1, name, "a rate in (0, 1)", value)
        require(signal >= 0, "signal", "a number >= 0", signal)
        require(-1 <= correlation <= 1, "correlation", "a number in [-1, 1]", correlation)
        require(selection_bias >= 0, "selection_bias", "a number >= 0", selection_bias)
        require(feature_noise >= 0, "feature_noise", "a number >= 0", feature_noise)
        for name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            require(isinstance(n, int) and n >= 100, name, "an integer >= 100", n)
        self.click, self.conversion = self._roles()
        self.num_users, self.num_items, self.latent_dim = num_users, num_items, latent_dim
        self.signal = float(signal)
        self.click_rate, self.conversion_rate = float(click_rate), float(conversion_rate)
        self.correlation, self.selection_bias = float(correlation), float(selection_bias)
        self.feature_noise = float(feature_noise)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.data_seed = data_seed
        self.facts: dict[str, Any] = {}

    def _roles(self) -> tuple[str, str]:
        """The click task and the conversion task (the one observed_if the other)."""
        for task in self.tasks:
            if task.observed_if and not task.derived:
                return task.observed_if, task.name
        raise MtlexpError(f"tasks: the simulator needs a click task and a conversion task observed_if it "
                          f"(tasks=selection_bias_sim), got {[t.name for t in self.tasks]}")

    def load(self) -> tuple[dict[str, TensorTable], FeatureSpec]:
        rng = np.random.default_rng(self.seed if self.data_seed is None else self.data_seed)
        k = self.latent_dim
        users = rng.normal(size=(self.num_users, k))
        items = rng.normal(size=(self.num_items, k))
        w_click, w_other = rng.normal(size=(2, 2 * k))
        w_click /= np.linalg.norm(w_click)
        w_other -= (w_other @ w_click) * w_click  # orthogonal, so that rho is exactly the cosine of the two
        w_other /= np.linalg.norm(w_other)
        rho = self.correlation
        w_conversion = rho * w_click + math.sqrt(max(0.0, 1 - rho * rho)) * w_other
        drawn = {}
        for split in SPLITS:
            n = self.sizes[split]
            u, i = rng.integers(0, self.num_users, n), rng.integers(0, self.num_items, n)
            h = np.concatenate([users[u], items[i]], axis=1)  # unit-variance entries: h @ w too, for a unit w
            intent = rng.normal(size=n) * self.selection_bias
            drawn[split] = (u, i, h, self.signal * (h @ w_click) + intent, self.signal * (h @ w_conversion) + intent)
        # Intercepts from the training impressions, then used for every split.
        b_click = solve_intercept(drawn["train"][3], self.click_rate)
        b_conversion = solve_intercept(drawn["train"][4], self.conversion_rate)
        splits, rates = {}, {}
        for split in SPLITS:
            u, i, h, s_click, s_conversion = drawn[split]
            n = len(u)
            p_click, p_conversion = _sigmoid(s_click + b_click), _sigmoid(s_conversion + b_conversion)
            click = rng.random(n) < p_click
            potential = rng.random(n) < p_conversion
            observed = h + self.feature_noise * rng.normal(size=(n, 2 * k))
            splits[split] = TensorTable(
                numeric=torch.from_numpy(observed.astype(np.float32)),
                categorical=torch.from_numpy(np.stack([u + 1, i + 1], axis=1).astype(np.int64)),
                labels={self.click: torch.from_numpy(click.astype(np.float32)),
                        self.conversion: torch.from_numpy((click & potential).astype(np.float32))},
                truth={self.conversion: {"propensity": torch.from_numpy(p_conversion.astype(np.float32)),
                                         "outcome": torch.from_numpy(potential.astype(np.float32))}},
            )
            rates[split] = {"click": float(click.mean()), "conversion_given_click": float(potential[click].mean()),
                            "conversion_given_no_click": float(potential[~click].mean()),
                            "true_pcvr_clicked": float(p_conversion[click].mean()),
                            "true_pcvr_all": float(p_conversion.mean())}
        self.facts = {"rates": rates, "intercepts": {"click": b_click, "conversion": b_conversion}}
        # The conversion task's metrics include the truth-based ones.
        self.tasks = [dataclasses.replace(t, truth=True) if t.name == self.conversion else t for t in self.tasks]
        features = FeatureSpec(
            numeric=tuple(f"user_{j}" for j in range(k)) + tuple(f"item_{j}" for j in range(k)),
            categorical=(CategoricalFeature("user_id", self.num_users + 1, 8),
                         CategoricalFeature("item_id", self.num_items + 1, 8)),
        )
        return splits, features

    def describe(self) -> dict[str, Any]:
        summary = super().describe()
        summary.update(self.facts)
        summary["selection_bias"], summary["correlation"] = self.selection_bias, self.correlation
        return summary
