"""``mtlexp report`` helpers that need no run folders."""

import pytest

from mtlexp.report.sweep import delta_m


def test_delta_m_counts_a_gain_as_positive_whatever_the_metric_direction():
    metrics = {"income": "auroc", "age": "mse"}
    # AUC up 1% (a gain), MSE up 10% (a loss): mean of +1% and -10%.
    assert delta_m({"income": 0.909, "age": 1.1}, {"income": 0.9, "age": 1.0}, metrics) == pytest.approx(-4.5)
    assert delta_m({"income": 0.9, "age": 1.0}, {"income": 0.9, "age": 1.0}, metrics) == 0.0
