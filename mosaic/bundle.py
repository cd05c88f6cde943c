"""The bundle, read side: where bundles live, the one manifest reader, the cell pack.

See docs/bundle.md for the format. The server, the poster and the CLI's
``info``/``export`` read bundles only through this module (and ``mosaic.query``
for metadata.sqlite); the pipeline writes them through ``mosaic.pipeline.store``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mosaic import READABLE_SCHEMAS
from mosaic.errors import BundleError, BundleNotFound, UsageError

MANIFEST = "manifest.json"
# The folder that holds the bundles, for every command and the server (relative to the cwd).
DEFAULT_OUT = "output"
# A collection id: also a folder name and a URL segment.
COLLECTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# The cells: one JPEG per item, concatenated in id order, and their offsets (docs/bundle.md).
CELLS_PACK, CELLS_INDEX = "cells.pack", "cells.idx"
CELL_CODEC = "jpeg"
# Q 90 without chroma subsampling: ~4.5 KB and ~40 dB PSNR per 128-px photo cell, where
# Q 85 (4:2:0) loses ~7 dB for 1.8 KB less (docs/benchmarks.md, "Cell codec").
CELL_QUALITY = 90
# A run of consecutive ids is read in one pread of at most this many cells.
_MAX_RUN = 512


def bundle_dir(out: str | Path, cid: str) -> Path:
    """The folder of collection ``cid`` under the output folder ``out``.

    BundleNotFound for an id that cannot be a collection (``..``, ``a/b``, ...).
    """
    if not COLLECTION_ID.match(cid):
        raise BundleNotFound(f"no collection {cid!r} (ids are letters, digits, '.', '_', '-')")
    return Path(out) / cid


def list_bundles(out: str | Path) -> list[Path]:
    """Finished bundles (those with a manifest) under ``out``, sorted by id."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if (p / MANIFEST).is_file())


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and check a bundle's manifest.

    BundleNotFound if there is none (the bundle is missing or unfinished),
    BundleError if it cannot be read or has a schema this program does not read.
    """
    return open_manifest(directory)[0]


def open_manifest(directory: str | Path) -> tuple[dict[str, Any], str]:
    """``read_manifest`` plus a digest of the manifest's bytes (it changes on a rebuild)."""
    path = Path(directory) / MANIFEST
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise BundleNotFound(f"no finished bundle at {directory} (no {MANIFEST})") from None
    except OSError as error:
        raise BundleError(f"cannot read {path}: {error}") from None
    try:
        manifest = json.loads(data)
    except ValueError as error:
        raise BundleError(f"cannot read {path}: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") not in READABLE_SCHEMAS:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise BundleError(
            f"{path} has schema_version {found!r}; this program reads "
            f"{' and '.join(str(v) for v in READABLE_SCHEMAS)}"
        )
    return manifest, hashlib.sha1(data).hexdigest()[:12]


def open_cells(directory: str | Path, manifest: dict[str, Any]) -> PackedCells:
    """The cell thumbnails, (N, c, c, 3) uint8, decoded from the bundle's cell pack."""
    cells = manifest["cells"]
    if cells.get("codec") != CELL_CODEC:
        raise BundleError(f"cells codec {cells.get('codec')!r} is not {CELL_CODEC!r}")
    return PackedCells(Path(directory) / cells["path"], Path(directory) / cells["index"],
                       tuple(cells["shape"]))


def cells_entry(n_items: int, cell_size: int) -> dict[str, Any]:
    """The manifest's ``cells`` entry for a pack of ``n_items`` cells written by the pipeline."""
    return {"path": CELLS_PACK, "index": CELLS_INDEX, "codec": CELL_CODEC,
            "quality": CELL_QUALITY, "cell_size": cell_size,
            "shape": [n_items, cell_size, cell_size, 3], "dtype": "uint8"}


