"""``run_job``'s error report: one line by default, the traceback too under ``full_tracebacks``."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mtlexp.cli import full_tracebacks_asked
from mtlexp.runner import run_job


def crash(cfg) -> None:
    raise ValueError("a bug, not a bad value")


@pytest.mark.parametrize("full", [False, True])
def test_an_unexpected_error_prints_its_traceback_only_when_asked(tmp_path, capsys, full):
    assert run_job(crash, OmegaConf.create({"full_tracebacks": full}), tmp_path) is False
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last == f"mtlexp: error: ValueError: a bug, not a bad value (traceback in {tmp_path / 'error.log'})"
    assert ("Traceback (most recent call last)" in err) is full
    assert "in crash" in (tmp_path / "error.log").read_text()  # written either way


def test_a_config_without_the_key_keeps_one_line(tmp_path, capsys):
    """``mtlexp eval``'s config has no full_tracebacks key."""
    run_job(crash, OmegaConf.create({}), tmp_path)
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("args,asked", [
    (["debug=default"], True),
    (["model=mmoe", "+debug=default", "-m"], True),
    (["full_tracebacks=true"], True),
    (["debug=null"], False),
    (["full_tracebacks=false"], False),
    (["model=mmoe"], False),
    (["--help"], False),
])
def test_the_command_line_says_whether_hydra_errors_come_in_full(args, asked):
    assert full_tracebacks_asked(args) is asked


def test_a_sweep_whose_trials_were_pruned_did_not_fail_but_one_with_a_failed_job_did(tmp_path, capsys):
    from mtlexp.run_record import RunRecord, Status, write_record
    from mtlexp.runner import SweepSummary

    for job, record in enumerate([RunRecord(status=Status.OK), RunRecord(status=Status.PRUNED, pruned_epoch=1)]):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        write_record(tmp_path / str(job), record)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    SweepSummary().on_multirun_end(config)
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()[2:4]] == [["0", "ok"], ["1", "pruned"]]

    (tmp_path / "2" / ".hydra").mkdir(parents=True)
    write_record(tmp_path / "2", RunRecord(status=Status.FAILED, error="diverged"))
    with pytest.raises(SystemExit) as ended:
        SweepSummary().on_multirun_end(config)
    assert ended.value.code == 1 and capsys.readouterr().err.strip() == "mtlexp: error: 1 of 3 jobs failed"


def test_an_interrupted_search_trial_resumes_as_a_plain_run(tmp_path, capsys):
    from mtlexp.runner import record_interrupted

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "- optimizer.lr=0.01\n- trial.study_name=s\n- trial.storage=sqlite:///optuna.db\n- trial.number=3\n")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    record_interrupted(tmp_path)
    assert capsys.readouterr().err.strip() == (
        f"mtlexp: interrupted; resume with: mtlexp train optimizer.lr=0.01 ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}")
