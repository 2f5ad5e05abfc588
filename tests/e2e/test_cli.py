"""The installed ``mtlexp`` command, run as a user runs it from a foreign working directory: the console script and
the tests about the process itself (signals, a second process) as new processes, the rest as forked children."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_in_fork

pytestmark = pytest.mark.slow

FAST = [
    "data.num_train=512", "data.num_val=256", "data.num_test=256", "data.batch_size=64",
    "trainer.max_epochs=2",
]
MTLEXP = shutil.which("mtlexp") or str(Path(sys.executable).with_name("mtlexp"))


def run(args: list[str], cwd: Path, console_script: bool = False) -> subprocess.CompletedProcess:
    """The console script as a new process where the test is about it; otherwise a forked child (conftest), which
    spares each command the seconds of importing torch and Lightning."""
    if not console_script:
        return cli_in_fork(args, cwd)
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([MTLEXP, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_console_script_trains_and_eval_reevaluates(tmp_path):
    run_dir = tmp_path / "run"
    result = run(["train", "model=mmoe", *FAST, f"hydra.run.dir={run_dir}"], tmp_path, console_script=True)
    assert result.returncode == 0, result.stderr
    assert "run dir:" in result.stdout and "norm_loss" in result.stdout
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert metrics["directions"] == {task: {"mse": "min", "mae": "min", "r2": "max", "norm_loss": "min"}
                                     for task in ("task1", "task2")}
    # Atomic writes keep the permissions a plain write gets (the log is written plainly), not mkstemp's 0600.
    plain = (run_dir / "mtlexp.log").stat().st_mode & 0o777
    for name in ("metrics.json", "provenance.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run_dir / name).stat().st_mode & 0o777 == plain, name

    eval_dir = tmp_path / "eval"
    result = run(
        ["eval", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
         f"hydra.run.dir={eval_dir}"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["test"]["task1"]["mse"] == pytest.approx(metrics["test"]["task1"]["mse"], rel=1e-5)

    # The report reads training runs only: the eval folder beside the run is not a second run.
    report = run(["report", str(tmp_path)], tmp_path)
    assert report.returncode == 0, report.stderr
    assert re.search(r"\(all\)\s+1\s", report.stdout), report.stdout


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_multirun_gives_one_folder_per_job_and_a_failed_job_spares_the_others(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    result = run(
        ["train", "-m", f"hydra/launcher={launcher}", "model=shared_bottom,omoe", "data.correlation=0.5,1.5",
         *FAST, f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )
    assert result.returncode == 1
    statuses = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        statuses[job.name] = (json.loads((job / "metrics.json").read_text())["status"], "1.5" in overrides)
    assert len(statuses) == 4
    assert all((status == "failed") == bad for status, bad in statuses.values())
    assert "data.correlation: expected a cosine in [-1, 1], got 1.5" in result.stderr
    # Noise nobody can act on stays out of every job's output (joblib workers are other processes) ...
    for noise in ("Tip:", "LeafSpec"):
        assert noise not in result.stdout + result.stderr, noise
    # ... and a failed job's own log holds its error.
    failed = next(job for job in sweep.iterdir() if job.is_dir() and statuses.get(job.name, ("", False))[1])
    assert "data.correlation: expected a cosine in [-1, 1], got 1.5" in (failed / "mtlexp.log").read_text()
    assert "2 of 4 jobs failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"\n3\s+model=omoe data.correlation=1.5\s+failed", result.stdout)
    if launcher == "joblib":  # the jobs run side by side: each computes on cores // jobs at once (docs/scaling.md)
        import joblib

        cores = joblib.cpu_count()
        expected = max(1, cores // min(cores, 4))  # n_jobs=-1: every core, capped by the 4 jobs of the sweep
        for job, (status, _) in statuses.items():
            if status == "ok":
                assert json.loads((sweep / job / "provenance.json").read_text())["threads"]["torch"] == expected

    report = run(["report", str(sweep)], tmp_path)
    assert report.returncode == 0, report.stderr
    assert re.search(r"model=omoe data.correlation=0.5\s+1\s+\d\.\d{4}\s+\d\.\d{4}", report.stdout), report.stdout
    assert re.search(r"model=omoe data.correlation=1.5\s+0 \(\+1 failed\)", report.stdout), report.stdout
    assert (sweep / "report.md").is_file() and (sweep / "report.csv").is_file()


@pytest.mark.parametrize(
    "args,expected",
    [
        (["train", "data.correlation=1.5"], "mtlexp: error: data.correlation: expected a cosine in [-1, 1], got 1.5"),
        (["train", "model.num_experts=0"], "mtlexp: error: model.num_experts: expected an integer >= 1, got 0"),
        (["train", "model/gate=dselect_k", "model.gate.k=9"],
         "mtlexp: error: model.gate.k: expected an integer in [1, 8] (a gate of this model mixes 8 experts), got 9"),
        (["train", "model=ple", "model/gate=dselect_k", "model.gate.k=7"],  # a task gate: 2 own + 4 shared
         "mtlexp: error: model.gate.k: expected an integer in [1, 6] (a gate of this model mixes 6 experts), got 7"),
        (["train", "weighting=static", "weighting.weights=[0,0]"],
         "mtlexp: error: weighting.weights: expected at least one weight > 0, got 0 for every task (task1, task2)"),
        (["train", "weighting=static", "weighting.weights={task2:-1}"],
         "mtlexp: error: weighting.weights.task2: expected a finite number >= 0, got -1"),
        (["train", "model=nope"], "Could not find 'model/nope'"),
        (["train", "seed=abc"], "seed"),
        (["train", "trainer.max_epochs=abc"], "mtlexp: error: trainer.max_epochs: expected int, got 'abc'"),
        (["train", "optimizer.lr=abc"], "mtlexp: error: optimizer.lr: expected float or Tensor, got 'abc'"),
        (["train", "trainer.max_epochs=0"], "mtlexp: error: trainer.max_epochs: expected an integer >= 1 (or -1 for no limit), got 0"),
        (["eval", "ckpt_path=/nonexistent.ckpt"], "mtlexp: error: ckpt_path: no such file"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_bad_input_is_one_clear_error_without_traceback(tmp_path, args, expected):
    result = cli_in_fork([*args, f"hydra.run.dir={tmp_path / 'r'}"] if args[0] != "frobnicate" else args, tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_model_lists_the_options(tmp_path):
    result = cli_in_fork(["train", "model=nope"], tmp_path)
    for option in ("mmoe", "omoe", "shared_bottom", "single_task"):
        assert option in result.stderr


def test_help_lists_config_groups(tmp_path):
    result = cli_in_fork(["train", "--help"], tmp_path)
    assert result.returncode == 0
    assert "mtlexp" in result.stdout
    for group in ("model: ", "data: ", "trainer: ", "experiment: "):
        assert group in result.stdout


def test_paper_synthetic_experiment_composes(tmp_path):
    result = cli_in_fork(["train", "experiment=paper_synthetic", "--cfg", "job"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "num_train: 100000" in result.stdout


def test_sparse_gates_through_the_cli_record_how_many_experts_each_task_uses(tmp_path):
    sweep = tmp_path / "sweep"
    result = run(["train", "-m", "model=mmoe,cgc", "model/gate=topk,dselect_k", *FAST,
                  f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(jobs) == 4
    for job in jobs:
        assert job["status"] == "ok"
        active = job["gate_active"]["task1"]
        assert 1 <= active["per_row_mean"] <= active["per_row_max"] <= len(job["gates"]["task1"])
    topk = [job for job in jobs if job["gate_active"]["task1"]["per_row_max"] == 2 and job["gate_active"]["task1"]["per_row_mean"] == 2]
    assert len(topk) >= 2  # noisy top-2 uses exactly two experts on every row


def test_a_gate_given_as_a_value_names_the_group_to_use(tmp_path):
    result = cli_in_fork(["train", "model=mmoe", "model.gate=dselect_k", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "mtlexp: error: model.gate: expected a model/gate config, got 'dselect_k'; choose one with "
        "model/gate=dselect_k (options: dselect_k, softmax, topk)"
    )


@pytest.mark.parametrize("stack", [1, 2])
def test_debug_runs_one_short_epoch_and_leaves_no_checkpoints_or_logger_folders(tmp_path, stack):
    run_dir = tmp_path / "run"
    # The full-size default data: the debug config alone makes the run short.
    result = run(["train", "debug=default", f"stack={stack}", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [run_dir] if stack == 1 else sorted((run_dir / "replicas").iterdir())
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "ok"
    for folder in runs:
        metrics = json.loads((folder / "metrics.json").read_text())
        # No checkpoint was written, so none was selected: the record leaves best_checkpoint out.
        assert metrics["status"] == "ok" and metrics["epochs_trained"] == 1 and metrics.get("best_checkpoint") is None
    for absent in ("checkpoints", "csv", "tensorboard"):
        assert not list(run_dir.rglob(absent)), absent


def test_an_unexpected_error_under_debug_prints_its_traceback(tmp_path):
    not_a_checkpoint = tmp_path / "notes.ckpt"  # torch.load's own error: nothing in mtlexp expects it
    not_a_checkpoint.write_text("not a checkpoint\n")
    run_dir = tmp_path / "run"
    result = run(["train", "debug=default", f"ckpt_path={not_a_checkpoint}", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mtlexp: error: UnpicklingError: ")
    assert last.endswith(f"(traceback in {run_dir / 'error.log'})")
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"


def test_sigterm_exits_non_zero_and_says_how_to_resume(tmp_path):
    import signal
    import time

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "mtlexp", "train", "data.num_train=2048", "data.num_val=256", "data.num_test=256",
               "trainer.max_epochs=1000", f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    hint = stderr.strip().splitlines()[-1]
    assert hint.startswith("mtlexp: interrupted; resume with: mtlexp train ") and "trainer.max_epochs=1000" in hint
    assert "hydra.run.dir" not in hint  # the resumed run gets a folder of its own
    assert hint.endswith(f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_an_output_folder_that_cannot_be_created_is_one_line(tmp_path, mode):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    args = ["train", f"hydra.run.dir={blocker / 'run'}"] if mode == "run" else \
        ["train", "-m", "seed=1,2", f"hydra.sweep.dir={blocker / 'sweep'}"]
    result = cli_in_fork(args, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"mtlexp: error: hydra.{mode}.dir: cannot create the output folder {blocker / mode} ({blocker} is not a folder)"
    ]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_names_the_release_and_the_commit_of_a_checkout(tmp_path, flag):
    from importlib import metadata

    result = cli_in_fork([flag], tmp_path)
    assert result.returncode == 0, result.stderr
    commit = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert result.stdout.startswith(f"mtlexp {metadata.version('mtlexp')} (git {commit}")
    assert result.stdout.count("\n") == 1 and result.stderr == ""


def test_a_second_run_into_a_folder_in_use_is_refused_and_writes_nothing_there(tmp_path):
    import signal
    import socket
    import time

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "mtlexp", "train", "data.num_train=2048", "data.num_val=256", "data.num_test=256",
               "trainer.max_epochs=1000", f"hydra.run.dir={run_dir}"]
    with open(tmp_path / "first.out", "w") as out:  # a file, not a pipe: the progress bar would fill a pipe
        first = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while not (run_dir / "metrics.json").is_file() and time.time() < deadline and first.poll() is None:
                time.sleep(0.2)
            before = {p: p.read_bytes() for p in [run_dir / "metrics.json", *(run_dir / ".hydra").iterdir()]}
            assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"

            second = cli_in_fork(["train", "seed=1", *FAST[:3], f"hydra.run.dir={run_dir}"], tmp_path)
            assert second.returncode == 1
            assert second.stderr.strip().splitlines() == [
                f"mtlexp: error: hydra.run.dir: {run_dir} is in use by another run (pid {first.pid} on "
                f"{socket.gethostname()}); wait for it to end, or give the run a folder of its own"]
            # Not even Hydra's .hydra/ files: the first run's overrides are still the ones recorded.
            assert {p: p.read_bytes() for p in before} == before
            assert not (run_dir / "error.log").exists()
            assert "seed=1" not in (run_dir / ".hydra" / "overrides.yaml").read_text()
        finally:
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=120)


def test_a_finished_run_folder_is_refused_unless_overwrite_and_overwrite_clears_it(tmp_path):
    run_dir = tmp_path / "run"
    sizes = [*FAST[:3], "trainer.max_epochs=1"]
    first = run(["train", *sizes, f"hydra.run.dir={run_dir}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    kept = {p: p.read_bytes() for p in [run_dir / "metrics.json", *(run_dir / ".hydra").iterdir()]}
    last = run_dir / "checkpoints" / "last.ckpt"
    last_written = last.stat().st_mtime_ns

    again = cli_in_fork(["train", "seed=1", *sizes, f"hydra.run.dir={run_dir}"], tmp_path)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"mtlexp: error: hydra.run.dir: {run_dir} holds an earlier run (status ok); resume it with ckpt_path={last} "
        "(the resumed run writes a new folder), or replace it with overwrite=true"]
    assert {p: p.read_bytes() for p in kept} == kept and last.stat().st_mtime_ns == last_written

    replaced = run(["train", "seed=1", "overwrite=true", *sizes, f"hydra.run.dir={run_dir}"], tmp_path)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["seed"] == 1
    # Nothing of the first run is left to mix with the second's: TensorBoard event files of one process only.
    events = [p.name for p in (run_dir / "tensorboard").rglob("events.out.tfevents.*")]
    assert events and all(f".{metrics['pid']}." in name for name in events), events
    assert [line.startswith("epoch,") for line in (run_dir / "csv" / "metrics.csv").read_text().splitlines()].count(True) == 1


@pytest.mark.parametrize("args,expected", [
    (["model.num_expert=4"], "model.num_expert: no such key; did you mean model.num_experts?"),
    (["-m", "model.num_expert=2,4"], "model.num_expert: no such key; did you mean model.num_experts?"),
    (["model=shared_bottom", "model/gate=topk"],
     "model/gate: model=shared_bottom has no gate; the model configs with one: cgc, mmoe, omoe, ple"),
])
def test_hydra_composition_mistakes_are_one_line(tmp_path, args, expected):
    result = cli_in_fork(["train", *args, f"hydra.run.dir={tmp_path / 'r'}", f"hydra.sweep.dir={tmp_path / 's'}"],
                         tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"mtlexp: error: {expected}"]
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()