def encode_cell(cell: np.ndarray, quality: int = CELL_QUALITY) -> bytes:
    """The stored form of one uint8 (c, c, 3) cell: baseline JPEG, 4:4:4, no metadata."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(cell, dtype=np.uint8), "RGB").save(
        buffer, "JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def decode_cell(data: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """One stored cell back to uint8 ``shape`` (c, c, 3); BundleError if it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode != "RGB":
                image = image.convert("RGB")
            array = np.asarray(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise BundleError(f"a stored cell does not decode: {error}") from None
    if array.shape != tuple(shape):
        raise BundleError(f"a stored cell is {array.shape}, not {tuple(shape)}")
    return array


class _Rows:
    """Indexing shared by the row readers: ``len()``, ``x[i]``, ``x[slice or ids]``."""

    shape: tuple[int, ...]

    def read_rows(self, rows) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            if not -len(self) <= index < len(self):
                raise IndexError(index)
            return self.read_rows([int(index) % len(self)])[0]
        return self.read_rows(np.arange(len(self))[index])


class PackedCells(_Rows):
    """The bundle's cells: encoded cells in id order (``pack``) and their offsets (``index``).

    ``index`` is N + 1 little-endian uint64 byte offsets into ``pack``; cell i is
    ``pack[offsets[i]:offsets[i + 1]]``. Only the offsets are held in memory (8 bytes
    per item); cells are read with ``os.pread`` (nothing memory-mapped, nothing
    resident) and decoded on demand. Safe to share between threads.
    """

    def __init__(self, pack: Path, index: Path, shape: tuple[int, ...]):
        self.fd = -1
        self.path, self.index_path, self.shape = Path(pack), Path(index), tuple(shape)
        self.row_shape = self.shape[1:]
        try:
            offsets = np.fromfile(self.index_path, dtype="<u8")
            self.fd = os.open(self.path, os.O_RDONLY)
        except OSError as error:
            raise BundleError(f"cannot read the cells: {error}") from None
        size = os.fstat(self.fd).st_size
        if (len(offsets) != self.shape[0] + 1 or offsets[0] != 0 or offsets[-1] != size
                or (np.diff(offsets.astype(np.int64)) <= 0).any()):
            self.close()
            raise BundleError(f"{self.index_path} does not index {self.shape[0]} cells "
                              f"in {self.path} ({size} bytes)")
        self.offsets = offsets.astype(np.int64)

    def read_encoded(self, item: int) -> bytes:
        """The stored (JPEG) bytes of one cell, as they are."""
        if not 0 <= item < len(self):
            raise IndexError(item)
        start, stop = int(self.offsets[item]), int(self.offsets[item + 1])
        data = os.pread(self.fd, stop - start, start)
        if len(data) != stop - start:
            raise BundleError(f"{self.path} is shorter than its index")
        return data

    def read_rows(self, rows) -> np.ndarray:
        """Cells of ``rows`` in the given order as a new uint8 (len(rows), c, c, 3) array.

        Each run of consecutive ids (up to 512) is one ``pread`` (a sequential scan
        when ``rows`` is sorted), then its cells are decoded one by one.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"cell ids must be in [0, {len(self)})")
        out = np.empty((len(rows), *self.row_shape), dtype=np.uint8)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for run in np.split(np.arange(len(rows)), breaks):
            for first in range(0, len(run), _MAX_RUN):
                part = run[first:first + _MAX_RUN]
                ids = rows[part]
                base = int(self.offsets[ids[0]])
                stop = int(self.offsets[ids[-1] + 1])
                data = memoryview(os.pread(self.fd, stop - base, base))
                if len(data) != stop - base:
                    raise BundleError(f"{self.path} is shorter than its index")
                for k, item in zip(part, ids):
                    piece = data[self.offsets[item] - base:self.offsets[item + 1] - base]
                    out[k] = decode_cell(piece, self.row_shape)
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PackedCells:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()


class RowFile(_Rows):
    """A raw C-order array on disk, read and written a row at a time.

    Unlike a memmap, reading or writing rows keeps nothing resident in this
    process (os.pread/os.pwrite go through the page cache), so memory stays
    flat however large the file is.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, writable: bool = False,
                 offset: int = 0):
        self.fd = -1
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.offset = offset  # where row 0 starts (a .npy's header length)
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        size = offset + self.row_bytes * self.shape[0]
        if writable and (not self.path.exists() or self.path.stat().st_size != size):
            with open(self.path, "wb") as handle:
                handle.truncate(size)
        self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    def read_rows(self, rows) -> np.ndarray:
        """Rows in the given order as a new (len(rows), ...) array.

        Runs of consecutive rows are one ``preadv`` each (a sequential scan
        when ``rows`` is sorted); nothing is memory-mapped, so nothing stays
        resident.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for run in np.split(np.arange(len(rows)), breaks):
            if len(run) == 0:
                continue
            buffer = flat[run[0]:run[-1] + 1].reshape(-1)
            position = self.offset + int(rows[run[0]]) * self.row_bytes
            if os.preadv(self.fd, [buffer], position) != buffer.size:
                raise BundleError(f"{self.path} is shorter than its declared shape")
        return out

    def write_row(self, row: int, value: np.ndarray) -> None:
        data = np.ascontiguousarray(value, dtype=self.dtype).tobytes()
        os.pwrite(self.fd, data, self.offset + int(row) * self.row_bytes)

    def write_rows(self, start: int, values: np.ndarray) -> None:
        """Consecutive rows from ``start`` in one write."""
        self.write_row(start, values)

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        self.close()


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, offset of row 0)`` of a C-order 2-D ``.npy`` file, for ``RowFile``."""
    try:
        with open(path, "rb") as handle:
            major, _ = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            offset = handle.tell()
    except (OSError, ValueError) as error:
        raise BundleError(f"cannot read the array {path}: {error}") from None
    if fortran or len(shape) != 2:
        raise BundleError(f"{path} is not a C-order (N, dim) array")
    return shape, dtype, offset


