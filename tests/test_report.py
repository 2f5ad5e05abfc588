"""``mtlexp report``: statistics on known numbers, run records from hand-made run folders, the CLI end to end.

No training: every run folder here is written by hand (``.hydra/config.yaml``, ``overrides.yaml``,
``hydra.yaml``, ``metrics.json``) with numbers chosen so that the expected results can be worked out on paper.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats

from mtlexp.report.records import RECORD_SCHEMA, find_runs, load_runs
from mtlexp.report.stats import delta_m, metric_direction, paired_delta_m_test, paired_test, relative_change, summarize
from mtlexp.report.sweep import main
from mtlexp.specs import MAX, MIN, ZERO
from tests.conftest import cli_in_fork

T_975_2DOF = 4.302652729749462  # Student t, 97.5% quantile, 2 degrees of freedom (tables: 4.303)


def write_run(folder: Path, config: dict[str, Any], metrics: dict[str, Any], overrides: list[str]) -> Path:
    """A run folder as ``mtlexp train`` leaves it (the parts the report reads)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"config_name": "config"}}}))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def config(model: str, correlation: float, seed: int, folder: Path, num_experts: int = 4) -> dict[str, Any]:
    """A run config; the model node differs in many leaves between models, as the real ones do."""
    mmoe = {"_name_": "mmoe", "_target_": "mtlexp.models.MMoE", "num_experts": num_experts, "expert_hidden": [16]}
    model_node = {"_name_": "esmm", "_target_": "mtlexp.models.ESMM", "bottom": mmoe} if model == "esmm(mmoe)" else mmoe
    return {"data": {"correlation": correlation, "num_train": 512}, "model": model_node,
            "weighting": {"_name_": "equal", "_target_": "mtlexp.weighting.EqualWeighting", "seed": "${seed}"},
            "paths": {"output_dir": str(folder)}, "seed": seed, "ckpt_path": None}


def metrics(model: str, seed: int, auroc: float, mse: float, status: str = "ok", **extra: Any) -> dict[str, Any]:
    split = {"click": {"auroc": auroc, "log_loss": 0.5}, "age": {"mse": mse, "mae": 1.0}}
    return {"status": status, "seed": seed, "model": model, "val": split, "test": split, "val_norm_loss": mse / 2,
            "test_norm_loss": mse / 2, "best_epoch": 1, "epochs_trained": 2, "duration_s": 1.5, **extra}


# test AUROC and MSE per (model, seed): the gains of esmm(mmoe) over mmoe are known by construction.
AUROC = {("mmoe", 0): 0.80, ("mmoe", 1): 0.82, ("mmoe", 2): 0.84,
         ("esmm(mmoe)", 0): 0.88, ("esmm(mmoe)", 1): 0.902, ("esmm(mmoe)", 2): 0.924}  # +10% on every seed
MSE = {("mmoe", 0): 1.0, ("mmoe", 1): 2.0, ("mmoe", 2): 3.0,
       ("esmm(mmoe)", 0): 1.1, ("esmm(mmoe)", 1): 1.8, ("esmm(mmoe)", 2): 3.3}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """model=mmoe,esmm(mmoe) x data.correlation=0.5,0.9 x seed=0,1,2 (correlation only changes nothing measured),
    plus a failed run and a run whose config is gone."""
    root = tmp_path / "sweep"
    job = 0
    for model in ("mmoe", "esmm(mmoe)"):
        for correlation in (0.5, 0.9):
            for seed in (0, 1, 2):
                folder = root / str(job)
                overrides = [f"model={model.split('(')[0]}", f"data.correlation={correlation}", f"seed={seed}"]
                write_run(folder, config(model, correlation, seed, folder),
                          metrics(model, seed, AUROC[model, seed], MSE[model, seed]), overrides)
                job += 1
    failed = root / "12"
    write_run(failed, config("mmoe", 0.5, 3, failed),
              {"status": "failed", "seed": 3, "error": "ValueError: loss is nan | at step 7"},
              ["model=mmoe", "data.correlation=0.5", "seed=3"])
    lost = write_run(root / "13", config("mmoe", 0.5, 4, root / "13"), metrics("mmoe", 4, 0.9, 1.0),
                     ["model=mmoe", "data.correlation=0.5", "seed=4"])
    (lost / ".hydra" / "config.yaml").unlink()
    return root


# -- statistics ------------------------------------------------------------------------------------------------


def test_summary_of_1_2_3_is_mean_2_sd_1_and_the_student_t_interval():
    s = summarize([1.0, 2.0, 3.0])
    half = T_975_2DOF * 1.0 / math.sqrt(3)
    assert (s.n, s.mean, s.sd) == (3, 2.0, 1.0)
    assert s.ci_low == pytest.approx(2.0 - half) and s.ci_high == pytest.approx(2.0 + half)
    assert s.ci_low == pytest.approx(-0.4841, abs=1e-4)


