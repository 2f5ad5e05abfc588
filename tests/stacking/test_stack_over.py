"""``stack_over``: replicas of one stacked run that differ in more than the seed, each the single run it stands for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtlexp.errors import MtlexpError
from mtlexp.report.records import load_runs
from mtlexp.report.sweep import find_runs, run_overrides
from mtlexp.train import train
from tests.conftest import FAST, cli_in_fork

CORRELATIONS = "{data.correlation:[0.5,1.0]}"


def mtlexp(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "mtlexp", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.slow
def test_a_varied_stacked_run_is_the_sweep_over_its_values(tmp_path):
    # The same study twice through the CLI: 2 correlations x 2 seeds as one stacked run, and as a -m sweep.
    stacked_dir, sweep_dir = tmp_path / "stacked", tmp_path / "sweep"
    stacked = mtlexp(["train", *FAST, "seed=3", "stack=2", f"stack_over={CORRELATIONS}",
                      f"hydra.run.dir={stacked_dir}"], tmp_path)
    assert stacked.returncode == 0, stacked.stderr[-3000:]
    sweep = mtlexp(["train", "-m", *FAST, "data.correlation=0.5,1.0", "seed=3,4", f"hydra.sweep.dir={sweep_dir}"],
                   tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]

    record = json.loads((stacked_dir / "metrics.json").read_text())
    assert record["replicas"] == [f"replicas/data.correlation_{c}/seed_{s}" for c in (0.5, 1.0) for s in (3, 4)]
    replicas, jobs = find_runs([stacked_dir]), find_runs([sweep_dir])
    assert [str(r.relative_to(stacked_dir)) for r in replicas] == sorted(record["replicas"])
    by_overrides = {tuple(run_overrides(job)): job for job in jobs}
    for replica in replicas:
        # Each replica's overrides are those the sweep's job with its values wrote, in the same order.
        job = by_overrides.pop(tuple(run_overrides(replica)))
        ours, theirs = (json.loads((run / "metrics.json").read_text()) for run in (replica, job))
        assert (ours["seed"], ours["data"]["rows"]) == (theirs["seed"], theirs["data"]["rows"])
        assert ours["best_epoch"] == theirs["best_epoch"]
        for split in ("val", "test"):
            for task, values in theirs[split].items():
                for name, value in values.items():
                    assert ours[split][task][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (replica, split, name)
        config = (replica / ".hydra" / "config.yaml").read_text()
        assert "stack: 1\n" in config and "stack_over: null\n" in config
        assert (replica / "checkpoints" / "best.ckpt").is_file() and (replica / "csv" / "metrics.csv").is_file()

    # mtlexp report groups the stacked replicas as it groups the sweep's jobs.
    ours, theirs = load_runs(replicas), load_runs(jobs)
    assert ours.swept == theirs.swept == ["data.correlation"]
    groups = [sorted(zip(study.runs["group"], study.runs["seed"])) for study in (ours, theirs)]
    assert groups[0] == groups[1] == [("data.correlation=0.5", 3), ("data.correlation=0.5", 4),
                                      ("data.correlation=1.0", 3), ("data.correlation=1.0", 4)]


@pytest.mark.parametrize(("over", "line"), [
    ("{model.num_experts:[4,8]}", "stack_over.model.num_experts: cannot vary across the replicas of a stacked run: "
                                  "it changes the model (one architecture, with its sizes, runs every replica); "
                                  "sweep it instead (-m model.num_experts=a,b)"),
    ("{data.batch_size:[32,64]}", "stack_over.data.batch_size: cannot vary across the replicas of a stacked run: "
                                  "it changes the batch shapes"),
    ("{optimizer.lr:[0.1,0.01]}", "stack_over.optimizer.lr: cannot vary across the replicas of a stacked run: it "
                                  "changes the optimizer (one steps every replica)"),
    ("{data.corelation:[0.5,1.0]}", "stack_over.data.corelation: not a key of the config"),
    ("{data.correlation:[0.5,0.5]}", "stack_over.data.correlation: expected distinct values"),
    ("{data.correlation:0.5}", "stack_over.data.correlation: expected a list of values, got 0.5"),
    ("3", "stack_over: expected a mapping {key: [values]}"),
])
def test_a_key_the_replicas_share_is_refused_in_one_line(tmp_path, over, line):
    result = cli_in_fork(["train", "stack=2", f"stack_over={over}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert line in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_a_data_key_that_changes_the_parameter_shapes_is_refused_naming_it(make_cfg):
    with pytest.raises(MtlexpError, match=r"^stack_over.data.num_features: cannot vary across the replicas of a "
                                          r"stacked run: it changes the model's parameter shapes \("):
        train(make_cfg("stack_over={data.num_features:[8,16]}"))
