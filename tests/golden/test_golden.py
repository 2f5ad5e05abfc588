"""Golden results (issue #23): every case of tests/golden/cases.py reproduces the test metrics and best_epoch
recorded from main before the redesign (tests/golden/results.json, scripts/record_golden.py) to 1e-6."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtlexp.train import train
from tests.golden.cases import CASES, IDS, RESULTS, TOLERANCE, case_overrides, case_results, missing_source

pytestmark = pytest.mark.golden

GOLDEN = json.loads(RESULTS.read_text())["cases"]


def test_every_case_is_recorded() -> None:
    assert sorted(GOLDEN) == sorted(IDS), "tests/golden/results.json is stale: rerun scripts/record_golden.py"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_golden_results(case, make_cfg, tmp_path: Path) -> None:
    why = missing_source(case)
    if why:
        pytest.skip(why)
    golden = GOLDEN[case.id]
    assert golden["overrides"] == list(case.overrides), f"{case.id}: recorded with other overrides"
    cfg = make_cfg(*case_overrides(case, tmp_path / "inputs"), fast=False)
    runs = case_results(case, cfg, train)
    assert runs.keys() == golden["runs"].keys()
    for run, expected in golden["runs"].items():
        actual = runs[run]
        assert actual["best_epoch"] == expected["best_epoch"], (case.id, run)
        assert actual["test"].keys() == expected["test"].keys(), (case.id, run)
        for task, values in expected["test"].items():
            assert actual["test"][task].keys() == values.keys(), (case.id, run, task)
            for name, value in values.items():
                assert actual["test"][task][name] == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE, nan_ok=True), (
                    case.id, run, task, name)
        assert actual["test_norm_loss"] == pytest.approx(expected["test_norm_loss"], rel=TOLERANCE, abs=TOLERANCE,
                                                         nan_ok=True), (case.id, run)