class VectorRows(RowFile):
    """An embedding's stored vectors (``embeddings/<name>.npy``) read as float32 rows.

    Stored as uint8, float16 or float32 (the manifest's ``dtype``); rows come back
    as float32 times the manifest's ``scale`` (``raw``: 1/255). Read with ``pread``
    like ``RowFile``, so a scan over a million rows keeps nothing resident.
    """

    def __init__(self, path: Path, scale: float | None = None):
        shape, dtype, offset = npy_layout(path)
        super().__init__(path, shape, dtype, offset=offset)
        self.scale = scale

    def read_rows(self, rows) -> np.ndarray:
        stored = super().read_rows(rows)
        vectors = stored.astype(np.float32)
        if self.scale is not None:
            vectors *= np.float32(self.scale)
        return vectors


def open_vectors(directory: str | Path, embedding: dict[str, Any]) -> VectorRows:
    """The vectors of one manifest ``embeddings`` entry, read as float32 rows."""
    return VectorRows(Path(directory) / embedding["vectors"], embedding.get("scale"))


def open_top_neighbors(directory: str | Path, embedding: dict[str, Any]
                       ) -> tuple[RowFile, RowFile] | None:
    """Every item's stored nearest neighbours for one manifest ``embeddings`` entry:
    ``(ids, distances)`` row files, (N, k) int32 (-1 past the end) and float32, nearest
    first, the item itself excluded (docs/bundle.md); None for bundles made before them."""
    top = embedding.get("top")
    if not top:
        return None
    files = []
    for part in ("ids", "distances"):
        shape, dtype, offset = npy_layout(Path(directory) / top[part])
        files.append(RowFile(Path(directory) / top[part], shape, dtype, offset=offset))
    return files[0], files[1]


# The grid's geometry, shared by the grid stage and the poster.

def grid_shape(n_items: int) -> tuple[int, int]:
    """The near-square (n_rows, n_cols) with the fewest empty cells (< n_cols)."""
    if n_items < 1:
        raise UsageError("a grid needs at least one item")
    n_cols = math.ceil(math.sqrt(n_items))
    n_rows = math.ceil(n_items / n_cols)
    return n_rows, n_cols


def cell_ids(positions: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """The inverse map: int32 (n_rows, n_cols) of item ids, -1 where empty (removed
    items, at ``(-1, -1)``, are on no cell)."""
    grid = np.full((n_rows, n_cols), -1, dtype=np.int32)
    placed = np.flatnonzero(positions[:, 0] >= 0)
    grid[positions[placed, 0], positions[placed, 1]] = placed.astype(np.int32)
    return grid


# Layouts (schema 4): the similarity map first, then each ``--layout``.

def layout_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's ``layouts``, similarity first; a schema-3 manifest (no
    ``layouts``) reads as its one similarity layout."""
    if manifest.get("layouts"):
        return manifest["layouts"]
    files = manifest.get("files", {})
    grid = manifest.get("grid", {})
    return [{"name": "similarity", "kind": "similarity", "slug": "similarity",
             "grid": {k: grid[k] for k in ("n_rows", "n_cols", "cell_size", "method")
                      if k in grid},
             "positions": files.get("positions", "positions.npy"),
             "grid_file": files.get("grid", "grid.i32"),
             "tiles": manifest.get("tiles", {}), "overview": manifest.get("overview") or {},
             "labels": [], "missing": 0}]


def layout_names(manifest: dict[str, Any]) -> list[str]:
    return [entry["name"] for entry in layout_entries(manifest)]


def layout_entry(manifest: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The ``layouts`` entry called ``name`` (None: similarity, the first).

    UsageError listing the layout names for an unknown one.
    """
    entries = layout_entries(manifest)
    if name is None:
        return entries[0]
    for entry in entries:
        if entry["name"] == name:
            return entry
    raise UsageError(f"--layout {name!r} is not a layout of this bundle; it has "
                     f"{', '.join(e['name'] for e in entries)}")


