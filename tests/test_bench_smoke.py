"""The benchmark scripts' ``--quick`` modes run end to end and end with their ratio line (format only, not values)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_train.py"


@pytest.mark.slow
def test_bench_quick_prints_the_ratio_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio_b128=\d+\.\d+ ratio_b1024=\d+\.\d+", lines[-1]), lines[-1]
    assert "lean" in result.stdout and "mtlexp" in result.stdout
    assert "weightings through mtlexp" in result.stdout and re.search(r"upgrad .* \d+\.\d\d", result.stdout)


@pytest.mark.slow
def test_bench_stream_quick_prints_the_ratio_line(tmp_path):
    script = SCRIPT.with_name("bench_stream.py")
    result = subprocess.run([sys.executable, str(script), "--quick", "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"stream_ratio=\d+\.\d+ stream_peak_rss_mb=\d+ memory_peak_rss_mb=\d+", lines[-1]), lines[-1]
    assert re.search(r"memory: setup .* samples/s", result.stdout) and re.search(r"stream: setup", result.stdout)


def test_bench_stacked_times_one_model_at_a_time_and_both_routes_of_a_step(capsys, monkeypatch):
    # The whole-command studies are what the README reports and are not run here; the step timing is, in-process.
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import bench_stacked

    bench_stacked.routes(seeds=2, batch=16, steps=2)
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(r"routes, MMoE, 2 seeds, batch 16, ms per optimizer step of every seed: one model at a time "
                        r"[\d.]+ \(1\.00x\), vmap route [\d.]+ \([\d.]+x\), native route [\d.]+ \([\d.]+x\)", line), line

    # Census's shapes (--routes with the census files): embedded categorical columns and binary tasks.
    from mtlexp.specs import CategoricalFeature, FeatureSpec, TaskSpec

    features = FeatureSpec(numeric=("age",), categorical=(CategoricalFeature("a", 5, 3), CategoricalFeature("b", 9, 4)))
    bench_stacked.routes(seeds=2, batch=16, steps=2, shapes=(features, [TaskSpec("income", "binary"),
                                                                        TaskSpec("never_married", "binary")]))
    assert capsys.readouterr().out.startswith("routes, MMoE on census shapes, 2 seeds, batch 16, ms per optimizer step")


@pytest.mark.slow
def test_bench_stacked_studies_quick_prints_the_study_line(tmp_path):
    # --quick shrinks the synthetic study to a smoke test and skips the census studies (a real census epoch is long).
    script = SCRIPT.with_name("bench_stacked.py")
    result = subprocess.run([sys.executable, str(script), "--studies", "--quick"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"study_speedup_synthetic=\d+\.\d\d study_speedup_census=skipped census_table_s=skipped",
                        lines[-1]), lines[-1]
    assert re.search(r"study-synthetic: round 0: 2 seeds sequential [\d.]+ s, stacked [\d.]+ s", result.stdout)
    assert "census studies: skipped (--quick)" in result.stdout
