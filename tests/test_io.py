"""Atomic writes: the file appears whole, with the permissions a plain write would give it."""

import os

import pytest

from mtlexp.io import read_json, write_json


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask_like_a_plain_write(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "metrics.json", {"status": "ok"})
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = (tmp_path / "metrics.json").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert read_json(tmp_path / "metrics.json") == {"status": "ok"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
