"""Parallel sweep jobs on one machine (hydra/launcher=joblib) share the cores: torch in each job computes on
max(1, cores // jobs at once) threads, recorded in the run's provenance.json (docs/scaling.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import joblib
import pytest

pytestmark = pytest.mark.slow

TINY = [
    "data.num_train=512", "data.num_val=256", "data.num_test=256", "data.batch_size=64",
    "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none",
]


def test_joblib_jobs_get_cores_divided_by_jobs_at_once(tmp_path: Path):
    sweep = tmp_path / "sweep"
    # A user's OMP_NUM_THREADS is what loky would hand every worker unchanged: the job must override it.
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": str(os.cpu_count())}
    result = subprocess.run(
        [sys.executable, "-m", "mtlexp", "train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = max(1, joblib.cpu_count() // 2)
    for job in ("0", "1"):
        threads = json.loads((sweep / job / "provenance.json").read_text())["threads"]
        assert threads["torch"] == expected, threads
        assert threads["OMP_NUM_THREADS"] == str(expected), threads
