"""UCI Census-Income (KDD) as the MMoE paper uses it (Ma et al., KDD 2018, Sec. 5.2).

The schema of the 42 columns ships with the package (``schemas/census_income.yaml``). The paper's split: the
training file is the training split; the test file is split 1:1 into validation and test with a fixed seed.
The files come from a folder (``path``) or are downloaded once from the UCI archive into ``cache_dir`` and
checked against the SHA-256 of their decompressed content.
"""

from __future__ import annotations

import gzip
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtlexp.data.readers import sha256_stream
from mtlexp.data.tabular import TabularDataModule
from mtlexp.data.tensors import TensorTable
from mtlexp.errors import MtlexpError, require
from mtlexp.io import atomic_path
from mtlexp.specs import FeatureSpec

SCHEMA = Path(__file__).parent / "schemas" / "census_income.yaml"
UCI_URL_BASE = "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld"
# split -> file name (without .gz)
FILES = {"train": "census-income.data", "test": "census-income.test"}
# SHA-256 of the decompressed files (the .gz bytes depend on the compressor).
UCI_SHA256 = {
    "census-income.data": "3676a81db7d3528f3f8b9f3c699d0f0aa28db45e6e994fa0b8ed38327539ee86",
    "census-income.test": "98402b1ab879573d0a7f38a699a40258080e25e33d3401e7bf9c96d3fa0fab8c",
}


class CensusIncomeDataModule(TabularDataModule):
    """Census-income with the paper's split; tasks from ``conf/tasks/census_group1.yaml`` or ``census_group2``.

    :param tasks: the ``tasks`` config node (label columns are taken out of the features).
    :param path: a folder holding ``census-income.data.gz`` and ``census-income.test.gz`` (or the decompressed
        files); ``None``: download them into ``<cache_dir>/census-income/`` on first use.
    :param cache_dir: the download folder (when ``path`` is None) and the preprocessed-tensor cache.
    :param url_base: where to download from (``<url_base>/census-income.data.gz``); a ``file://`` URL works.
    :param expected_sha256: ``{file name: SHA-256 of the decompressed content}`` that a download must match;
        defaults to UCI's. Files given through ``path`` are not held to it (their hashes are recorded).
    :param use_instance_weight: pass the survey's ``instance weight`` on as the sample weight (never a feature).
    :param drop_known_leaks: drop ``detailed household and family stat``, a partial leak of never_married.
    :param split_seed: seeds the 1:1 validation/test split of the test file.
    :param leak_auc_threshold: warn when one feature alone reaches this train AUC on a label.
    :param batch_size: training batch size.
    :param eval_batch_size: validation/test batch size.
    :param chunk_steps: optimizer steps per ``training_step``.
    :param seed: the run seed (training order).
    """

    def __init__(
        self,
        tasks: Mapping[str, Any],
        path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        url_base: str = UCI_URL_BASE,
        expected_sha256: Mapping[str, str] | None = None,
        use_instance_weight: bool = False,
        drop_known_leaks: bool = False,
        split_seed: int = 0,
        leak_auc_threshold: float = 0.98,
        batch_size: int = 1024,
        eval_batch_size: int = 16384,
        chunk_steps: int = 16,
        seed: int = 0,
    ) -> None:
        require(
            path is not None or cache_dir is not None,
            "path",
            "a folder holding census-income.data(.gz) and census-income.test(.gz), or a cache_dir to download into",
            path,
        )
        super().__init__(
            tasks,
            path=None,
            schema=SCHEMA,
            cache_dir=cache_dir,
            val_fraction=0.5,
            val_from="test",
            split_seed=split_seed,
            use_weight=use_instance_weight,
            drop_known_leaks=drop_known_leaks,
            leak_auc_threshold=leak_auc_threshold,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            chunk_steps=chunk_steps,
            seed=seed,
        )
        self.census_dir = None if path is None else Path(str(path)).expanduser()
        self.url_base = url_base.rstrip("/")
        self.expected_sha256 = dict(expected_sha256 or UCI_SHA256)

    @property
    def download_dir(self) -> Path:
        return Path(str(self.cache_dir)) / "census-income"

    def prepare_data(self) -> None:
        """Download the files once when no ``path`` is given (Lightning calls this on one process only)."""
        if self.census_dir is None:
            for name in FILES.values():
                target = self.download_dir / f"{name}.gz"
                if not target.is_file():
                    download(f"{self.url_base}/{name}.gz", target, self.expected_sha256.get(name))

    def input_files(self) -> dict[str, Path]:
        if self.census_dir is None:
            self.prepare_data()
            return {split: self.download_dir / f"{name}.gz" for split, name in FILES.items()}
        if not self.census_dir.is_dir():
            raise MtlexpError(
                f"data.path: {self.census_dir}: not a folder (expected one holding census-income.data.gz)"
            )
        files = {}
        for split, name in FILES.items():
            candidates = [self.census_dir / f"{name}.gz", self.census_dir / name]
            found = [c for c in candidates if c.is_file()]
            if not found:
                raise MtlexpError(f"data.path: {self.census_dir} holds neither {name}.gz nor {name} (the {split} file)")
            files[split] = found[0]
        return files

    def load(self) -> tuple[dict[str, TensorTable], FeatureSpec]:
        splits, features = super().load()
        if self.census_dir is None:
            # Downloaded files were checked on download; check again in case they changed since.
            for split, name in FILES.items():
                got = self.meta["files"][split]["sha256"]
                want = self.expected_sha256.get(name)
                if want and got != want:
                    path = self.meta["files"][split]["path"]
                    raise MtlexpError(
                        f"{path}: SHA-256 of the decompressed content is {got}, expected {want}; "
                        "delete it to download again"
                    )
        return splits, features

    def describe(self) -> dict[str, Any]:
        summary = super().describe()
        summary["source"] = "downloaded" if self.census_dir is None else str(self.census_dir)
        files = self.meta.get("files", {})
        summary["matches_uci"] = {FILES[s]: info["sha256"] == UCI_SHA256[FILES[s]] for s, info in files.items()}
        return summary


def download(url: str, target: Path, expected_sha256: str | None) -> None:
    """Fetch ``url`` to ``target`` (atomically), checking the SHA-256 of its gunzipped content first."""
    with atomic_path(target) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:  # noqa: S310
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MtlexpError(
                f"{url}: download failed ({reason}); put the files in a folder and set data.path"
            ) from None
        try:
            with gzip.open(tmp, "rb") as data:
                digest = sha256_stream(data)
        except (OSError, EOFError) as exc:
            raise MtlexpError(f"{url}: the downloaded file is not valid gzip ({exc}); it was discarded") from None
        if expected_sha256 and digest != expected_sha256:
            raise MtlexpError(
                f"{url}: SHA-256 of the decompressed content is {digest}, expected {expected_sha256}; "
                "the download was discarded"
            )
