"""What pyproject.toml ships: every subpackage of src/mtlexp and every config file (a new subpackage or a
deeper config group would otherwise install silently without them)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_listed():
    found = {".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src" / "mtlexp").rglob("__init__.py")}
    assert found - set(SETUPTOOLS["packages"]) == set()


def test_every_config_file_is_package_data():
    patterns = SETUPTOOLS["package-data"]["mtlexp.conf"]
    files = [p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")]
    # fnmatch's * also crosses "/": compare the depth as well, as setuptools' globs do not.
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/")
                                             for pat in patterns)]
    assert unshipped == []