def test_one_value_has_no_spread_or_interval_and_none_has_no_mean():
    one = summarize([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.sd) and math.isnan(one.ci_low)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


def test_delta_m_counts_a_gain_as_positive_whatever_the_metric_direction():
    directions = {"income": MAX, "age": MIN}
    # AUC up 1% (a gain), MSE up 10% (a loss): mean of +1% and -10%.
    assert delta_m({"income": 0.909, "age": 1.1}, {"income": 0.9, "age": 1.0}, directions) == pytest.approx(-4.5)
    assert delta_m({"income": 0.9, "age": 1.0}, {"income": 0.9, "age": 1.0}, directions) == 0.0


def test_relative_change_is_signed_by_direction_and_relative_to_the_size_of_the_baseline():
    assert relative_change(0.88, 0.80, MAX) == pytest.approx(10.0)
    assert relative_change(0.9, 1.0, MIN) == pytest.approx(10.0)  # a lower error is a gain
    assert relative_change(-0.4, -0.5, MAX) == pytest.approx(20.0)  # r2 up from -0.5 to -0.4 is a gain
    assert math.isnan(relative_change(1.0, 0.0, MIN))
    # A bias is better nearer 0, on either side: the gain is the shrinking of |bias|.
    assert relative_change(-0.01, 0.02, ZERO) == pytest.approx(50.0)
    assert relative_change(0.03, -0.02, ZERO) == pytest.approx(-50.0)


def test_a_recorded_direction_wins_and_old_records_fall_back_to_the_metric_names():
    assert metric_direction("pcvr_bias") == ZERO and metric_direction("logloss") == MIN
    assert metric_direction("calibration_gap", recorded=ZERO) == ZERO
    assert metric_direction("calibration_gap") is None  # unknown: never a guess
    assert metric_direction("auroc", recorded="sideways") is None


def test_paired_test_pairs_by_seed_and_matches_a_hand_computed_t_test():
    a = {0: 1.0, 1: 2.5, 2: 2.0, 3: 4.0}
    b = {0: 0.5, 1: 2.0, 2: 2.2, 3: 3.0, 9: 100.0}  # seed 9 has no partner
    result = paired_test(a, b)
    # Differences 0.5, 0.5, -0.2, 1.0: mean 0.45, sd sqrt(0.73 / 3), t = mean / (sd / sqrt(4)), 3 dof.
    t = 0.45 / (math.sqrt(0.73 / 3) / 2)
    assert t == pytest.approx(1.8245, abs=1e-4)
    assert result.n_pairs == 4
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(t, 3))
    assert result.p_value == pytest.approx(scipy_stats.ttest_rel([1.0, 2.5, 2.0, 4.0], [0.5, 2.0, 2.2, 3.0]).pvalue)


def test_paired_test_edge_cases_identical_differences_and_too_few_pairs():
    assert paired_test({0: 1.1, 1: 2.2, 2: 3.3}, {0: 0.1, 1: 1.2, 2: 2.3}).p_value == pytest.approx(0.0)
    assert paired_test({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}).p_value == 1.0  # nothing differs
    assert paired_test({0: 1.0, 1: 2.0}, {0: 0.5, 5: 1.0}) == paired_test({0: 1.0}, {0: 0.5})
    assert paired_test({0: 1.0, 1: 2.0}, {0: 0.5, 5: 1.0}).p_value is None
    assert paired_test({0: 1.0, 1: 2.0}, {0: 0.5, 5: 1.0}).n_pairs == 1


def test_delta_m_gets_a_paired_test_of_its_per_seed_values_against_zero():
    metrics = {"click": MAX, "age": MIN}
    values = {s: {"click": AUROC["esmm(mmoe)", s], "age": MSE["esmm(mmoe)", s]} for s in (0, 1, 2)}
    base = {s: {"click": AUROC["mmoe", s], "age": MSE["mmoe", s]} for s in (0, 1, 2)}
    per_seed = [(10.0 - 10.0) / 2, (10.0 + 10.0) / 2, (10.0 - 10.0) / 2]  # age: -10%, +10%, -10%
    result = paired_delta_m_test(values, base, metrics)
    assert result.n_pairs == 3
    assert result.p_value == pytest.approx(scipy_stats.ttest_1samp(per_seed, 0.0).pvalue)
    assert paired_delta_m_test({0: {"click": 0.9}}, base, metrics).n_pairs == 0  # seed 0 lacks a task


# -- run records -------------------------------------------------------------------------------------------------


