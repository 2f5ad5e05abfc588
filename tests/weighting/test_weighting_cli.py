"""Every weighting through ``mtlexp train``: runs, records, resumes, and keeps DDP ranks identical."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_in_fork

CONF = Path(__file__).resolve().parents[2] / "conf"
METHODS = sorted(p.stem for p in (CONF / "weighting").glob("*.yaml"))
TINY = ["data.num_train=256", "data.num_val=128", "data.num_test=128", "data.batch_size=64", "data.chunk_steps=2",
        "trainer.log_every_n_steps=1"]


def mtlexp(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A new process: DDP starts its second rank by running the script again."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "mtlexp", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_every_method_trains_and_records_its_weights_and_the_gradient_conflict(tmp_path):
    # One model (MMoE): the methods read the model only through the contract (shared parameters, the last shared
    # layer), which tests/models checks for every architecture; test_methods.py checks each method's property.
    sweep = tmp_path / "sweep"
    result = cli_in_fork(["train", "-m", "model=mmoe", f"weighting={','.join(METHODS)}", *TINY,
                          "trainer.max_epochs=1", "module.grad_cosine_every_n_steps=2",
                          f"hydra.sweep.dir={sweep}"], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [(path.parent, json.loads(path.read_text())) for path in sweep.glob("*/metrics.json")]
    assert len(jobs) == len(METHODS)
    seen = set()
    for run_dir, job in jobs:
        assert job["status"] == "ok", job
        record = job["weighting"]
        seen.add((job["model"], record["method"]))
        assert set(record["weights"]) == {"task1", "task2"}
        assert all(value == value for value in record["weights"].values())  # no NaN
        assert -1.0 <= record["grad_cosine"]["task1-task2"] <= 1.0
        logged = csv_rows(run_dir)
        assert any(row.get("train/weight/task1") for row in logged)
        assert any(row.get("train/grad_cosine/task1-task2") for row in logged)
    assert seen == {("mmoe", method) for method in METHODS}
    by_method = {(job["model"], job["weighting"]["method"]): job for _, job in jobs}
    # Equal weighting's record is what the method is; an aggregator's weights are its own.
    assert by_method[("mmoe", "equal")]["weighting"]["weights"] == {"task1": 1.0, "task2": 1.0}
    assert sum(by_method[("mmoe", "mgda")]["weighting"]["weights"].values()) == pytest.approx(1.0, abs=1e-3)

    report = cli_in_fork(["report", str(sweep), "--baseline", "weighting=equal"], tmp_path)
    assert report.returncode == 0, report.stderr
    assert "Δm vs weighting=equal (%)" in report.stdout
    assert re.search(r"weighting=equal .* \+0\.00", report.stdout), report.stdout
    assert re.search(r"weighting=upgrad .* [+-]\d+\.\d\d", report.stdout), report.stdout
    bad = cli_in_fork(["report", str(sweep), "--baseline", "weighting=nope"], tmp_path)
    assert bad.returncode == 1 and "--baseline: 'nope' is not among the swept values of weighting" in bad.stderr


# upgrad's gradients are written by torchjd, outside DDP's hooks; gradnorm goes through them, learned weights too.
@pytest.mark.newest
@pytest.mark.parametrize("method", ["upgrad", "gradnorm"])
def test_ddp_on_two_cpu_processes_keeps_the_ranks_identical(tmp_path, method):
    run_dir = tmp_path / "run"
    result = mtlexp(["train", f"weighting={method}", "trainer=ddp", "trainer.accelerator=cpu", *TINY,
                     "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run dir:") == 1  # only rank 0 reports
    job = json.loads((run_dir / "metrics.json").read_text())
    assert job["status"] == "ok" and job["ddp"]["world_size"] == 2 and set(job["test"]) == {"task1", "task2"}
    assert job["ddp"]["max_param_diff_across_ranks"] == 0.0
