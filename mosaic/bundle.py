"""The output bundle: paths, atomic writes, the manifest, the lock and stage caches.

See docs/bundle.md for the format. Readers use ``read_manifest`` and the paths
it names; only the pipeline writes.
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

from mosaic import SCHEMA_VERSION
from mosaic.errors import BundleError, LockError

MANIFEST = "manifest.json"
CACHE_DIR = "cache"


def bundle_dir(out: str | Path, cid: str) -> Path:
    """The folder of collection ``cid`` under the output folder ``out``."""
    return Path(out) / cid


def list_bundles(out: str | Path) -> list[Path]:
    """Finished bundles (those with a manifest) under ``out``, sorted by id."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if (p / MANIFEST).is_file())


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and check a bundle's manifest; BundleError if missing or unknown."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"no finished bundle at {directory} (no {MANIFEST})") from None
    except (OSError, ValueError) as error:
        raise BundleError(f"cannot read {path}: {error}") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{path} has schema_version {manifest.get('schema_version')!r}; "
            f"this program reads {SCHEMA_VERSION}"
        )
    return manifest


def open_cells(directory: str | Path, manifest: dict[str, Any]) -> RowFile:
    """The cell thumbnails, (N, c, c, 3) uint8, read row by row with pread."""
    cells = manifest["cells"]
    return RowFile(Path(directory) / cells["path"], tuple(cells["shape"]), np.uint8)


class RowFile:
    """A raw C-order array on disk, read and written a row at a time.

    Unlike a memmap, reading or writing rows keeps nothing resident in this
    process (os.pread/os.pwrite go through the page cache), so memory stays
    flat however large the file is.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, writable: bool = False):
        self.fd = -1
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        size = self.row_bytes * self.shape[0]
        if writable and (not self.path.exists() or self.path.stat().st_size != size):
            with open(self.path, "wb") as handle:
                handle.truncate(size)
        self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            if not -len(self) <= index < len(self):
                raise IndexError(index)
            return self.read_rows([int(index) % len(self)])[0]
        rows = np.arange(len(self))[index]
        return self.read_rows(rows)

    def read_rows(self, rows) -> np.ndarray:
        """Rows in the given order as a new (len(rows), ...) array."""
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        view = out.reshape(len(rows), -1).view(np.uint8)
        for position, row in enumerate(rows):
            data = os.pread(self.fd, self.row_bytes, int(row) * self.row_bytes)
            if len(data) != self.row_bytes:
                raise BundleError(f"{self.path} is shorter than its declared shape")
            view[position] = np.frombuffer(data, dtype=np.uint8)
        return out

    def write_row(self, row: int, value: np.ndarray) -> None:
        data = np.ascontiguousarray(value, dtype=self.dtype).tobytes()
        os.pwrite(self.fd, data, int(row) * self.row_bytes)

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        self.close()


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
