"""Data-parallel runs (``trainer=ddp``, 2 CPU processes) as a user starts them: with the default progress bar and
loggers, and what happens when one rank stops answering."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# Sizes only: the progress bar, the loggers and the callbacks stay as a user gets them.
SIZES = ["data.num_train=1024", "data.num_val=256", "data.num_test=256", "data.batch_size=64"]
DDP = ["train", "model=mmoe", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mtlexp", *args]


@pytest.mark.newest
def test_the_readme_ddp_line_finishes_with_the_default_progress_bar(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(command(*DDP, *SIZES, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"), cwd=tmp_path,
                            capture_output=True, text=True, timeout=240, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    job = json.loads((run_dir / "metrics.json").read_text())
    assert job["status"] == "ok" and job["ddp"]["world_size"] == 2 and job["ddp"]["max_param_diff_across_ranks"] == 0.0
    assert job["epochs_trained"] == 2
    logged = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/loss", "val/task1/loss", "train/loss_epoch", "val/norm_loss"} <= set(logged)


def start_stuck_run(tmp_path: Path, *overrides: str) -> tuple[subprocess.Popen, int, Path]:
    """A DDP run whose rank 1 is stopped (SIGSTOP) once training is under way: rank 0 then waits in a collective."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(command(*DDP, *SIZES, "trainer.max_epochs=1000", *overrides, f"hydra.run.dir={run_dir}"),
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    deadline = time.time() + 180
    while not (run_dir / "checkpoints" / "last.ckpt").is_file():
        assert process.poll() is None and time.time() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.2)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert len(children) == 1, children  # Lightning's launcher started rank 1
    rank1 = int(children[0])
    os.kill(rank1, signal.SIGSTOP)
    return process, rank1, run_dir


def reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds rank 1 through /proc")
def test_sigterm_ends_a_run_stuck_in_a_collective_and_records_it_interrupted(tmp_path):
    process, rank1, run_dir = start_stuck_run(tmp_path)
    try:
        time.sleep(1)  # rank 0 reaches the next collective and waits there
        assert process.poll() is None
        signalled = time.time()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
        assert time.time() - signalled < 30
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
        hint = [line for line in stderr.splitlines() if line.startswith("mtlexp: interrupted;")]
        assert hint and hint[0].endswith(f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"), stderr[-3000:]
        time.sleep(0.5)
        assert not Path(f"/proc/{rank1}").exists() or "zombie" in Path(f"/proc/{rank1}/status").read_text()
    finally:
        process.kill()
        reap(rank1)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds rank 1 through /proc")
def test_a_collective_that_times_out_fails_the_run_with_one_line_naming_the_timeout(tmp_path):
    # The timeout covers the rendezvous too, where rank 1 first imports torch and Lightning: leave room for that.
    process, rank1, run_dir = start_stuck_run(tmp_path, "trainer.strategy.timeout_s=20")
    try:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 1, stderr[-3000:]
        errors = [line for line in stderr.splitlines() if line.startswith("mtlexp: error:")]
        assert errors and errors[0].startswith(
            "mtlexp: error: trainer.strategy.timeout_s: the 2 DDP processes waited 20 s for each other"), stderr[-3000:]
        record = json.loads((run_dir / "metrics.json").read_text())
        assert record["status"] == "failed" and "trainer.strategy.timeout_s" in record["error"]
    finally:
        process.kill()
        reap(rank1)


def test_a_bad_timeout_is_one_line(tmp_path):
    from tests.conftest import cli_in_fork

    result = cli_in_fork([*DDP, "trainer.strategy.timeout_s=0", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == \
        "mtlexp: error: trainer.strategy.timeout_s: expected a number of seconds > 0, got 0"
