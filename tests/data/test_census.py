"""Census-income at data level: the UCI format's quirks, the paper's split, errors, download, the real files."""

from __future__ import annotations

import gzip
import hashlib
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mtlexp.data.census import SCHEMA, CensusIncomeDataModule
from mtlexp.data.inspect import inspect_report
from mtlexp.data.preprocessing import LeakWarning
from mtlexp.errors import MtlexpError

CENSUS_COLUMNS = yaml.safe_load(SCHEMA.read_text())["columns"]

CONF = Path(__file__).parents[2] / "conf" / "tasks"
GROUP1 = yaml.safe_load((CONF / "census_group1.yaml").read_text())
GROUP2 = yaml.safe_load((CONF / "census_group2.yaml").read_text())


def read_uci(path: Path) -> pd.DataFrame:
    """The reference reading of a UCI file: NA handling off, values stripped."""
    frame = pd.read_csv(path, header=None, names=CENSUS_COLUMNS, dtype=str, keep_default_na=False)
    return frame.apply(lambda column: column.str.strip())


def loaded(dm: CensusIncomeDataModule) -> CensusIncomeDataModule:
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakWarning)  # the generated data has no unknown leak
        dm.setup()
    return dm


def test_end_to_end_group1(census_dir: Path) -> None:
    dm = loaded(CensusIncomeDataModule(GROUP1, path=census_dir))
    assert {s: len(t) for s, t in dm.splits.items()} == {"train": 300, "val": 100, "test": 100}
    names = [*dm.features.numeric, *(c.name for c in dm.features.categorical)]
    for label_or_weight in ("income", "marital stat", "instance weight"):
        assert label_or_weight not in names
    assert "education" in names and "detailed household and family stat" in names
    assert len(names) == 42 - 3
    assert dm.describe()["dropped"] == [] and dm.describe()["excluded_as_labels"] == ["marital stat"]
    train = dm.splits["train"]
    assert train.numeric.dtype == torch.float32 and train.numeric.shape == (300, 7)
    assert train.categorical.dtype == torch.int64 and train.categorical.shape == (300, 32)
    assert train.weight is None
    frame = read_uci(census_dir / "census-income.data.gz")
    for task, column, positive in (("income", "income", "50000+."), ("never_married", "marital stat", "Never married")):
        assert train.labels[task].dtype == torch.float32
        expected = (frame[column] == positive).to_numpy(np.float32)
        assert np.array_equal(train.labels[task].numpy(), expected)


def test_group2_takes_education_out_of_the_features(census_dir: Path) -> None:
    dm = loaded(CensusIncomeDataModule(GROUP2, path=census_dir))
    names = [c.name for c in dm.features.categorical]
    assert "education" not in names and "marital stat" not in names
    assert dm.describe()["excluded_as_labels"] == ["education", "marital stat"]
    assert dm.describe()["dropped"] == ["income"]  # the UCI target is never an input, task or not
    frame = read_uci(census_dir / "census-income.data.gz")
    college = frame["education"].isin(GROUP2["college"]["positive"]).to_numpy(np.float32)
    assert np.array_equal(dm.splits["train"].labels["college"].numpy(), college)


def test_test_file_is_split_one_to_one_with_a_fixed_seed(census_dir: Path) -> None:
    first = loaded(CensusIncomeDataModule(GROUP1, path=census_dir, split_seed=0))
    again = loaded(CensusIncomeDataModule(GROUP1, path=census_dir, split_seed=0, seed=7))
    other = loaded(CensusIncomeDataModule(GROUP1, path=census_dir, split_seed=1))
    assert first.splits["val"].fingerprint() == again.splits["val"].fingerprint()
    assert first.splits["val"].fingerprint() != other.splits["val"].fingerprint()
    assert first.splits["train"].fingerprint() == other.splits["train"].fingerprint()  # train = the whole data file
    # val and test are the test file's rows, each once
    test_ages = read_uci(census_dir / "census-income.test.gz")["age"].astype(float).to_numpy()
    mean, std = first.meta["numeric"]["age"]["mean"], first.meta["numeric"]["age"]["std"]
    ages = torch.cat([first.splits[s].numeric[:, 0] for s in ("val", "test")]).double().numpy() * std + mean
    np.testing.assert_allclose(np.sort(ages), np.sort(test_ages), atol=1e-3)


