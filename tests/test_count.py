"""The ``count`` kind (Poisson log-likelihood on non-negative integer labels) on hand examples; through the CLI in
tests/data/test_census_cli.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.regression import TweedieDevianceScore

from mtlexp.data.base import check_labels
from mtlexp.data.tabular import TabularDataModule
from mtlexp.errors import MtlexpError
from mtlexp.kinds import kind_of, task_loss, task_metrics
from mtlexp.metrics import PoissonDeviance, direction
from mtlexp.specs import MIN, TaskSpec
from mtlexp.tasks import tasks_from_config

COUNT = TaskSpec("purchases", "count")
RATES = [1.0, 2.0, 0.5]
COUNTS = [0.0, 3.0, 1.0]


def test_the_loss_is_the_poisson_log_likelihood_of_the_log_rate_without_log_y_factorial() -> None:
    logits = torch.tensor([math.log(r) for r in RATES])
    by_hand = [mu - y * math.log(mu) for mu, y in zip(RATES, COUNTS)]  # -log p(y | mu) - log(y!)
    loss = task_loss(COUNT, logits, torch.tensor(COUNTS))
    assert float(loss) == pytest.approx(sum(by_hand) / 3, rel=1e-6)
    weighted = task_loss(COUNT, logits, torch.tensor(COUNTS), weight=torch.tensor([0.0, 1.0, 3.0]))
    assert float(weighted) == pytest.approx((by_hand[1] + 3 * by_hand[2]) / 4, rel=1e-6)
    assert kind_of(COUNT).output_dim(COUNT) == 1


def test_metrics_are_poisson_deviance_mae_and_deviance_relative_to_the_mean_count() -> None:
    def deviance(rates: list[float]) -> float:
        terms = [2 * ((y * math.log(y / mu) if y else 0.0) - y + mu) for mu, y in zip(rates, COUNTS)]
        return sum(terms) / len(terms)

    metrics = task_metrics(COUNT)
    logits = torch.tensor([math.log(r) for r in RATES])
    metrics.update(kind_of(COUNT).predict(COUNT, logits), kind_of(COUNT).metric_target(COUNT, torch.tensor(COUNTS)))
    values = {name: float(value) for name, value in metrics.compute().items()}
    mean = sum(COUNTS) / 3
    assert values["deviance"] == pytest.approx(deviance(RATES), rel=1e-6)
    assert values["mae"] == pytest.approx((1.0 + 1.0 + 0.5) / 3, rel=1e-6)
    assert values["norm_loss"] == pytest.approx(deviance(RATES) / deviance([mean] * 3), rel=1e-6)
    reference = TweedieDevianceScore(power=1.0)  # torchmetrics' own Poisson deviance
    reference.update(torch.tensor(RATES), torch.tensor(COUNTS))
    assert values["deviance"] == pytest.approx(float(reference.compute()), rel=1e-6)
    perfect = PoissonDeviance(normalize=True)
    perfect.update(torch.full((3,), mean), torch.tensor(COUNTS))
    assert float(perfect.compute()) == pytest.approx(1.0)  # predicting the mean count is norm_loss 1
    assert {direction(m) for m in metrics.values()} == {MIN}


@pytest.mark.parametrize(("labels", "message"), [
    ([0.0, 2.0, 2.5], "tasks.purchases: count labels must be non-negative integers, got 2.5 in the train split"),
    ([0.0, -1.0, 2.0], "tasks.purchases: count labels must be non-negative integers, got -1 in the train split"),
    ([0.0, float("nan"), 2.0], r"tasks.purchases: 1 NaN/inf label\(s\) in the train split"),
])
def test_count_labels_must_be_finite_non_negative_integers(labels: list[float], message: str) -> None:
    with pytest.raises(MtlexpError, match=message):
        check_labels(COUNT, {"purchases": torch.tensor(labels)}, "train")
    check_labels(COUNT, {"purchases": torch.tensor([0.0, 1.0, 7.0])}, "train")


def test_a_count_task_is_observed_if_a_binary_one_but_standardizes_and_gates_nothing() -> None:
    tasks = tasks_from_config({"click": {"kind": "binary"}, "items": {"kind": "count", "observed_if": "click"}})
    assert kind_of(tasks[1]).name == "count"
    with pytest.raises(MtlexpError, match="tasks.n.standardize: expected true or false, and true only for a "
                                          "regression"):
        tasks_from_config({"n": {"kind": "count", "standardize": True}})
    with pytest.raises(MtlexpError, match="tasks.b.observed_if: 'n' must be a binary task"):
        tasks_from_config({"n": {"kind": "count"}, "b": {"kind": "binary", "observed_if": "n"}})


@pytest.mark.parametrize("streaming", [False, True])
def test_bad_counts_in_a_table_fail_in_one_line_in_memory_and_streamed(tmp_path: Path, streaming: bool) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=300), "items": rng.poisson(2.0, 300).astype(float)})
    frame.loc[123, "items"] = 1.5
    path = tmp_path / "shop.parquet"
    frame.to_parquet(path, row_group_size=50)
    dm = TabularDataModule({"items": {"kind": "count"}}, path=path, schema={"numeric": ["x"]}, streaming=streaming,
                           cache_dir=tmp_path / "cache")
    with pytest.raises(MtlexpError, match=r"^tasks.items: count labels must be non-negative integers, got 1.5 in "
                                          r"the \w+ split$"):
        dm.setup()
