"""The on-disk cache of preprocessed tensors: one folder per entry, memory-mapped on a warm start.

An entry is ``<name>.npy`` per array plus ``meta.json``, keyed by the input files (path, size, mtime), the
schema and every option that changes the tensors. Entries are written atomically (a temporary folder renamed
into place), so concurrent runs that miss at the same moment never see a half-written one.

What is on disk is never trusted: ``meta.json`` lists every array with its byte size, shape, dtype and a
CRC-32 of its contents, written at write time and checked at read time (one sequential read of the arrays,
which the run reads anyway; a small fraction of a cold parse). An entry that fails the check, an array
overwritten in place, truncated or missing, or an empty ``meta.json``, raises ``CorruptEntry``, and the data
module rebuilds it with a one-line warning. Temporary folders that a killed writer left behind are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mtlexp.data.schema import json_default
from mtlexp.errors import MtlexpError
from mtlexp.processes import is_gone, this_host

# Bump when the preprocessing changes, so that old cache entries are not reused.
# 2: meta.json carries the manifest of the arrays; 3: infinite values are refused at load, and an older entry
# may hold them.
CACHE_VERSION = 3


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


class CorruptEntry(Exception):
    """A cache entry whose files do not match what was recorded when it was written."""


def is_complete(entry: Path) -> bool:
    """Whether ``entry`` is a finished cache entry (one appears whole, by a rename, ``meta.json`` included)."""
    return (entry / "meta.json").is_file()


def checksum(array: np.ndarray) -> int:
    """CRC-32 of an array's bytes, read in slices so a memory-mapped array is never copied whole."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    crc, step = 0, 1 << 24
    for start in range(0, flat.size, step):
        crc = zlib.crc32(flat[start : start + step], crc)
    return crc


def read_cache_entry(entry: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays (memory-mapped) and metadata of a complete entry, checked against its manifest."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise CorruptEntry(f"meta.json is unreadable ({exc})") from None
    manifest = meta.get("arrays") if isinstance(meta, dict) else None
    if not isinstance(manifest, dict) or not manifest:
        raise CorruptEntry("meta.json lists no arrays")
    arrays = {}
    for name, record in manifest.items():
        path = entry / f"{name}.npy"
        if not path.is_file():
            raise CorruptEntry(f"{path.name} is missing")
        if path.stat().st_size != record["bytes"]:
            raise CorruptEntry(f"{path.name} has {path.stat().st_size} bytes, {record['bytes']} were written")
        try:
            array = load_array(path)
        except (OSError, ValueError) as exc:
            raise CorruptEntry(f"{path.name} is unreadable ({exc})") from None
        if list(array.shape) != record["shape"] or str(array.dtype) != record["dtype"]:
            raise CorruptEntry(f"{path.name} is {array.dtype}{list(array.shape)}, {record['dtype']}{record['shape']} "
                               "was written")
        if checksum(array) != record["crc32"]:
            raise CorruptEntry(f"{path.name} changed since it was written (checksum)")
        arrays[name] = array
    meta.pop("arrays")
    return arrays, meta


def write_cache_entry(entry: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write the arrays and ``meta.json`` into a temporary folder, then rename it into place (atomic)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(entry.parent)
    tmp = entry.parent / f".{entry.name}.tmp-{this_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        manifest = {}
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            np.save(tmp / f"{name}.npy", array)
            manifest[name] = {"bytes": (tmp / f"{name}.npy").stat().st_size, "shape": list(array.shape),
                              "dtype": str(array.dtype), "crc32": checksum(array)}
        (tmp / "meta.json").write_text(json.dumps({**meta, "arrays": manifest}, indent=1, default=json_default))
        try:
            os.replace(tmp, entry)
        except OSError:
            if not is_complete(entry):  # not a concurrent writer that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_abandoned(folder: Path) -> None:
    """Remove temporary entry folders whose writer (a process on this host) is gone: killed mid-write."""
    for tmp in folder.glob(".*.tmp-*"):
        parts = tmp.name.rsplit(".tmp-", 1)[1].split("-")
        if len(parts) >= 3 and parts[-2].isdigit() and is_gone(int(parts[-2]), "-".join(parts[:-2])):
            shutil.rmtree(tmp, ignore_errors=True)


def load_array(path: Path) -> np.ndarray:
    """A cached array, memory-mapped copy-on-write (pages are read on first use; nothing is written back)."""
    try:
        return np.load(path, mmap_mode="c")
    except ValueError:  # an array with no elements cannot be mapped
        return np.load(path)
