"""Fixtures for the tabular and census tests: small files in the exact UCI census-income format."""

from __future__ import annotations

import gzip
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from mtlexp.data.census import SCHEMA

CENSUS_COLUMNS: list[str] = yaml.safe_load(SCHEMA.read_text())["columns"]
NUMERIC_RANGES = {
    "age": (0, 90),
    "wage per hour": (0, 2000),
    "capital gains": (0, 20000),
    "capital losses": (0, 3000),
    "dividends from stocks": (0, 5000),
    "num persons worked for employer": (0, 6),
    "weeks worked in year": (0, 52),
}
POOLS = {
    "education": [
        "Children",
        "High school graduate",
        "Some college but no degree",
        "Bachelors degree(BA AB BS)",
        "Masters degree(MA MS MEng MEd MSW MBA)",
        "Associates degree-academic program",
        "10th grade",
    ],
    "marital stat": ["Never married", "Married-civilian spouse present", "Divorced", "Widowed"],
    "hispanic origin": ["All other", "Mexican (Mexicano)", "NA", "Puerto Rican"],
    "state of previous residence": ["Not in universe", "California", "Utah", "?"],
    "migration code-change in msa": ["Nonmover", "MSA to MSA", "?"],
    "country of birth self": ["United-States", "Mexico", "?"],
    "sex": ["Female", "Male"],
    "year": ["94", "95"],
    "detailed industry recode": ["0", "4", "33", "45"],
}
TEST_ONLY_STATE = "Alaska"  # a category that only the test file has: must map to index 0


def census_row(rng: random.Random, test_file: bool) -> list[str]:
    """One row of 42 values (unstripped), in the UCI column order."""
    values = {}
    for name in CENSUS_COLUMNS:
        if name in NUMERIC_RANGES:
            values[name] = str(rng.randint(*NUMERIC_RANGES[name]))
        elif name == "instance weight":
            values[name] = f"{rng.uniform(50, 5000):.2f}"
        else:
            values[name] = rng.choice(POOLS.get(name, ["Not in universe", "Yes", "No"]))
    never = values["marital stat"] == "Never married"
    # the known partial leak: the household status spells out the marital status most of the time
    household = "Child <18 never marr not in subfamily" if never else "Householder"
    values["detailed household and family stat"] = household if rng.random() < 0.9 else "Nonfamily householder"
    if test_file and rng.random() < 0.2:
        values["state of previous residence"] = TEST_ONLY_STATE
    values["income"] = "50000+." if rng.random() < 0.25 else "- 50000."
    return [values[name] for name in CENSUS_COLUMNS]


def census_lines(rows: int, seed: int, test_file: bool) -> list[str]:
    """Lines as UCI writes them: ", " between fields, so every field but the first has a leading space."""
    rng = random.Random(seed)
    return [", ".join(census_row(rng, test_file)) for _ in range(rows)]


def write_lines(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


@pytest.fixture
def make_census(tmp_path: Path) -> Callable[..., Path]:
    """``make_census(folder=None, train_rows=300, test_rows=200, gz=True, edit_train=None)``: the two UCI files.

    ``edit_train(lines)`` may change the training file's lines (0-based list) before they are written.
    """

    def make(
        folder: Path | None = None,
        train_rows: int = 300,
        test_rows: int = 200,
        gz: bool = True,
        edit_train: Callable[[list[str]], None] | None = None,
    ) -> Path:
        folder = folder or tmp_path / "census"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".gz" if gz else ""
        train = census_lines(train_rows, seed=1, test_file=False)
        if edit_train is not None:
            edit_train(train)
        write_lines(folder / f"census-income.data{suffix}", train)
        write_lines(folder / f"census-income.test{suffix}", census_lines(test_rows, seed=2, test_file=True))
        return folder

    return make


@pytest.fixture
def census_dir(make_census: Callable[..., Path]) -> Path:
    """A folder with a 300-row census-income.data.gz and a 200-row census-income.test.gz."""
    return make_census()


@pytest.fixture
def test_only_state() -> str:
    """The state of previous residence that only the generated test file has."""
    return TEST_ONLY_STATE


@pytest.fixture(scope="session")
def shared_census_dir() -> Path:
    """The real UCI files (../shared/data/census-income, or $MTLEXP_SHARED_DIR/data/census-income); skips if absent."""
    root = Path(os.environ.get("MTLEXP_SHARED_DIR", Path(__file__).parents[2] / ".." / "shared"))
    folder = root / "data" / "census-income"
    if not all((folder / f"census-income.{name}.gz").is_file() for name in ("data", "test")):
        pytest.skip(f"the real census-income files are not in {folder}")
    return folder