def test_runs_are_grouped_by_what_their_configs_differ_in(sweep):
    study = load_runs(find_runs([sweep]))
    # paths.output_dir differs between every run and the model nodes in many leaves: neither is a swept key.
    assert study.swept == ["model", "data.correlation"]
    runs = study.runs.set_index(study.runs["run"].map(lambda r: Path(r).name))
    assert runs.loc["0", "group"] == "model=mmoe data.correlation=0.5"
    assert runs.loc["9", "group"] == "model=esmm(mmoe) data.correlation=0.9"  # the name metrics.json records
    assert runs.loc["9", "model"] == "esmm(mmoe)" and runs.loc["9", "data.correlation"] == 0.9
    assert runs.loc[["0", "1", "2", "12"], "seed"].tolist() == [0, 1, 2, 3]
    assert runs.loc["0", ["status", "error", "best_epoch", "epochs_trained", "duration_s"]].tolist() == \
        ["ok", "", 1, 2, 1.5]
    assert list(study.runs.columns) == ["run", "group", "seed", "status", "error", "best_epoch", "epochs_trained",
                                        "pruned_epoch", "duration_s", "model", "data.correlation"]


def test_a_failed_run_and_a_run_without_its_config_are_listed_not_dropped(sweep):
    study = load_runs(find_runs([sweep]))
    runs = study.runs.set_index(study.runs["run"].map(lambda r: Path(r).name))
    assert len(runs) == 14
    assert runs.loc["12", ["group", "status", "error"]].tolist() == \
        ["model=mmoe data.correlation=0.5", "failed", "ValueError: loss is nan | at step 7"]
    assert runs.loc["13", "status"] == "failed" and "config.yaml" in runs.loc["13", "error"]
    assert runs.loc["13", "group"] == "(unknown)"
    assert not study.values["run"].str.endswith(("/12", "/13")).any()  # only ok runs have values


def test_values_are_one_row_per_run_split_task_metric_plus_the_normalised_loss(sweep):
    study = load_runs(find_runs([sweep]))
    values = study.values
    assert list(values.columns) == ["run", "group", "seed", "model", "data.correlation", "split", "task", "metric",
                                    "direction", "value"]
    assert len(values) == 12 * 2 * (4 + 1)  # 12 ok runs x 2 splits x (2 tasks x 2 metrics + norm_loss)
    row = values[(values["run"] == str(sweep / "3")) & (values["split"] == "test") & (values["task"] == "age")
                 & (values["metric"] == "mse")]
    assert row["value"].tolist() == [MSE["mmoe", 0]]
    norm = values[(values["task"] == "*") & (values["split"] == "val")]
    assert set(norm["metric"]) == {"norm_loss"} and len(norm) == 12
    # These runs predate recorded directions: mtlexp's own metric names give them, an unknown name gives none.
    directions = values.drop_duplicates(["task", "metric"]).set_index(["task", "metric"])["direction"]
    assert directions.dropna().to_dict() == {("click", "auroc"): MAX, ("age", "mse"): MIN, ("age", "mae"): MIN,
                                             ("*", "norm_loss"): MIN}
    assert pd.isna(directions["click", "log_loss"])


def test_a_leaf_that_varies_within_one_model_is_a_key_of_its_own_and_runs_of_other_sweeps_join(tmp_path):
    # Two sweeps, one nested deeper than the other; only model.num_experts differs (the model name does not).
    for i, (experts, folder) in enumerate([(4, tmp_path / "a" / "0"), (8, tmp_path / "b" / "x" / "0")]):
        write_run(folder, config("mmoe", 0.5, 0, folder, num_experts=experts), metrics("mmoe", 0, 0.8 + i, 1.0),
                  [f"model.num_experts={experts}"])
    study = load_runs(find_runs([tmp_path]))
    assert study.swept == ["model.num_experts"]
    assert sorted(study.runs["group"]) == ["model.num_experts=4", "model.num_experts=8"]


def test_a_stacked_run_is_its_replicas_and_a_key_added_later_as_null_is_not_swept(tmp_path):
    stacked = tmp_path / "stacked"
    parent = config("mmoe", 0.5, 0, stacked)
    write_run(stacked, {**parent, "stack": 2, "new_option": None}, {"status": "ok", "stack": 2, "model": "mmoe",
              "replicas": ["replicas/seed_0", "replicas/seed_1"], "test_norm_loss": 0.5}, ["stack=2"])
    for seed in (0, 1):
        folder = stacked / "replicas" / f"seed_{seed}"
        write_run(folder, {**config("mmoe", 0.5, seed, folder), "stack": 1, "new_option": None},
                  metrics("mmoe", seed, 0.8, 1.0), [f"seed={seed}"])
    older = tmp_path / "older"  # a sequential run made before new_option existed
    write_run(older, config("mmoe", 0.5, 2, older), metrics("mmoe", 2, 0.8, 1.0), ["seed=2"])
    study = load_runs(find_runs([tmp_path]))
    assert sorted(Path(r).name for r in study.runs["run"]) == ["older", "seed_0", "seed_1"]
    assert study.swept == [] and set(study.runs["group"]) == {"(all)"}