def test_unseen_and_missing_categories_map_to_zero(census_dir: Path, test_only_state: str) -> None:
    dm = loaded(CensusIncomeDataModule(GROUP1, path=census_dir))
    names = [c.name for c in dm.features.categorical]
    state = names.index("state of previous residence")
    train = read_uci(census_dir / "census-income.data.gz")
    test = read_uci(census_dir / "census-income.test.gz")
    assert test_only_state not in set(train["state of previous residence"])
    # train: only '?' is 0; val+test: '?' and the state training never saw
    missing_in_train = int((train["state of previous residence"] == "?").sum())
    assert int((dm.splits["train"].categorical[:, state] == 0).sum()) == missing_in_train
    unseen = test["state of previous residence"].isin(["?", test_only_state]).sum()
    held_out = torch.cat([dm.splits[s].categorical[:, state] for s in ("val", "test")])
    assert int((held_out == 0).sum()) == int(unseen) > 0
    known = set(train["state of previous residence"]) - {"?"}
    assert dm.features.categorical[state].cardinality == len(known) + 1
    # "NA" is a real category of hispanic origin, not a missing value
    hispanic = names.index("hispanic origin")
    assert "NA" in set(train["hispanic origin"])
    assert int((dm.splits["train"].categorical[:, hispanic] == 0).sum()) == 0
    assert dm.features.categorical[hispanic].cardinality == train["hispanic origin"].nunique() + 1


