"""Sweeps past one machine with Hydra's own launcher plugins (docs/scaling.md): a local Ray instance and
submitit's local executor run a real 2-job sweep through the CLI; the Slurm config is checked without a
cluster, by rendering the sbatch script the plugin would submit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from mtlexp.config import register_configs

TINY = [
    "data.num_train=512", "data.num_val=256", "data.num_test=256", "data.batch_size=64",
    "trainer.max_epochs=1",
]
# The processes a local Ray instance starts (GCS, raylet, agents, workers), by their command lines.
RAY_PROCESS = re.compile(r"gcs_server|raylet|ray::|/ray/(dashboard|_private|autoscaler)/")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "mtlexp", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def ray_processes() -> dict[int, str]:
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    pids = {}
    for line in listing.splitlines():
        pid, _, args = line.strip().partition(" ")
        if RAY_PROCESS.search(args):
            pids[int(pid)] = args
    return pids


def report(sweep: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``mtlexp report <sweep>``, through the CLI's entry point but in this process: the command itself is
    tested in test_cli.py, and a subprocess would cost seconds of imports per call."""
    from mtlexp.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(sweep)])
    out = capsys.readouterr()
    assert exit_.value.code == 0, out.err
    return out.out


def assert_sweep_ran(sweep: Path, result: subprocess.CompletedProcess, capsys, failing: bool) -> None:
    """Jobs 0 and 1 (seed=0,1) ok and, with ``failing``, job 2 (seed=-1) failed; the summary says so and the
    report reads the runs."""
    statuses = {job.name: json.loads((job / "metrics.json").read_text())["status"]
                for job in sweep.iterdir() if job.name.isdigit()}
    assert statuses == {"0": "ok", "1": "ok", **({"2": "failed"} if failing else {})}, result.stderr[-3000:]
    assert result.returncode == (1 if failing else 0), result.stderr[-3000:]
    assert re.search(r"\n0\s+seed=0\s+ok", result.stdout), result.stdout
    if failing:
        assert re.search(r"\n2\s+seed=-1\s+failed", result.stdout), result.stdout
        assert "1 of 3 jobs failed" in result.stderr
    assert "Traceback" not in result.stderr
    runs = r"2 \(\+1 failed\)" if failing else r"2"
    table = report(sweep, capsys)
    assert re.search(rf"\(all\)\s+{runs}\s", table), table


@pytest.mark.slow
def test_ray_local_sweep_runs_every_job_and_stops_the_ray_instance(tmp_path, capsys):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    before = ray_processes()
    sweep = tmp_path / "sweep"
    result = run(["train", "-m", "hydra/launcher=ray_local", "hydra.launcher.ray.init.num_cpus=2", "seed=0,1,-1",
                  *TINY, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert_sweep_ran(sweep, result, capsys, failing=True)
    # The failed job's error reaches this console from its Ray worker.
    assert "mtlexp: error: seed: expected an integer >= 0, got -1" in result.stderr
    # Ray prints no repeated-lines digest in place of a job's results (RAY_DEDUP_LOGS=0, set by the CLI).
    assert "across cluster" not in result.stdout + result.stderr
    # Noise nobody can act on stays out of the jobs' output in Ray workers too (runner.run_job silences it).
    for noise in ("Tip:", "LeafSpec"):
        assert noise not in result.stdout + result.stderr, noise
    # The sweep's Ray instance ends with the command: no Ray process of it is left behind.
    deadline = time.time() + 15
    while (left := set(ray_processes()) - set(before)) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, ray_processes()


@pytest.mark.slow
def test_submitit_local_sweep_runs_every_job(tmp_path, capsys):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    # Two jobs only: each is a fresh Python process, all started at once (a failed job is reported as with
    # Ray: the same job function writes the same folder; checked in the Ray test).
    result = run(["train", "-m", "hydra/launcher=submitit_local", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}"],
                 tmp_path)
    assert_sweep_ran(sweep, result, capsys, failing=False)
    # submitit keeps each job's console output in its own folder.
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.out"))
    assert logs.count("run dir:") == 2, logs


class Submitted(Exception):
    """Raised in place of running sbatch."""


def test_slurm_config_renders_the_sbatch_script_it_documents(tmp_path, monkeypatch):
    """hydra/launcher=slurm as Hydra composes it, through the plugin's own SlurmLauncher.launch(), up to the
    sbatch script submitit writes; sbatch itself is never run."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext
    from submitit.slurm import slurm

    for name in ("SBATCH_PARTITION", "SBATCH_QOS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SBATCH_ACCOUNT", "proj42")
    scripts: list[str] = []

    def submit(self, command: str):
        scripts.append(self._make_submission_file_text(command, "uid"))
        raise Submitted

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun is on PATH"
    monkeypatch.setattr(slurm.SlurmExecutor, "_submit_command", submit)

    sweep = tmp_path / "sweep"
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("mtlexp.conf", version_base="1.3"):
            cfg = compose("config", return_hydra_config=True, overrides=[
                "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
                "hydra.launcher.gpus_per_node=2", "hydra.launcher.array_parallelism=1",
                "+hydra.launcher.additional_parameters.mail-type=END", f"hydra.sweep.dir={sweep}"])
    finally:
        GlobalHydra.instance().clear()
    launcher = Plugins.instance().instantiate_launcher(
        hydra_context=HydraContext(config_loader=None, callbacks=None), task_function=lambda cfg: None, config=cfg)
    assert type(launcher).__name__ == "SlurmLauncher"
    with pytest.raises(Submitted):
        launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)

    (script,) = scripts
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, flags=re.M))
    assert flags["partition"] == "gpu"
    assert flags["time"] == "90"  # minutes
    assert flags["gpus-per-node"] == "2"
    assert flags["array"] == "0-1%1"  # two jobs, one at a time
    assert flags["mail-type"] == "END"
    assert flags["account"] == "proj42"  # from SBATCH_ACCOUNT
    assert "qos" not in flags  # null keys leave sbatch's own defaults alone
    # The documented defaults of conf/hydra/launcher/slurm.yaml.
    assert flags["cpus-per-task"] == "4"
    assert flags["mem"] == "16GB"
    assert flags["ntasks-per-node"] == "1" and flags["nodes"] == "1"
    assert flags["job-name"] == "mtlexp"
    assert flags["output"].startswith(f"{sweep}/.submitit/")
    # Each array task runs the pickled job with this very Python.
    assert re.search(rf"\nsrun .*{re.escape(sys.executable)} -u -m submitit\.core\._submit ", script)