def test_nothing_swept_but_the_seed_is_one_group(tmp_path):
    for seed in (0, 1):
        folder = tmp_path / str(seed)
        write_run(folder, config("mmoe", 0.5, seed, folder), metrics("mmoe", seed, 0.8, 1.0), [f"seed={seed}"])
    study = load_runs(find_runs([tmp_path]))
    assert study.swept == [] and set(study.runs["group"]) == {"(all)"}


def bias_study(root: Path, recorded: dict[str, Any] | None, metric: str = "pcvr_bias") -> Path:
    """naive_cvr against esmm (the baseline), one seed each: esmm's conversion bias is +0.02, naive_cvr's -0.01,
    half as far from 0. ``recorded``: metrics.json's ``directions`` (None: a run from before they were recorded)."""
    for job, (model, bias) in enumerate((("esmm", 0.02), ("naive_cvr", -0.01))):
        folder = root / str(job)
        split = {"conversion": {"auroc": 0.7, metric: bias}}
        record = {"status": "ok", "seed": 0, "model": model, "val": split, "test": split, "val_norm_loss": 0.9,
                  "test_norm_loss": 0.9, **({"directions": recorded} if recorded is not None else {})}
        cfg = {"model": {"_name_": model, "_target_": f"mtlexp.models.{model}"}, "seed": 0}
        write_run(folder, cfg, record, [f"model={model}"])
    return root


@pytest.mark.parametrize("recorded", [None, {"conversion": {"auroc": "max", "pcvr_bias": "zero", "norm_loss": "min"}}],
                         ids=["old-run-folders", "recorded-directions"])
def test_a_bias_nearer_zero_is_a_gain_in_the_relative_change_and_delta_m(tmp_path, recorded):
    out = tmp_path / "out"
    study = bias_study(tmp_path / "runs", recorded)
    args = ["--metric", "pcvr_bias", "--baseline", "model=esmm", "--out", str(out), "--no-figures"]
    assert main([str(study), *args]) == 0
    csv = pd.read_csv(out / "report.csv").set_index(["group", "metric"])
    # |bias| from 0.02 to 0.01: a 50% gain, not a 150% loss (as if a larger bias were better).
    assert csv.loc[("model=naive_cvr", "pcvr_bias"), "direction"] == "zero"
    assert csv.loc[("model=naive_cvr", "pcvr_bias"), "rel_change_pct"] == pytest.approx(50.0)
    assert csv.loc[("model=naive_cvr", "delta_m"), "rel_change_pct"] == pytest.approx(50.0)


def test_the_report_reads_a_metrics_direction_from_the_record_and_never_guesses_one(tmp_path, capsys):
    recorded = bias_study(tmp_path / "recorded", {"conversion": {"calibration_gap": "zero"}}, metric="calibration_gap")
    assert main([str(recorded), "--metric", "calibration_gap", "--baseline", "model=esmm", "--no-figures"]) == 0
    csv = pd.read_csv(recorded / "report.csv").set_index(["group", "metric"])
    assert csv.loc[("model=naive_cvr", "calibration_gap"), "rel_change_pct"] == pytest.approx(50.0)

    unknown = bias_study(tmp_path / "unknown", None, metric="calibration_gap")
    assert main([str(unknown), "--metric", "calibration_gap", "--baseline", "model=esmm", "--no-figures"]) == 1
    assert "which way conversion calibration_gap improves is not recorded" in capsys.readouterr().err
    # Without a baseline nothing is compared, and no direction is needed.
    assert main([str(unknown), "--metric", "calibration_gap", "--no-figures"]) == 0


# -- the CLI -------------------------------------------------------------------------------------------------------