def test_standardisation_uses_training_statistics_only(census_dir: Path) -> None:
    dm = loaded(CensusIncomeDataModule(GROUP1, path=census_dir))
    train = read_uci(census_dir / "census-income.data.gz")
    for i, name in enumerate(dm.features.numeric):
        values = train[name].astype(float)
        assert dm.meta["numeric"][name]["mean"] == pytest.approx(values.mean())
        assert dm.meta["numeric"][name]["std"] == pytest.approx(values.std(ddof=0))
        column = dm.splits["train"].numeric[:, i].double()
        assert float(column.mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(column.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_instance_weight_is_optional_sample_weight(census_dir: Path) -> None:
    dm = loaded(CensusIncomeDataModule(GROUP1, path=census_dir, use_instance_weight=True))
    weights = read_uci(census_dir / "census-income.data.gz")["instance weight"].astype(float).to_numpy(np.float32)
    assert np.array_equal(dm.splits["train"].weight.numpy(), weights)
    assert "instance weight" not in [c.name for c in dm.features.categorical] + list(dm.features.numeric)


def test_known_leak_is_kept_and_reported_or_dropped(census_dir: Path) -> None:
    kept = loaded(CensusIncomeDataModule(GROUP1, path=census_dir))
    leaks = kept.describe()["leaks"]
    assert {leak["feature"] for leak in leaks} == {"detailed household and family stat"}
    assert all(leak["known"] for leak in leaks)
    report = inspect_report(kept)
    assert "detailed household and family stat -> never_married" in report and "(known)" in report
    dropped = loaded(CensusIncomeDataModule(GROUP1, path=census_dir, drop_known_leaks=True))
    assert "detailed household and family stat" not in [c.name for c in dropped.features.categorical]
    assert "detailed household and family stat" in dropped.describe()["dropped"]
    assert dropped.describe()["leaks"] == []


def test_plain_files_are_read_too(make_census: Callable[..., Path]) -> None:
    dm = loaded(CensusIncomeDataModule(GROUP1, path=make_census(gz=False)))
    assert len(dm.splits["train"]) == 300


def test_wrong_field_count_names_file_and_line(make_census: Callable[..., Path]) -> None:
    def drop_a_field(lines: list[str]) -> None:
        lines[16] = lines[16].rsplit(", ", 1)[0]

    folder = make_census(edit_train=drop_a_field)
    message = r"census-income\.data\.gz: line 17: expected 42 comma-separated fields, got 41$"
    with pytest.raises(MtlexpError, match=message):
        CensusIncomeDataModule(GROUP1, path=folder).setup()


def test_non_numeric_age_names_file_line_and_column(make_census: Callable[..., Path]) -> None:
    def bad_age(lines: list[str]) -> None:
        lines[4] = "abc" + lines[4][lines[4].index(","):]

    folder = make_census(edit_train=bad_age)
    message = r"census-income\.data\.gz: line 5: column 'age': expected a number, got 'abc'$"
    with pytest.raises(MtlexpError, match=message):
        CensusIncomeDataModule(GROUP1, path=folder).setup()


def test_missing_file_is_named(census_dir: Path) -> None:
    (census_dir / "census-income.test.gz").unlink()
    with pytest.raises(MtlexpError, match=r"holds neither census-income\.test\.gz nor census-income\.test"):
        CensusIncomeDataModule(GROUP1, path=census_dir).setup()
    with pytest.raises(MtlexpError, match="data.path: .*not a folder"):
        CensusIncomeDataModule(GROUP1, path=census_dir / "nowhere").setup()


def content_sha256(path: Path) -> str:
    return hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()


def test_download_from_a_file_url_checks_the_checksum(census_dir: Path, tmp_path: Path) -> None:
    checksums = {f"census-income.{n}": content_sha256(census_dir / f"census-income.{n}.gz") for n in ("data", "test")}
    cache = tmp_path / "cache"
    dm = loaded(
        CensusIncomeDataModule(GROUP1, cache_dir=cache, url_base=census_dir.as_uri(), expected_sha256=checksums)
    )
    downloaded = sorted(p.name for p in (cache / "census-income").iterdir())
    assert downloaded == ["census-income.data.gz", "census-income.test.gz"]
    assert dm.describe()["source"] == "downloaded"
    assert len(dm.splits["val"]) == 100

    wrong = {**checksums, "census-income.test": "0" * 64}
    other_cache = tmp_path / "other"
    message = r"census-income\.test\.gz: SHA-256 of the decompressed content is [0-9a-f]{64}, expected 0{64}"
    with pytest.raises(MtlexpError, match=message):
        CensusIncomeDataModule(
            GROUP1, cache_dir=other_cache, url_base=census_dir.as_uri(), expected_sha256=wrong
        ).setup()
    assert not (other_cache / "census-income" / "census-income.test.gz").exists()
    assert not [p for p in (other_cache / "census-income").iterdir() if p.name.endswith(".part")]

    with pytest.raises(MtlexpError, match="download failed"):
        CensusIncomeDataModule(GROUP1, cache_dir=tmp_path / "x", url_base=(tmp_path / "none").as_uri()).setup()


def test_user_files_need_not_match_uci(census_dir: Path) -> None:
    dm = loaded(CensusIncomeDataModule(GROUP1, path=census_dir))
    facts = dm.describe()
    assert facts["matches_uci"] == {"census-income.data": False, "census-income.test": False}
    assert facts["files"]["train"]["sha256"] == content_sha256(census_dir / "census-income.data.gz")


def test_cache_is_reused(census_dir: Path, tmp_path: Path) -> None:
    cold = loaded(CensusIncomeDataModule(GROUP1, path=census_dir, cache_dir=tmp_path / "cache"))
    assert not cold.cache_hit
    entry = Path(cold.meta["cache"]["entry"])
    stamps = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    warm = loaded(CensusIncomeDataModule(GROUP1, path=census_dir, cache_dir=tmp_path / "cache"))
    assert warm.cache_hit and warm.fingerprint() == cold.fingerprint()
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == stamps
    assert warm.describe()["files"] == cold.describe()["files"]
    group2 = loaded(CensusIncomeDataModule(GROUP2, path=census_dir, cache_dir=tmp_path / "cache"))
    assert not group2.cache_hit  # other tasks, other tensors


def test_constructor_needs_a_path_or_a_cache_dir() -> None:
    with pytest.raises(MtlexpError, match="^path: expected a folder"):
        CensusIncomeDataModule(GROUP1)


# --- the real UCI files (skipped where ../shared is absent) -----------------------------------------------
def test_real_files_task_groups_match_the_paper(shared_census_dir: Path) -> None:
    """One parse of both files: sizes, checksums, and the paper's label correlations (Ma et al. 2018, Table 1)."""
    tasks = {**GROUP1, "college": GROUP2["college"]}
    dm = CensusIncomeDataModule(tasks, path=shared_census_dir)
    start = time.perf_counter()
    dm.setup()
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"parsing both files took {elapsed:.1f} s (about 2 s expected)"
    assert {s: len(t) for s, t in dm.splits.items()} == {"train": 199523, "val": 49881, "test": 49881}
    assert dm.describe()["matches_uci"] == {"census-income.data": True, "census-income.test": True}
    labels = dm.splits["train"].labels
    assert int(labels["income"].sum()) == 12382 and int(labels["never_married"].sum()) == 86485

    def abs_pearson(a: str, b: str) -> float:
        return abs(float(torch.corrcoef(torch.stack([labels[a].double(), labels[b].double()]))[0, 1]))

    assert abs_pearson("income", "never_married") == pytest.approx(0.1768, abs=0.01)
    assert abs_pearson("college", "never_married") == pytest.approx(0.2373, abs=0.01)
    # "NA" of hispanic origin (874 training rows) is a category, not a missing value
    hispanic = [c.name for c in dm.features.categorical].index("hispanic origin")
    assert int((dm.splits["train"].categorical[:, hispanic] == 0).sum()) == 0
