"""The selection-bias simulator: its rates follow its config, the bias knob does what it says, it is seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlexp.data.selection_bias import SelectionBiasSimDataModule
from mtlexp.errors import MtlexpError

TASKS = {"click": {"kind": "binary"}, "conversion": {"kind": "binary", "observed_if": "click"},
         "ctcvr": {"kind": "binary", "product": ["click", "conversion"]}}


def simulate(**kwargs) -> SelectionBiasSimDataModule:
    kwargs = {"num_train": 100_000, "num_val": 1000, "num_test": 1000, **kwargs}
    dm = SelectionBiasSimDataModule(TASKS, **kwargs)
    dm.setup()
    return dm


def test_measured_rates_match_the_config_and_conversions_follow_clicks() -> None:
    dm = simulate(click_rate=0.2, conversion_rate=0.1)
    train = dm.splits["train"]
    assert float(train.labels["click"].mean()) == pytest.approx(0.2, abs=0.005)
    assert float(train.truth["conversion"]["propensity"].mean()) == pytest.approx(0.1, abs=0.002)
    assert float(train.truth["conversion"]["outcome"].mean()) == pytest.approx(0.1, abs=0.005)
    assert bool((train.labels["conversion"] <= train.labels["click"]).all())
    assert torch.equal(train.labels["ctcvr"], train.labels["conversion"])  # conversion is only seen after a click
    assert dm.tasks[1].truth and not dm.tasks[0].truth
    rates = dm.describe()["rates"]["train"]
    assert rates["click"] == pytest.approx(float(train.labels["click"].mean()))


def test_the_bias_knob_separates_clicked_from_unclicked_conversion_rates() -> None:
    def gap(bias: float) -> float:
        rates = simulate(selection_bias=bias, correlation=0.0).describe()["rates"]["train"]
        return rates["conversion_given_click"] - rates["conversion_given_no_click"]

    assert abs(gap(0.0)) < 0.01  # rho = 0 and no intent: clicking says nothing about converting
    assert gap(1.0) > 0.03 and gap(2.0) > gap(1.0)


def test_the_data_seed_fixes_the_simulation() -> None:
    a, b, c = simulate(data_seed=3, seed=1), simulate(data_seed=3, seed=2), simulate(data_seed=4, seed=1)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert simulate(data_seed=None, seed=5).fingerprint() == simulate(data_seed=5, seed=0).fingerprint()


def test_the_simulator_needs_a_conversion_task_observed_after_a_click() -> None:
    with pytest.raises(MtlexpError, match="tasks: the simulator needs a click task and a conversion task"):
        SelectionBiasSimDataModule({"click": {"kind": "binary"}})
    with pytest.raises(MtlexpError, match="selection_bias: expected a number >= 0"):
        SelectionBiasSimDataModule(TASKS, selection_bias=-1.0)


def test_a_million_impressions_generate() -> None:
    dm = SelectionBiasSimDataModule(TASKS, num_train=1_000_000, num_val=100, num_test=100)
    splits, features = dm.load()
    assert len(splits["train"]) == 1_000_000 and features.input_dim > 0
    assert np.isfinite(splits["train"].numeric.numpy()).all()
