"""The on-disk cache of preprocessed tensors: one folder per entry, memory-mapped on a warm start.

An entry is ``<name>.npy`` per array plus ``meta.json``, keyed by the input files (path, size, mtime), the
schema and every option that changes the tensors. Entries are written atomically (a temporary folder renamed
into place), so concurrent runs that miss at the same moment never see a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mtlexp.data.schema import json_default
from mtlexp.errors import MtlexpError

# Bump when the preprocessing changes, so that old cache entries are not reused.
CACHE_VERSION = 1


def entry_key(files: Mapping[str, Path], options: Mapping[str, Any]) -> str:
    """A hash of the files (path, size, mtime: the content is not read), ``options`` and ``CACHE_VERSION``."""
    stats = {}
    for split, path in sorted(files.items()):
        if not path.is_file():
            raise MtlexpError(f"{path}: file not found (the {split} file)")
        info = path.stat()
        stats[split] = [str(path.resolve()), info.st_size, info.st_mtime_ns]
    key = {"version": CACHE_VERSION, "files": stats, **options}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=json_default).encode()).hexdigest()


def is_complete(entry: Path) -> bool:
    """Whether ``entry`` is a finished cache entry (one appears whole, by a rename, ``meta.json`` included)."""
    return (entry / "meta.json").is_file()


def read_cache_entry(entry: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays (memory-mapped) and metadata of a complete entry."""
    arrays = {p.stem: load_array(p) for p in entry.glob("*.npy")}
    return arrays, json.loads((entry / "meta.json").read_text())


def write_cache_entry(entry: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write the arrays and ``meta.json`` into a temporary folder, then rename it into place (atomic)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=json_default))
        try:
            os.replace(tmp, entry)
        except OSError:
            if not is_complete(entry):  # not a concurrent writer that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_array(path: Path) -> np.ndarray:
    """A cached array, memory-mapped copy-on-write (pages are read on first use; nothing is written back)."""
    try:
        return np.load(path, mmap_mode="c")
    except ValueError:  # an array with no elements cannot be mapped
        return np.load(path)