def removed_ids(directory: str | Path, manifest: dict[str, Any]) -> np.ndarray:
    """The ids (int64, sorted) of the items ``run.py remove`` took out: they keep their
    ids but sit on no cell (positions ``(-1, -1)``) and have no row in metadata.sqlite.
    Empty, without reading anything, for a bundle that never lost an item."""
    if not manifest.get("counts", {}).get("removed"):
        return np.zeros(0, dtype=np.int64)
    positions = read_layout_positions(directory, layout_entries(manifest)[0], mmap=True)
    return np.flatnonzero(positions[:, 0] < 0)


def read_layout_positions(directory: str | Path, entry: dict[str, Any],
                          mmap: bool = False) -> np.ndarray:
    """int32 (N, 2) ``(row, col)`` of every item in the layout ``entry``."""
    try:
        return np.load(Path(directory) / entry["positions"], mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as error:
        raise BundleError(f"cannot read the positions of layout {entry['name']!r}: "
                          f"{error}") from None


def read_regions(directory: str | Path, manifest: dict[str, Any]
                 ) -> tuple[list[dict[str, Any]], np.ndarray] | None:
    """The labelled regions (``manifest["regions"]``, docs/bundle.md): ``regions.json``'s
    list of regions (by id) and ``regions.npy``, int32 (N, levels), each item's region at
    each level (memory-mapped). None for a bundle without them."""
    entry = manifest.get("regions")
    if not entry:
        return None
    directory = Path(directory)
    with open(directory / entry["path"], encoding="utf-8") as handle:
        regions = json.load(handle)["regions"]
    return regions, np.load(directory / entry["ids"], mmap_mode="r")


def region_text(region: dict[str, Any]) -> str:
    """What a region is called in an export: its label, else ``#<id>`` (never a word
    the metadata does not hold)."""
    return region["label"] if region.get("label") is not None else f"#{region['id']}"


# -- the collection as the viewer reads it ---------------------------------------------

def collection_document(manifest: dict[str, Any], url: Callable[[str], str]) -> dict[str, Any]:
    """The collection as the viewer reads it: the server's ``/api/collections/<id>`` body
    and a published site's ``collection.json`` (each adds what only it has). ``url``
    turns a bundle path into the address the reader fetches it at: the server's route
    (versioned), or the path itself in a site, where the files lie at their bundle paths."""
    layouts = [layout_document(entry, url) for entry in layout_entries(manifest)]
    regions, found = manifest.get("regions"), manifest.get("duplicates")
    return {
        "id": manifest["id"], "title": manifest.get("title") or manifest["id"],
        "n_items": int(manifest["counts"]["items"]),
        "facets": manifest.get("facets", []),
        # the similarity map's, as older viewers read them
        "dzi": layouts[0]["dzi"], "tiles": layouts[0]["tiles"], "grid": layouts[0]["grid"],
        "grid_url": layouts[0]["grid_url"],
        "layouts": layouts,
        "embeddings": [{k: e.get(k) for k in ("name", "kind", "dim", "metric")}
                       for e in manifest.get("embeddings", [])],
        # the embedding a search by meaning uses (search?mode=meaning), or None
        "search_by_meaning": meaning_embedding(manifest),
        "columns": manifest.get("columns", []),
        "hotspots": manifest.get("hotspots", []),
        "regions": {"url": url(regions["path"]), "order_url": url(regions["order"]),
                    "levels": regions["levels"], "labelled": regions["labelled"]}
        if regions else None,
        # the stored duplicate groups (the viewer's Duplicates filter), or None
        "duplicates": {"url": url(found["path"]), "threshold": found["threshold"],
                       "groups": found["groups"], "items": found["items"]} if found else None,
        "display": manifest.get("display", {}),
        "counts": manifest.get("counts", {}),
    }


def layout_document(entry: dict[str, Any], url: Callable[[str], str]) -> dict[str, Any]:
    """One layout as the viewer reads it: its grid, addresses (``url``) and labels."""
    overview = (entry.get("overview") or {}).get("path")
    body = {"name": entry["name"], "kind": entry["kind"], "slug": entry["slug"]}
    if "column" in entry:
        body["column"] = entry["column"]
    body.update(
        grid={k: entry["grid"][k] for k in ("n_rows", "n_cols", "cell_size")},
        dzi=url(entry["tiles"].get("dzi", "tiles/map.dzi")),
        grid_url=url(entry["grid_file"]),
        overview=url(overview) if overview else None,
        tiles={k: v for k, v in entry["tiles"].items() if k != "dzi"},
        labels=entry.get("labels", []), missing=entry.get("missing", 0))
    return body


def meaning_embedding(manifest: dict[str, Any]) -> str | None:
    """The bundle's first ``clip`` embedding: the one a search by meaning uses."""
    return next((e["name"] for e in manifest.get("embeddings", []) if e.get("kind") == "clip"),
                None)
