"""scripts/gpu_check.py without a GPU: its last line, how step outcomes and figures are read, its budget."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
LINE = re.compile(r"gpu_check ok=[01] stacked_speedup_b128=(\d+\.\d\d|nan) stacked_speedup_b1024=(\d+\.\d\d|nan) "
                  r"bench_ratio_b1024=(\d+\.\d\d|nan)")

# What each step prints when it works (the tail of the real scripts' output).
OUTPUTS = {
    "cuda": "2.13.0+cu128 NVIDIA H100 80GB HBM3\n",
    "gpu_tests": "....\n4 passed in 41.20s\n",
    "bf16_run": "",
    "stacked_b128": "gpu-b128: round 0: 10 seeds sequential 61.0 s, stacked 9.5 s, speedup 6.42x\nspeedup=6.421\n",
    "stacked_b1024": "gpu-b1024: round 0: ...\nspeedup=3.048\n",
    "bench_train": "  mtlexp per epoch (medians): training 0.4 s\nratio_b1024=0.874\n",
}


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import gpu_check

    return gpu_check


def fake_runner(failing: dict[str, int | None] | None = None, ran: list[str] | None = None):
    """A step runner that prints OUTPUTS; ``failing`` gives a step's exit status (None: it ran past its limit)."""

    def run(step, limit_s, log):
        if ran is not None:
            ran.append(step.name)
        status = (failing or {}).get(step.name, 0)
        return status, "Traceback ...\nRuntimeError: CUDA error: out of memory\n" if status else OUTPUTS[step.name]

    return run


def plan_with_a_finished_bf16_run(gpu_check, logs: Path):
    plan = gpu_check.steps(sys.executable, logs)
    (logs / "bf16_run").mkdir(parents=True)
    (logs / "bf16_run" / "metrics.json").write_text('{"status": "ok", "val": {"task1": {"mse": 0.31}}}')
    return plan


def test_every_step_passing_gives_ok_1_and_every_figure(gpu_check, tmp_path):
    plan = plan_with_a_finished_bf16_run(gpu_check, tmp_path)
    outcomes = gpu_check.check(plan, tmp_path, runner=fake_runner())
    assert [o.name for o in outcomes] == ["cuda", "gpu_tests", "bf16_run", "stacked_b128", "stacked_b1024",
                                          "bench_train"]
    assert gpu_check.summary(outcomes) == ("gpu_check ok=1 stacked_speedup_b128=6.42 stacked_speedup_b1024=3.05 "
                                           "bench_ratio_b1024=0.87")


def test_a_failed_step_gives_ok_0_its_figure_nan_and_the_later_steps_still_run(gpu_check, tmp_path):
    ran: list[str] = []
    plan = plan_with_a_finished_bf16_run(gpu_check, tmp_path)
    outcomes = gpu_check.check(plan, tmp_path, runner=fake_runner({"stacked_b128": 1, "bench_train": None}, ran))
    line = gpu_check.summary(outcomes)
    assert LINE.fullmatch(line), line
    assert line == "gpu_check ok=0 stacked_speedup_b128=nan stacked_speedup_b1024=3.05 bench_ratio_b1024=nan"
    assert ran == [step.name for step in plan]
    why = {o.name: o.why for o in outcomes}
    assert why["stacked_b128"] == "exit status 1: RuntimeError: CUDA error: out of memory"
    assert why["bench_train"].startswith("ran past its")


def test_a_step_that_exits_0_without_doing_its_job_fails(gpu_check, tmp_path):
    plan = gpu_check.steps(sys.executable, tmp_path)  # no metrics.json from the bf16 run
    skipped = {**OUTPUTS, "gpu_tests": "ssss\n4 skipped in 0.50s\n"}
    outcomes = gpu_check.check(plan, tmp_path, runner=lambda step, limit, log: (0, skipped[step.name]))
    why = {o.name: o.why for o in outcomes if not o.ok}
    assert set(why) == {"gpu_tests", "bf16_run"}
    assert why["gpu_tests"] == "tests skipped on a CUDA machine: 4 skipped in 0.50s"
    assert gpu_check.summary(outcomes).startswith("gpu_check ok=0 ")


def test_without_cuda_nothing_else_runs(gpu_check, tmp_path):
    ran: list[str] = []
    outcomes = gpu_check.check(gpu_check.steps(sys.executable, tmp_path), tmp_path,
                               runner=fake_runner({"cuda": 1}, ran))
    assert ran == ["cuda"]
    assert {o.why for o in outcomes[1:]} == {"not run: no CUDA device"}
    assert gpu_check.summary(outcomes) == gpu_check.final_line(False, {})


def test_steps_share_one_budget(gpu_check, tmp_path):
    limits: list[float] = []
    plan = gpu_check.steps(sys.executable, tmp_path)
    assert sum(step.limit_s for step in plan) <= gpu_check.BUDGET_S
    gpu_check.check(plan, tmp_path, budget_s=100,
                    runner=lambda step, limit, log: (limits.append(limit), (0, OUTPUTS[step.name]))[1])
    assert limits[0] == 30 and all(limit <= 100 for limit in limits)
    outcomes = gpu_check.check(plan, tmp_path, budget_s=0, runner=fake_runner())
    assert {o.why for o in outcomes} == {"not run: the 0 s budget is spent"}


def test_a_result_line_is_read_from_the_last_line_that_has_one(gpu_check):
    assert gpu_check.key_values("a=1\nratio_b128=1.204 ratio_b1024=0.874\nDone.\n") == {
        "ratio_b128": 1.204, "ratio_b1024": 0.874}
    assert gpu_check.bench_train_figures("census_ratio=0.9\nratio_b128=1.2\n") == {}
    assert gpu_check.key_values("nothing here") == {}


@pytest.mark.slow
def test_the_script_on_a_machine_without_cuda_ends_with_ok_0(tmp_path):
    env = {**os.environ, "MTLEXP_GPU_PYTHON": sys.executable, "MTLEXP_GPU_LOGS": str(tmp_path / "logs"),
           "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh")], capture_output=True, text=True, env=env,
                            timeout=120)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 1
    assert lines[-1] == "gpu_check ok=0 stacked_speedup_b128=nan stacked_speedup_b1024=nan bench_ratio_b1024=nan"
    assert lines[0].startswith("gpu_check: cuda: FAILED") and "no CUDA device" in lines[0]
    assert (tmp_path / "logs" / "cuda.log").is_file()


@pytest.mark.slow
def test_dry_run_prints_every_step_and_the_last_line(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--dry-run", "--logs", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and LINE.fullmatch(lines[-1])
    assert [line.split()[1] for line in lines[:-1]] == ["cuda", "gpu_tests", "bf16_run", "stacked_b128",
                                                        "stacked_b1024", "bench_train"]
    assert "-m gpu" in lines[1] and "trainer.precision=bf16-mixed" in lines[2] and "--accelerator gpu" in lines[5]
