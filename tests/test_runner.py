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
