"""``mtlexp report`` helpers that need no run folders."""

import pytest

from mtlexp.report.sweep import delta_m
from tests.conftest import cli_in_fork


def test_delta_m_counts_a_gain_as_positive_whatever_the_metric_direction():
    metrics = {"income": "auroc", "age": "mse"}
    # AUC up 1% (a gain), MSE up 10% (a loss): mean of +1% and -10%.
    assert delta_m({"income": 0.909, "age": 1.1}, {"income": 0.9, "age": 1.0}, metrics) == pytest.approx(-4.5)
    assert delta_m({"income": 0.9, "age": 1.0}, {"income": 0.9, "age": 1.0}, metrics) == 0.0


def test_a_run_recorded_as_running_whose_process_is_gone_is_stale_not_failed(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys

    from mtlexp.report.sweep import run_state

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    assert run_state({"status": "running", "pid": gone.pid, "host": host}) == "stale"
    assert run_state({"status": "running", "pid": os.getpid(), "host": host}) == "running"
    assert run_state({"status": "running", "pid": gone.pid, "host": "elsewhere"}) == "running"
    assert run_state({"status": "failed", "pid": gone.pid, "host": host}) == "failed"

    # Through the CLI: a sweep with one finished run and one killed without a word.
    for job, record in (("0", {"status": "ok", "test": {"t": {"mse": 1.0}}, "test_norm_loss": 0.5}),
                        ("1", {"status": "running", "pid": gone.pid, "host": host})):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text("- model=mmoe\n")
        (tmp_path / job / "metrics.json").write_text(json.dumps(record))
    result = cli_in_fork(["report", str(tmp_path)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 (+1 stale)" in result.stdout, result.stdout
