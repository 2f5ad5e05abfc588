"""scripts/study_tuned.sh end to end in its quick mode (MTLEXP_TUNED_QUICK=1: 2 trials of 1 epoch per model,
2 rerun seeds) on the small census files the data tests make: every model searched, its best configuration
rerun with unseen seeds, the tuned table against shared-bottom, and summary.md."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.data.conftest import make_census  # noqa: F401 (the fixture, shared with the data tests)

optuna = pytest.importorskip("optuna")

SCRIPT = Path(__file__).parents[2] / "scripts" / "study_tuned.sh"
# Two of the five, one per kind of search space the script adds (a bottom width; experts per task and shared):
# every model is another two processes of the same code path (OMoE/MMoE's space is composed in test_hpo.py).
MODELS = ["shared_bottom", "cgc"]


def helper():
    """scripts/tuned_study.py, the script's file reader, as a module."""
    spec = importlib.util.spec_from_file_location("tuned_study", SCRIPT.parent / "tuned_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rerun_takes_the_newest_best_trial_of_a_resumed_study_and_a_study_without_one_stops_it(tmp_path):
    # Each command that runs trials writes best_trial.yaml over the whole study into its own sweep folder; one that
    # finds the study complete writes none: the newest file is the study's best.
    for stamp, lr in (("2026-12-06_10-00-00", 0.01), ("2026-12-07_09-00-00", 0.002)):
        (tmp_path / stamp).mkdir()
        (tmp_path / stamp / "best_trial.yaml").write_text(yaml.safe_dump(
            {"best_value": 0.5, "best_params": {"optimizer.lr": lr, "model.expert_hidden": "[32]"}}, sort_keys=False))
    (tmp_path / "2026-12-08_09-00-00").mkdir()
    assert helper().best_params(tmp_path) == ["optimizer.lr=0.002", "model.expert_hidden=[32]"]
    with pytest.raises(SystemExit, match="no best_trial.yaml under .*: the search did not finish"):
        helper().best_params(tmp_path / "2026-12-08_09-00-00")


@pytest.mark.slow
def test_the_tuned_study_searches_every_model_reruns_its_best_configuration_and_reports_it(tmp_path, make_census):
    census = make_census()
    # The script calls mtlexp and python by name: this interpreter's environment's.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "MTLEXP_TUNED_QUICK": "1", "MTLEXP_TUNED_MODELS": " ".join(MODELS), "PATH": path,
           "PYTHON": sys.executable, "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(["bash", str(SCRIPT), str(census)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "== budget: 2 models x 2 trials x 3 stacked seeds x 1 epochs" in result.stdout
    root = tmp_path / "multirun" / "tuned"

    best = {}
    for model in MODELS:
        storage = f"sqlite:///{root / 'search' / model / 'optuna.db'}"
        study = optuna.load_study(study_name=f"tuned_{model}", storage=storage)
        assert len(study.trials) == 2 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
        (found,) = (root / "search" / model).glob("*/best_trial.yaml")
        best[model] = yaml.safe_load(found.read_text())
        # The per-model dimensions were searched: shared-bottom's width, the experts of the others.
        assert ("model.bottom_hidden" in best[model]["best_params"]) == (model == "shared_bottom")
        assert ("model.num_task_experts" in best[model]["best_params"]) == (model in ("cgc", "ple"))

        # The rerun: the best configuration, with seeds the search never used (it used 1-3).
        for seed in (101, 102):
            replica = root / "rerun" / model / "replicas" / f"seed_{seed}"
            assert json.loads((replica / "metrics.json").read_text())["status"] == "ok"
            config = yaml.safe_load((replica / ".hydra" / "config.yaml").read_text())
            assert config["seed"] == seed and config["model"]["_name_"] == model
            assert config["optimizer"]["lr"] == pytest.approx(best[model]["best_params"]["optimizer.lr"])
            assert config["data"]["batch_size"] == best[model]["best_params"]["data.batch_size"]

    # The tuned table: one group per model, every model compared with shared-bottom over the paired seeds,
    # although the arms differ in their tuned lr and widths too.
    report = pd.read_csv(root / "report" / "report.csv")
    assert sorted(report["group"].unique()) == sorted(f"model={m}" for m in MODELS)
    delta = report[report["metric"] == "delta_m"].set_index("model")
    assert delta.loc["shared_bottom", "rel_change_pct"] == 0.0
    assert delta.drop("shared_bottom")["n_pairs"].eq(2).all() and delta["rel_change_pct"].notna().all()
    md = (root / "report" / "report.md").read_text()
    assert "Δm vs model=shared_bottom (%)" in md and "## Settings of each group" in md

    summary = (root / "summary.md").read_text()
    assert "Budget per model: 2 trials x 3 stacked seeds x 1 epochs" in summary
    assert "seeds 101-102 (stack=2)" in summary and " of 4 trials pruned (" in summary
    for model in MODELS:
        record = root / "rerun" / model / "replicas" / "seed_101" / "metrics.json"
        params = json.loads(record.read_text())["num_params"]
        assert f"| {model} | " in summary and f"| {params:,} |" in summary
        assert f"| search {model} | " in summary and f"| rerun {model} | " in summary
    assert "| total | " in summary