def test_the_report_command_reads_run_folders_without_importing_torch(sweep, tmp_path):
    # Reports read run folders only (docs/architecture.md): starting one must not pay for torch and Lightning.
    code = ("import sys; from mtlexp.cli import main\n"
            f"try: main(['report', {str(sweep)!r}, '--out', {str(tmp_path / 'out')!r}])\n"
            "except SystemExit as done: assert done.code == 0, done.code\n"
            "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-2000:]
    assert (tmp_path / "out" / "report.md").is_file()


def test_report_end_to_end_with_a_baseline(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(sweep), "--baseline", "model=mmoe", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Δm vs model=mmoe (%)" in printed and "report: " in printed
    assert (out / "report.md").is_file() and (out / "report.csv").is_file()
    assert not (sweep / "report.md").exists()

    csv = pd.read_csv(out / "report.csv")
    assert list(csv.columns) == ["schema", "split", "group", "model", "data.correlation", "task", "metric",
                                 "direction", "n", "mean", "sd", "ci_low", "ci_high", "rel_change_pct", "n_pairs",
                                 "p_value", "significant"]
    assert set(csv["schema"]) == {RECORD_SCHEMA} and set(csv["split"]) == {"test"}
    # 4 groups with a config x (2 tasks + norm_loss + delta_m), and the group of the run without a config.
    assert len(csv) == 5 * 4
    row = csv[(csv["group"] == "model=mmoe data.correlation=0.5") & (csv["task"] == "age")].iloc[0]
    assert row["metric"] == "mse" and row["n"] == 3  # the failed 4th run is not a sample
    assert (row["mean"], row["sd"]) == (pytest.approx(2.0), pytest.approx(1.0))
    assert row["ci_high"] == pytest.approx(2.0 + T_975_2DOF / math.sqrt(3))

    esmm = csv[csv["group"] == "model=esmm(mmoe) data.correlation=0.9"].set_index("task")
    # click: +10% on every seed, a clear gain; age: 2.0667 against 2.0, lower is better, a loss by chance.
    assert esmm.loc["click", "rel_change_pct"] == pytest.approx(10.0)
    click_p = scipy_stats.ttest_rel([0.88, 0.902, 0.924], [0.80, 0.82, 0.84]).pvalue
    assert esmm.loc["click", "p_value"] == pytest.approx(click_p) and click_p < 0.001
    assert bool(esmm.loc["click", "significant"])
    assert esmm.loc["age", "rel_change_pct"] == pytest.approx(-100 * (6.2 / 3 - 2.0) / 2.0)
    age_p = scipy_stats.ttest_rel([1.1, 1.8, 3.3], [1.0, 2.0, 3.0]).pvalue
    assert esmm.loc["age", "p_value"] == pytest.approx(age_p) and not bool(esmm.loc["age", "significant"])
    delta = esmm[esmm["metric"] == "delta_m"].iloc[0]
    assert delta["rel_change_pct"] == pytest.approx((10.0 - 100 * (6.2 / 3 - 2.0) / 2.0) / 2)
    assert delta["n_pairs"] == 3 and delta["p_value"] == pytest.approx(scipy_stats.ttest_1samp([0, 10, 0], 0).pvalue)
    base = csv[(csv["group"] == "model=mmoe data.correlation=0.9") & (csv["metric"] == "delta_m")].iloc[0]
    assert base["rel_change_pct"] == 0.0 and pd.isna(base["p_value"])

    md = (out / "report.md").read_text()
    assert f"Record schema {RECORD_SCHEMA}; split: test; metric per task: click auroc, age mse." in md
    assert "| model=esmm(mmoe) data.correlation=0.9 | 3 | 0.9020 ± 0.0220 [" in md
    assert "| +10.00 (p<0.001)* |" in md
    assert "| model=mmoe data.correlation=0.5 | 3 (+1 failed) |" in md
    failed = md.split("## Failed runs", 1)[1]
    error = "ValueError: loss is nan \\| at step 7"  # a | would end the cell
    assert f"| {sweep / '12'} | model=mmoe data.correlation=0.5 | 3 | failed | {error} |" in failed
    assert str(sweep / "13") in failed and "config.yaml" in failed
    assert str(sweep / "0") + " " not in failed


def test_report_md_links_every_figure_it_wrote(sweep, tmp_path):
    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    links = re.findall(r"^!\[[^\]]*\]\(([^)]+)\)$", md.split("## Figures", 1)[1], flags=re.MULTILINE)
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs and sorted(links) == pngs  # relative to report.md, each once
    assert main([str(sweep), "--out", str(tmp_path / "bare"), "--no-figures"]) == 0
    assert "## Figures" not in (tmp_path / "bare" / "report.md").read_text()


def test_report_defaults_write_into_the_first_folder_and_take_split_and_metric(sweep, capsys):
    assert main([str(sweep), "--split", "val", "--metric", "mae"]) == 1  # click has no mae
    assert "--metric: task 'click' has no 'mae'" in capsys.readouterr().err
    assert main([str(sweep), "--split", "val"]) == 0
    printed = capsys.readouterr().out
    assert "click val auroc" in printed and "age val mse" in printed and "Δm" not in printed
    assert "2 run(s) not ok" in printed
    assert "split: val" in (sweep / "report.md").read_text()
    assert set(pd.read_csv(sweep / "report.csv")["split"]) == {"val"}


@pytest.mark.parametrize("args,message", [
    (["--baseline", "model=nope"], "--baseline: 'nope' is not among the swept values of model: esmm(mmoe), mmoe"),
    (["--baseline", "weighting=equal"], "--baseline: expected a swept override"),  # not swept here
    (["--baseline", "model"], "--baseline: expected a swept override"),
    (["--alpha", "2"], "--alpha: expected a level in (0, 1)"),
])
def test_bad_arguments_are_one_line_errors(sweep, capsys, args, message):
    assert main([str(sweep), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mtlexp: error: {message}") and err.count("\n") == 1


def test_missing_folders_and_folders_without_runs_are_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 1
    assert "no run folders" in capsys.readouterr().err


def test_a_baseline_value_matches_however_it_is_typed(sweep, tmp_path):
    assert main([str(sweep), "--baseline", "data.correlation=0.50", "--out", str(tmp_path / "o")]) == 0
    csv = pd.read_csv(tmp_path / "o" / "report.csv")
    # correlation changes nothing measured: every group is level with its baseline.
    assert csv.loc[csv["metric"] == "delta_m", "rel_change_pct"].dropna().abs().max() == pytest.approx(0.0, abs=1e-9)
    assert csv.loc[csv["metric"] == "delta_m", "rel_change_pct"].notna().sum() == 4


def test_a_run_recorded_as_running_whose_process_is_gone_is_stale_not_failed(tmp_path):
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
        write_run(tmp_path / job, config("mmoe", 0.5, int(job), tmp_path / job), record, ["model=mmoe"])
    result = cli_in_fork(["report", str(tmp_path)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 (+1 stale)" in result.stdout, result.stdout


# -- search trials: pruned ones, and a multi-objective search's Pareto front -------------------------------------


def test_pruned_trials_are_listed_apart_from_failed_runs_and_left_out_of_the_tables(sweep, tmp_path, capsys):
    pruned = sweep / "14"
    write_run(pruned, config("mmoe", 0.5, 5, pruned),
              metrics("mmoe", 5, 0.10, 50.0, status="pruned", pruned_epoch=1, test={}),
              ["model=mmoe", "data.correlation=0.5", "seed=5"])
    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out), "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "2 run(s) not ok: listed under 'Failed runs'" in printed
    assert "1 run(s) pruned by their study: listed under 'Pruned runs'" in printed
    md = (out / "report.md").read_text()
    assert "15 runs (12 ok, 1 pruned) in 5 groups" in md
    # Its AUROC of 0.10 would pull the group's mean down: the cell keeps the 3 ok runs' 0.80, 0.82, 0.84.
    assert "| model=mmoe data.correlation=0.5 | 3 (+1 failed, +1 pruned) | 0.8200 ± 0.0200 [" in md
    failed, pruned_section = md.split("## Failed runs", 1)[1].split("## Pruned runs", 1)
    assert str(sweep / "14") not in failed and str(sweep / "12") in failed
    assert f"| {sweep / '14'} | model=mmoe data.correlation=0.5 | 5 | 1 | 1 |" in pruned_section
    study = load_runs(find_runs([sweep]))
    assert study.runs.set_index("run").loc[str(pruned), "status"] == "pruned"
    assert str(pruned) not in set(study.values["run"])


def test_a_report_without_pruned_runs_has_no_pruned_section(sweep, tmp_path):
    assert main([str(sweep), "--out", str(tmp_path), "--no-figures"]) == 0
    assert "Pruned" not in (tmp_path / "report.md").read_text()


# -- a tuned study: arms that differ in more than the compared key (--group-by) ---------------------------------


# Each arm's best configuration, rerun with seeds 101..103: the arms differ in the model and in what was tuned.
SHARED_BOTTOM = {"_name_": "shared_bottom", "_target_": "mtlexp.models.SharedBottom", "bottom_hidden": [256]}
TUNED = {"shared_bottom": (SHARED_BOTTOM, 0.003, 1024),
         "mmoe": ({"_name_": "mmoe", "_target_": "mtlexp.models.MMoE", "num_experts": 8, "expert_hidden": [32]},
                  0.001, 512)}


GAIN = {101: 0.02, 102: 0.03, 103: 0.01}  # mmoe's click AUROC over shared_bottom's, per seed


def tuned_study(root: Path, pooled_lr: float | None = None) -> Path:
    """The reruns of a tuned study: mmoe's click AUROC is shared_bottom's + ``GAIN``. ``pooled_lr``:
    one more mmoe run (seed 104) at another learning rate, as if two reruns had been read together."""
    runs = [(model, seed, lr) for model, (_, lr, _) in TUNED.items() for seed in (101, 102, 103)]
    if pooled_lr is not None:
        runs.append(("mmoe", 104, pooled_lr))
    for model, seed, lr in runs:
        node, _, batch_size = TUNED[model]
        folder = root / model / "replicas" / f"seed_{seed}"
        auroc = 0.80 + 0.01 * (seed - 100) + (GAIN.get(seed, 0.0) if model == "mmoe" else 0.0)
        write_run(folder, {"data": {"batch_size": batch_size}, "model": node, "optimizer": {"lr": lr},
                           "paths": {"output_dir": str(folder)}, "seed": seed, "stack": 1},
                  metrics(model, seed, auroc, 1.0), [f"model={model}", f"optimizer.lr={lr}", f"seed={seed}"])
    return root


def test_by_default_a_tuned_study_is_grouped_by_every_key_its_arms_differ_in(tmp_path, capsys):
    # Unchanged default: the arms differ in lr and batch size too, so no group differs from another only in model.
    root = tuned_study(tmp_path / "tuned")
    study = load_runs(find_runs([root]))
    assert study.swept == ["model", "optimizer.lr", "data.batch_size"] and study.others is None
    assert main([str(root), "--baseline", "model=shared_bottom", "--out", str(tmp_path / "out"), "--no-figures"]) == 0
    csv = pd.read_csv(tmp_path / "out" / "report.csv")
    assert csv.loc[(csv["model"] == "mmoe") & (csv["metric"] == "delta_m"), "rel_change_pct"].isna().all()
    assert "Settings of each group" not in (tmp_path / "out" / "report.md").read_text()


def test_group_by_model_compares_the_arms_of_a_tuned_study_and_lists_their_other_settings(tmp_path, capsys):
    root = tuned_study(tmp_path / "tuned")
    out = tmp_path / "out"
    assert main([str(root), "--group-by", "model", "--baseline", "model=shared_bottom", "--out", str(out),
                 "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "pool runs" not in printed  # every group is one configuration
    csv = pd.read_csv(out / "report.csv")
    assert list(csv.columns[:4]) == ["schema", "split", "group", "model"] and "optimizer.lr" not in csv.columns
    click = csv[(csv["group"] == "model=mmoe") & (csv["task"] == "click")].iloc[0]
    assert click["n"] == 3 and click["n_pairs"] == 3
    assert click["rel_change_pct"] == pytest.approx(100 * 0.02 / 0.82)
    assert click["p_value"] == pytest.approx(scipy_stats.ttest_rel([0.83, 0.85, 0.84], [0.81, 0.82, 0.83]).pvalue)

    md = (out / "report.md").read_text()
    assert "Grouped by model only" in md
    settings = md.split("## Settings of each group", 1)[1].split("## Failed runs", 1)[0]
    # What was tuned is in plain sight: each arm's lr, batch size and widths (a key an arm lacks is left out).
    assert ("| model=mmoe | optimizer.lr=0.001, data.batch_size=512, model.num_experts=8, model.expert_hidden=[32] "
            "| - |") in settings
    assert ("| model=shared_bottom | optimizer.lr=0.003, data.batch_size=1024, model.bottom_hidden=[256] | - |"
            in settings)


def test_group_by_names_the_keys_that_differ_inside_a_group(tmp_path, capsys):
    root = tuned_study(tmp_path / "tuned", pooled_lr=0.01)
    out = tmp_path / "out"
    assert main([str(root), "--group-by", "model", "--out", str(out), "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "1 group(s) pool runs that differ in optimizer.lr: listed under 'Settings of each group'" in printed
    md = (out / "report.md").read_text()
    assert "| model=mmoe | 4 |" in md
    assert ("| model=mmoe | data.batch_size=512, model.num_experts=8, model.expert_hidden=[32] "
            "| optimizer.lr in {0.001, 0.01} |") in md
    # Runs pooled by --group-by are still listed one by one, under the group they were pooled into.
    assert load_runs(find_runs([root]), ["model"]).runs["group"].value_counts()["model=mmoe"] == 4


@pytest.mark.parametrize("value,message", [
    ("nope", "--group-by: 'nope' is not a key these runs differ in; they differ in: model, optimizer.lr, "
             "data.batch_size, model.num_experts, model.expert_hidden, model.bottom_hidden"),
    ("model,,seed", "--group-by: expected config keys separated by commas (e.g. model), got 'model,,seed'"),
])
def test_a_group_by_key_the_runs_do_not_differ_in_is_one_line(tmp_path, capsys, value, message):
    root = tuned_study(tmp_path / "tuned")
    assert main([str(root), "--group-by", value, "--no-figures"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mtlexp: error: {message}") and err.count("\n") == 1


OBJECTIVES = ["val/income/auroc", "val/never_married/auroc"]
# (income, never_married) validation AUROC per trial: 1, 3 and 4 are the front (maximising both), 0 and 2 are
# dominated (by 1 and by 3), 5 failed and 6 was pruned (no objectives).
TRIALS = {0: (0.90, 0.95), 1: (0.91, 0.97), 2: (0.92, 0.93), 3: (0.94, 0.96), 4: (0.95, 0.94)}


def search_folder(root: Path) -> Path:
    """A multi-objective search folder as the sweeper leaves it: trial run folders written with the run record's
    own writer, and best_trials.yaml with the front."""
    from mtlexp.run_record import RunRecord, Status, write_record

    for number in range(7):
        folder = root / str(number)
        # The sweeper gives every trial its number: a trial's identity, not a setting that tells groups apart.
        trial = {"study_name": "mo", "storage": f"sqlite:///{root / 'optuna.db'}", "number": number}
        write_run(folder, config("mmoe", 0.5, 0, folder) | {"optimizer": {"lr": 10 ** -(number % 4)}, "trial": trial},
                  {}, [f"optimizer.lr={10 ** -(number % 4)}", f"trial.number={number}"])
        if number in TRIALS:
            income, never_married = TRIALS[number]
            values = {"income": {"auroc": income}, "never_married": {"auroc": never_married}}
            write_record(folder, RunRecord(status=Status.OK, seed=0, model="mmoe", val=values, test=values,
                                           val_norm_loss=0.5, test_norm_loss=0.5,
                                           directions={"income": {"auroc": MAX}, "never_married": {"auroc": MAX}}))
        else:
            write_record(folder, RunRecord(status=Status.FAILED if number == 5 else Status.PRUNED, seed=0,
                                           pruned_epoch=None if number == 5 else 2))
    front = [{"number": n, "values": list(TRIALS[n]), "params": {"optimizer.lr": 10 ** -(n % 4)},
              "run_dir": str(root / str(n)), "command": f"mtlexp train optimizer.lr={10 ** -(n % 4)}"}
             for n in (1, 3, 4)]
    (root / "best_trials.yaml").write_text(yaml.safe_dump(
        {"optimized_metric": OBJECTIVES, "directions": ["maximize", "maximize"], "study_name": "mo",
         "storage": f"sqlite:///{root / 'optuna.db'}", "trials": front}, sort_keys=False))
    return root


def test_a_multi_objective_search_prints_its_front_and_draws_every_trial(tmp_path, capsys):
    from mtlexp.report.figures import pareto_front, search_figure
    from mtlexp.report.search import read_search

    root = search_folder(tmp_path / "search")
    assert main([str(root)]) == 0
    printed = capsys.readouterr().out
    table = printed.split("Pareto front of the search in", 1)[1]
    assert f"{root} (3 of 5 completed trials):" in table
    rows = [line.split() for line in table.splitlines()[3:6]]
    assert [row[:3] for row in rows] == [["1", "0.9100", "0.9700"], ["3", "0.9400", "0.9600"],
                                         ["4", "0.9500", "0.9400"]]
    md = (root / "report.md").read_text()
    assert "7 runs (5 ok, 1 pruned) in 4 groups; swept: optimizer.lr." in md
    assert f"## Pareto front: {root}" in md
    assert "| 3 | 0.9400 | 0.9600 | optimizer.lr=0.001 | mtlexp train optimizer.lr=0.001 |" in md
    assert (root / "figures" / "pareto_trials.png").is_file() and "![pareto_trials](figures/pareto_trials.png)" in md

    search = read_search(root)
    # Every completed trial is drawn, the failed and the pruned one are not, and the front joins the front's trials.
    assert sorted(map(tuple, search.trials[OBJECTIVES].to_numpy())) == sorted(TRIALS.values())
    assert pareto_front(search.trials[OBJECTIVES].to_numpy(), search.directions).sum() == len(search.front)
    trials_line, front_line = search_figure(search).axes[0].get_lines()
    assert sorted(zip(trials_line.get_xdata(), trials_line.get_ydata())) == sorted(TRIALS.values())
    assert list(zip(front_line.get_xdata(), front_line.get_ydata())) == [TRIALS[1], TRIALS[3], TRIALS[4]]


def test_a_best_trials_file_that_does_not_fit_is_one_line(tmp_path, capsys):
    root = search_folder(tmp_path / "search")
    content = yaml.safe_load((root / "best_trials.yaml").read_text())
    (root / "best_trials.yaml").write_text(yaml.safe_dump({**content, "directions": ["maximize"]}))
    assert main([str(root), "--no-figures"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"mtlexp: error: {root / 'best_trials.yaml'}: directions: expected one of ['maximize', 'minimize'] per metric "
        "of optimized_metric, got ['maximize']")
