"""The bundle, write side: atomic writes, the bundle lock and the per-stage cache.

Only the pipeline's orchestrator and its bundle writer use this module.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mosaic.bundle import RowFile
from mosaic.errors import LockError

CACHE_DIR = "cache"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file, fsync and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, value: Any) -> None:
    write_bytes_atomic(path, json.dumps(value, indent=2, ensure_ascii=False).encode())


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def create_npy_rows(path: Path, shape: tuple[int, int], dtype) -> RowFile:
    """A new ``.npy`` file of ``shape`` (zeros), open for writing rows with ``RowFile``
    (``pwrite``: nothing of it stays resident however large it is)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
              "fortran_order": False, "shape": tuple(shape)}
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        offset = handle.tell()
        handle.truncate(offset + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return RowFile(path, shape, dtype, writable=True, offset=offset)


@contextmanager
def bundle_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the bundle; LockError if another run holds it.

    flock is released by the kernel when the process dies, even on SIGKILL.
    """
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise LockError(
            f"another pipeline is writing {directory}; wait for it or use another --id"
        ) from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def cache_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class StageCache:
    """Per-stage cache records in ``<bundle>/cache/<stage>.json``.

    A stage is fresh when its record has the same key and every output it
    listed still exists. The record is written only after the outputs, so a
    crash mid-stage leaves the stage stale and it re-runs.
    """

    def __init__(self, directory: Path):
        self.directory = directory

    def _record_path(self, stage: str) -> Path:
        return self.directory / CACHE_DIR / f"{stage}.json"

    def read(self, stage: str, key: str) -> dict[str, Any] | None:
        """The stage's stored record if it is fresh for ``key``, else None."""
        try:
            record = json.loads(self._record_path(stage).read_text())
        except (OSError, ValueError):
            return None
        if record.get("key") != key:
            return None
        sizes = record.get("sizes", {})
        for name in record["outputs"]:
            path = self.directory / name
            if not path.exists() or (name in sizes and path.stat().st_size != sizes[name]):
                return None
        return record

    def write(self, stage: str, key: str, outputs: list[str], **info: Any) -> None:
        """Record a finished stage: its key, its outputs and their sizes."""
        sizes = {name: (self.directory / name).stat().st_size for name in outputs
                 if (self.directory / name).is_file()}
        write_json_atomic(self._record_path(stage),
                          {"key": key, "outputs": outputs, "sizes": sizes, **info})
