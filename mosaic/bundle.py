"""The bundle, read side: where bundles live, the one manifest reader, the read model.

See docs/bundle.md for the format. ``Bundle.open(directory)`` reads a bundle's
manifest once into a typed model (grid, layouts, embeddings, cells, counts,
regions, duplicates, generation and digest) with the readers of its files (cells,
vectors, neighbour lists, positions, regions) and the viewer's collection document.
The server, publish, the poster and the CLI read bundles only through it (and
``mosaic.query`` for metadata.sqlite). The manifest's entries are built by the
builders beside it (``grid_entry``, ``cells_record``, ``layout_record``...), which the
pipeline writes through ``mosaic.pipeline.store``, so each fact is stored once.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image

from mosaic import READABLE_SCHEMAS, SCHEMA_VERSION
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


def encode_cell(cell: np.ndarray, quality: int = CELL_QUALITY) -> bytes:
    """The stored form of one uint8 (c, c, 3) cell: baseline JPEG, 4:4:4, no metadata."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(cell, dtype=np.uint8), "RGB").save(
        buffer, "JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def decode_cell(data: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """One stored cell back to uint8 ``shape`` (c, c, 3); BundleError if it does not decode.

    libjpeg-turbo through simplejpeg, straight into an array: the same pixels as
    Pillow's decode (the same library and settings; tests/test_cells_pack.py), in half
    the time (0.11 ms against 0.22 for a 128-px cell), and without the GIL, so the
    render stage decodes a row of cells while libvips cuts the last (docs/scale.md,
    "The render stage at a million")."""
    try:
        array = simplejpeg.decode_jpeg(data, colorspace="RGB")
    except (OSError, ValueError) as error:
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


# -- the manifest, read once -------------------------------------------------------------

def open_manifest(directory: str | Path) -> tuple[dict[str, Any], str]:
    """The manifest as stored and a digest of its bytes (it changes with every build and
    generation). The one place a manifest is read: ``Bundle.open`` and ``read_manifest``
    go through it.

    BundleNotFound if there is none (the bundle is missing or unfinished),
    BundleError if it cannot be read or has a schema this program does not read.
    """
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
            f"{', '.join(str(v) for v in READABLE_SCHEMAS[:-1])} and {READABLE_SCHEMAS[-1]}: "
            f"rebuild the bundle with `python run.py pipeline`"
        )
    return manifest, hashlib.sha1(data).hexdigest()[:12]


# -- the read model ----------------------------------------------------------------------
#
# A ``Bundle`` is the manifest read once into typed parts. Every fact has one place in
# the manifest and one attribute here: above all the cell size, ``manifest["grid"]
# ["cell_size"]``, which ``Grid.cell_size`` of every layout and ``Cells.shape`` carry.
# Older manifests (schemas 3 and 4) stored copies (``cells.cell_size``, ``cells.shape``,
# ``layouts[].grid.cell_size`` and the similarity layout's grid, tiles, overview and
# files inside ``layouts[0]``); the model reads none of them.

@dataclass(frozen=True)
class Grid:
    """A layout's grid: ``n_rows x n_cols`` cells of ``cell_size`` px (the bundle's one cell
    size), placed by ``method``."""

    n_rows: int
    n_cols: int
    cell_size: int
    method: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, self.n_cols

    def as_dict(self) -> dict[str, int]:
        """``{n_rows, n_cols, cell_size}``, as the viewer reads a grid."""
        return {"n_rows": self.n_rows, "n_cols": self.n_cols, "cell_size": self.cell_size}


@dataclass(frozen=True)
class Tiles:
    """A layout's Deep Zoom pyramid as ``dzsave`` wrote it; ``entry`` is the manifest's
    object as stored (what the viewer is sent, less ``dzi``)."""

    dzi: str
    tile_size: int
    overlap: int
    format: str
    quality: int | None
    width: int
    height: int
    levels: int
    entry: dict[str, Any]

    @classmethod
    def from_entry(cls, entry: dict[str, Any] | None) -> Tiles:
        entry = dict(entry or {})
        return cls(dzi=entry.get("dzi", "tiles/map.dzi"), tile_size=entry.get("tile_size", 0),
                   overlap=entry.get("overlap", 0), format=entry.get("format", ""),
                   quality=entry.get("quality"), width=entry.get("width", 0),
                   height=entry.get("height", 0), levels=entry.get("levels", 0), entry=entry)

    @property
    def folder(self) -> str:
        """The folder of the ``.dzi`` and its ``_files`` (``tiles``, ``layouts/<slug>/tiles``)."""
        return str(Path(self.dzi).parent)


@dataclass(frozen=True)
class Overview:
    """A layout's whole map as one small JPEG."""

    path: str
    width: int
    height: int

    @classmethod
    def from_entry(cls, entry: dict[str, Any] | None) -> Overview | None:
        if not entry or not entry.get("path"):
            return None
        return cls(entry["path"], entry.get("width", 0), entry.get("height", 0))

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "width": self.width, "height": self.height}


@dataclass(frozen=True)
class Layout:
    """One arrangement of all items on a grid of its own (docs/bundle.md, Layouts)."""

    name: str
    kind: str
    slug: str
    grid: Grid
    positions: str
    grid_file: str
    tiles: Tiles
    overview: Overview | None
    labels: list[dict[str, Any]]
    missing: int
    column: str | list[str] | None = None
    source: str | None = None  # an ``xy`` layout's CSV (the entry's ``path``)

    def read_positions(self, directory: str | Path, mmap: bool = False) -> np.ndarray:
        """int32 (N, 2) ``(row, col)`` of every item (``(-1, -1)``: removed)."""
        return _load_positions(Path(directory) / self.positions, self.name, mmap)

    def as_entry(self) -> dict[str, Any]:
        """The layout as a schema-4 ``layouts`` entry (with the grid's cell size and the
        similarity map's files), for the code that still reads entries as dicts."""
        entry: dict[str, Any] = {"name": self.name, "kind": self.kind, "slug": self.slug}
        if self.column is not None:
            entry["column"] = self.column
        if self.source is not None:
            entry["path"] = self.source
        grid = self.grid.as_dict()
        if self.grid.method is not None:
            grid["method"] = self.grid.method
        entry.update(grid=grid, positions=self.positions, grid_file=self.grid_file,
                     tiles=self.tiles.entry,
                     overview=self.overview.as_dict() if self.overview else {},
                     labels=self.labels, missing=self.missing)
        return entry


@dataclass(frozen=True)
class TopLists:
    """An embedding's stored top-``k`` neighbour lists (``embeddings[].top``)."""

    k: int
    exact: bool
    ids: str
    distances: str


@dataclass(frozen=True)
class Embedding:
    """One embedding: its vectors, its annoy index (``metric``: annoy does not store it) and
    its stored neighbour lists; ``entry`` is the manifest's entry as stored."""

    name: str
    kind: str
    dim: int
    metric: str
    vectors: str
    index: str
    scale: float | None
    search_k: int
    top: TopLists | None
    weights: str | None
    entry: dict[str, Any]

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> Embedding:
        top = entry.get("top")
        return cls(name=entry.get("name", ""), kind=entry.get("kind", ""),
                   dim=int(entry.get("dim", 0)),
                   metric=entry.get("metric", "angular"), vectors=entry.get("vectors", ""),
                   index=entry.get("index", ""), scale=entry.get("scale"),
                   search_k=int(entry.get("search_k") or -1),
                   top=TopLists(int(top.get("k", 0)), bool(top.get("exact")), top["ids"],
                                top["distances"]) if top else None,
                   weights=entry.get("weights"), entry=entry)

    def open_vectors(self, directory: str | Path) -> VectorRows:
        """The vectors, read as float32 rows (scaled; see VectorRows)."""
        return VectorRows(Path(directory) / self.vectors, self.scale)

    def open_top_neighbors(self, directory: str | Path) -> tuple[RowFile, RowFile] | None:
        """Every item's stored nearest neighbours: ``(ids, distances)`` row files, (N, k)
        int32 (-1 past the end) and float32, nearest first, the item itself excluded;
        None for bundles made before them."""
        if self.top is None:
            return None
        files = []
        for part in (self.top.ids, self.top.distances):
            shape, dtype, offset = npy_layout(Path(directory) / part)
            files.append(RowFile(Path(directory) / part, shape, dtype, offset=offset))
        return files[0], files[1]


@dataclass(frozen=True)
class Cells:
    """The cell pack: ``shape`` is ``(N, cell_size, cell_size, 3)``, from the counts and
    the grid's one cell size."""

    path: str
    index: str
    codec: str | None
    quality: int
    decoder: int | None
    shape: tuple[int, int, int, int]

    @property
    def cell_size(self) -> int:
        return self.shape[1]

    def open(self, directory: str | Path) -> PackedCells:
        """The cells, (N, c, c, 3) uint8, decoded on demand from the pack."""
        if self.codec != CELL_CODEC:
            raise BundleError(f"cells codec {self.codec!r} is not {CELL_CODEC!r}")
        return PackedCells(Path(directory) / self.path, Path(directory) / self.index,
                           self.shape)


@dataclass(frozen=True)
class Counts:
    """How many: ``items`` counts every id ever given (removed ones too); ``entry`` is the
    manifest's ``counts`` as stored."""

    items: int
    inputs: int
    skipped: int
    removed: int
    added: int
    entry: dict[str, Any]

    @property
    def left(self) -> int:
        """The items on the map: all ids less the removed ones."""
        return self.items - self.removed


@dataclass(frozen=True)
class Regions:
    """The labelled regions' files and counts (docs/bundle.md, Regions)."""

    path: str
    ids: str
    order: str
    levels: list[int]
    labelled: int
    region_size: int | None
    terms_from: list[str]


@dataclass(frozen=True)
class StoredDuplicates:
    """The duplicate groups the pipeline stored (docs/bundle.md, Duplicates)."""

    path: str
    embedding: str | None
    threshold: float
    groups: int
    items: int


@dataclass(frozen=True, eq=False)
class Bundle:
    """A finished bundle, read once: its folder, the manifest's facts in typed parts, and
    the readers of its files. ``Bundle.open(directory)`` reads the manifest
    (``open_manifest``); ``Bundle.from_manifest`` types a manifest already in hand.

    ``manifest`` is the manifest as a dict with the copies older code indexes filled in
    (``read_manifest``): the base ``run.py add`` and ``remove`` change into their next
    generation's manifest (written through ``stored_manifest``).
    """

    path: Path
    manifest: dict[str, Any] = field(repr=False)
    digest: str
    schema_version: int
    id: str
    title: str
    generation: int
    grid: Grid
    fit: str
    cells: Cells
    layouts: tuple[Layout, ...]
    embeddings: tuple[Embedding, ...]
    counts: Counts
    columns: list[dict[str, Any]]
    facets: list[str]
    regions: Regions | None
    duplicates: StoredDuplicates | None
    hotspots: list[dict[str, Any]]
    display: dict[str, Any]
    parameters: dict[str, Any]
    metadata: str
    layout_xy: str

    @classmethod
    def open(cls, directory: str | Path) -> Bundle:
        """The bundle at ``directory``: BundleNotFound without a manifest, BundleError for
        one this program cannot read."""
        stored, digest = open_manifest(directory)
        return cls.from_manifest(stored, directory, digest)

    @classmethod
    def from_manifest(cls, stored: dict[str, Any], directory: str | Path = ".",
                      digest: str = "") -> Bundle:
        """Type the manifest ``stored`` of the bundle at ``directory`` (any schema this
        program reads, or a manifest being written: missing parts read as absent)."""
        top = stored.get("grid") or {}
        counts = stored.get("counts") or {}
        n_items = int(counts.get("items", 0))
        cell_size = int(top.get("cell_size") or _stored_cell_size(stored))
        grid = Grid(int(top.get("n_rows", 0)), int(top.get("n_cols", 0)), cell_size,
                    top.get("method"))
        files = stored.get("files") or {}
        cells = stored.get("cells") or {}
        shape = (int(cells["shape"][0]) if "counts" not in stored and "shape" in cells
                 else n_items, cell_size, cell_size, 3)
        regions, found = stored.get("regions"), stored.get("duplicates")
        return cls(
            path=Path(directory), manifest=_legacy_manifest(stored, grid, shape),
            digest=digest, schema_version=int(stored.get("schema_version", 0)),
            id=stored.get("id", Path(directory).name),
            title=stored.get("title") or stored.get("id", Path(directory).name),
            generation=int(stored.get("generation", 1)), grid=grid,
            fit=top.get("fit", "fit"),
            cells=Cells(cells.get("path", CELLS_PACK), cells.get("index", CELLS_INDEX),
                        cells.get("codec"), int(cells.get("quality", CELL_QUALITY)),
                        cells.get("decoder"), shape),
            layouts=tuple(_layouts(stored, grid)),
            embeddings=tuple(Embedding.from_entry(e) for e in stored.get("embeddings", [])),
            counts=Counts(n_items, int(counts.get("inputs", n_items)),
                          int(counts.get("skipped", 0)), int(counts.get("removed", 0)),
                          int(counts.get("added", 0)), counts),
            columns=stored.get("columns", []), facets=stored.get("facets", []),
            regions=Regions(regions["path"], regions["ids"], regions["order"],
                            regions["levels"], regions["labelled"],
                            regions.get("region_size"), regions.get("terms_from") or [])
            if regions else None,
            duplicates=StoredDuplicates(found["path"], found.get("embedding"),
                                        found["threshold"], found["groups"], found["items"])
            if found else None,
            hotspots=stored.get("hotspots", []), display=stored.get("display", {}),
            parameters=stored.get("parameters") or {},
            metadata=files.get("metadata", "metadata.sqlite"),
            layout_xy=files.get("layout", "layout.npy"))

    # -- the parts ------------------------------------------------------------------
    @property
    def similarity(self) -> Layout:
        """The similarity map: the first layout."""
        return self.layouts[0]

    @property
    def tiles(self) -> Tiles:
        return self.similarity.tiles

    @property
    def overview(self) -> Overview | None:
        return self.similarity.overview

    @property
    def background(self) -> tuple[int, int, int]:
        """The colour of empty cells the pipeline ran with (white where it is unreadable)."""
        from mosaic.colour import parse_colour

        try:
            return parse_colour(self.parameters.get("background", (255, 255, 255)),
                                "the bundle's background")
        except UsageError:
            return (255, 255, 255)

    def layout(self, name: str | None = None) -> Layout:
        """The layout called ``name`` (None: similarity); UsageError listing the names."""
        if name is None:
            return self.layouts[0]
        for layout in self.layouts:
            if layout.name == name:
                return layout
        raise UsageError(f"--layout {name!r} is not a layout of this bundle; it has "
                         f"{', '.join(layout.name for layout in self.layouts)}")

    def layout_by_slug(self, slug: str) -> Layout | None:
        return next((layout for layout in self.layouts if layout.slug == slug), None)

    def embedding(self, name: str | None) -> Embedding | None:
        return next((e for e in self.embeddings if e.name == name), None)

    @property
    def embedding_names(self) -> list[str]:
        return [e.name for e in self.embeddings]

    @property
    def meaning_embedding(self) -> str | None:
        """The first ``clip`` embedding: the one a search by meaning uses."""
        return next((e.name for e in self.embeddings if e.kind == "clip"), None)

    def file(self, relative: str) -> Path:
        """A path of the bundle (as the manifest names it) on this machine."""
        return self.path / relative

    def connect(self) -> sqlite3.Connection:
        """A new read-only connection to ``metadata.sqlite``."""
        uri = self.file(self.metadata).resolve().as_uri() + "?mode=ro"
        return sqlite3.connect(uri, uri=True)

    # -- the files ------------------------------------------------------------------
    def open_cells(self) -> PackedCells:
        return self.cells.open(self.path)

    def open_vectors(self, embedding: Embedding) -> VectorRows:
        return embedding.open_vectors(self.path)

    def open_top_neighbors(self, embedding: Embedding) -> tuple[RowFile, RowFile] | None:
        return embedding.open_top_neighbors(self.path)

    def read_layout_positions(self, layout: Layout | None = None,
                              mmap: bool = False) -> np.ndarray:
        """int32 (N, 2) ``(row, col)`` of every item in ``layout`` (None: similarity)."""
        return (layout or self.similarity).read_positions(self.path, mmap)

    def read_layout_xy(self) -> np.ndarray:
        """float32 (N, 2): the 2-D layout ``(x, y)`` in [0, 1], memory-mapped."""
        return np.load(self.file(self.layout_xy), mmap_mode="r")

    def removed_ids(self) -> np.ndarray:
        """The ids (int64, sorted) of the items ``run.py remove`` took out: they keep their
        ids but sit on no cell (positions ``(-1, -1)``) and have no row in metadata.sqlite.
        Empty, without reading anything, for a bundle that never lost an item."""
        if not self.counts.removed:
            return np.zeros(0, dtype=np.int64)
        positions = self.read_layout_positions(mmap=True)
        return np.flatnonzero(positions[:, 0] < 0)

    def read_regions(self) -> tuple[list[dict[str, Any]], np.ndarray] | None:
        """``regions.json``'s list of regions (by id) and ``regions.npy``, int32 (N, levels),
        each item's region at each level (memory-mapped); None without regions."""
        if self.regions is None:
            return None
        with open(self.file(self.regions.path), encoding="utf-8") as handle:
            regions = json.load(handle)["regions"]
        return regions, np.load(self.file(self.regions.ids), mmap_mode="r")

    # -- the collection as the viewer reads it ---------------------------------------
    def collection_document(self, url: Callable[[str], str]) -> dict[str, Any]:
        """The collection as the viewer reads it: the server's ``/api/collections/<id>``
        body and a published site's ``collection.json`` (each adds what only it has).
        ``url`` turns a bundle path into the address the reader fetches it at: the
        server's route (versioned), or the path itself in a site, where the files lie at
        their bundle paths."""
        layouts = [layout_document(layout, url) for layout in self.layouts]
        regions, found = self.regions, self.duplicates
        return {
            "id": self.id, "title": self.title, "n_items": self.counts.items,
            "facets": self.facets,
            # the similarity map's, as older viewers read them
            "dzi": layouts[0]["dzi"], "tiles": layouts[0]["tiles"],
            "grid": layouts[0]["grid"], "grid_url": layouts[0]["grid_url"],
            "layouts": layouts,
            "embeddings": [{k: e.entry.get(k) for k in ("name", "kind", "dim", "metric")}
                           for e in self.embeddings],
            # the embedding a search by meaning uses (search?mode=meaning), or None
            "search_by_meaning": self.meaning_embedding,
            "columns": self.columns,
            "hotspots": self.hotspots,
            "regions": {"url": url(regions.path), "order_url": url(regions.order),
                        "levels": regions.levels, "labelled": regions.labelled}
            if regions else None,
            # the stored duplicate groups (the viewer's Duplicates filter), or None
            "duplicates": {"url": url(found.path), "threshold": found.threshold,
                           "groups": found.groups, "items": found.items} if found else None,
            "display": self.display,
            "counts": self.counts.entry,
        }


def layout_document(layout: Layout, url: Callable[[str], str]) -> dict[str, Any]:
    """One layout as the viewer reads it: its grid, addresses (``url``) and labels."""
    body: dict[str, Any] = {"name": layout.name, "kind": layout.kind, "slug": layout.slug}
    if layout.column is not None:
        body["column"] = layout.column
    body.update(
        grid=layout.grid.as_dict(), dzi=url(layout.tiles.dzi), grid_url=url(layout.grid_file),
        overview=url(layout.overview.path) if layout.overview else None,
        tiles={k: v for k, v in layout.tiles.entry.items() if k != "dzi"},
        labels=layout.labels, missing=layout.missing)
    return body


def _load_positions(path: Path, name: str, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as error:
        raise BundleError(f"cannot read the positions of layout {name!r}: {error}") from None


def _stored_cell_size(stored: dict[str, Any]) -> int:
    """The cell size of a partial manifest without a grid (a pack opened on its own)."""
    cells = stored.get("cells") or {}
    if "shape" in cells:
        return int(cells["shape"][1])
    raise BundleError("the manifest has no grid.cell_size")


def _layouts(stored: dict[str, Any], grid: Grid) -> list[Layout]:
    """The similarity map from the manifest's top-level ``grid``, ``tiles``, ``overview``
    and ``files`` (its ``layouts[0]`` adds only its labels), then each ``--layout``."""
    entries = stored.get("layouts") or [{}]
    files = stored.get("files") or {}
    first = entries[0]
    layouts = [Layout(name="similarity", kind="similarity", slug="similarity", grid=grid,
                      positions=files.get("positions", "positions.npy"),
                      grid_file=files.get("grid", "grid.i32"),
                      tiles=Tiles.from_entry(stored.get("tiles")),
                      overview=Overview.from_entry(stored.get("overview")),
                      labels=first.get("labels", []), missing=first.get("missing", 0))]
    for entry in entries[1:]:
        shape = entry["grid"]
        layouts.append(Layout(
            name=entry["name"], kind=entry["kind"], slug=entry["slug"],
            grid=Grid(int(shape["n_rows"]), int(shape["n_cols"]), grid.cell_size,
                      shape.get("method")),
            positions=entry["positions"], grid_file=entry["grid_file"],
            tiles=Tiles.from_entry(entry.get("tiles")),
            overview=Overview.from_entry(entry.get("overview")),
            labels=entry.get("labels", []), missing=entry.get("missing", 0),
            column=entry.get("column"), source=entry.get("path")))
    return layouts


def _legacy_manifest(stored: dict[str, Any], grid: Grid,
                     shape: tuple[int, int, int, int]) -> dict[str, Any]:
    """``stored`` with the copies schema 4 kept and older code still indexes:
    ``cells.cell_size`` and ``cells.shape``, and full ``layouts`` entries (each grid's
    ``cell_size``; the similarity map's grid, files, tiles and overview)."""
    view = dict(stored)
    view["cells"] = {**(stored.get("cells") or {}), "cell_size": grid.cell_size,
                     "shape": list(shape), "dtype": "uint8"}
    if stored.get("layouts"):
        view["layouts"] = [layout.as_entry() for layout in _layouts(stored, grid)]
        for entry, kept in zip(view["layouts"], stored["layouts"]):
            entry.update({k: v for k, v in kept.items() if k not in entry})
    return view


# -- the manifest's entries, written once ---------------------------------------------
#
# The pipeline (``mosaic.pipeline.orchestrator``) builds the manifest with these, so that
# each fact is stored in one place, the place ``Bundle.from_manifest`` reads it from.

def grid_entry(n_rows: int, n_cols: int, cell_size: int, fit: str, method: str,
               **more: Any) -> dict[str, Any]:
    """The manifest's ``grid``: the similarity map's grid, and the bundle's one cell size
    and fit (every layout's cells are this size)."""
    return {"n_rows": n_rows, "n_cols": n_cols, "cell_size": cell_size, "fit": fit,
            "method": method, **more}


def cells_record(decoder: int) -> dict[str, Any]:
    """The manifest's ``cells`` (schema 5): the pack, its index and codec, and the decoder
    that made the cells. Their count and size are ``counts.items`` and ``grid.cell_size``."""
    return {"path": CELLS_PACK, "index": CELLS_INDEX, "codec": CELL_CODEC,
            "quality": CELL_QUALITY, "dtype": "uint8", "decoder": decoder}


def cells_entry(n_items: int, cell_size: int) -> dict[str, Any]:
    """A schema-4 ``cells`` entry (with ``cell_size`` and ``shape``): what partial and
    synthetic manifests (bench/) hand to ``open_cells``; the pipeline writes
    ``cells_record``."""
    return {"path": CELLS_PACK, "index": CELLS_INDEX, "codec": CELL_CODEC,
            "quality": CELL_QUALITY, "cell_size": cell_size,
            "shape": [n_items, cell_size, cell_size, 3], "dtype": "uint8"}


def open_cell_pack(directory: str | Path, n_items: int, cell_size: int) -> PackedCells:
    """The cell pack the pipeline wrote at ``directory``, before its manifest exists."""
    return Cells(CELLS_PACK, CELLS_INDEX, CELL_CODEC, CELL_QUALITY, None,
                 (n_items, cell_size, cell_size, 3)).open(directory)


def similarity_layout_entry(labels: list[dict[str, Any]] | None = None,
                            missing: int = 0) -> dict[str, Any]:
    """The manifest's ``layouts[0]``: the similarity map's own facts only (its grid,
    tiles, overview and files are the manifest's top-level ones)."""
    return {"name": "similarity", "kind": "similarity", "slug": "similarity",
            "labels": labels or [], "missing": missing}


def layout_record(name: str, kind: str, slug: str, *, n_rows: int, n_cols: int,
                  method: str, positions: str, grid_file: str, tiles: dict[str, Any],
                  overview: dict[str, Any], labels: list[dict[str, Any]], missing: int,
                  column: str | list[str] | None = None,
                  source: str | None = None) -> dict[str, Any]:
    """A ``layouts`` entry of a ``--layout``: its grid (cells of the bundle's one size),
    files, pyramid and labels."""
    entry: dict[str, Any] = {"name": name, "kind": kind, "slug": slug}
    if source is not None:
        entry["path"] = source
    if column is not None:
        entry["column"] = column
    entry.update(grid={"n_rows": n_rows, "n_cols": n_cols, "method": method},
                 positions=positions, grid_file=grid_file, tiles=tiles, overview=overview,
                 labels=labels, missing=missing)
    return entry


# -- dict-taking readers, for bench/ and the tests -------------------------------------
#
# The product reads the model; the benchmark scripts and tests that build or change
# manifests as dicts use these wrappers of it.

def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest as a dict, with the copies schema 4 kept filled in (see
    ``Bundle.manifest``). BundleNotFound / BundleError as ``open_manifest``."""
    return Bundle.open(directory).manifest


def stored_manifest(view: dict[str, Any]) -> dict[str, Any]:
    """The manifest to write for ``view``, a ``read_manifest`` dict that ``run.py add`` or
    ``remove`` changed: the schema-4 copies taken out again (``cells.cell_size`` and
    ``shape``, each layout's ``grid.cell_size``, the similarity map's grid, files, tiles
    and overview in ``layouts[0]``), so a changed bundle stores each fact once, as the
    pipeline writes it (schema ``SCHEMA_VERSION``). ValueError when ``layouts[0]`` and
    the top-level grid disagree: the edit changed one copy and not the other."""
    model = Bundle.from_manifest(view)
    out = dict(view)
    out["schema_version"] = SCHEMA_VERSION
    out["grid"] = {**(view.get("grid") or {}), "cell_size": model.grid.cell_size,
                   "fit": model.fit}
    out["cells"] = {k: v for k, v in (view.get("cells") or {}).items()
                    if k not in ("cell_size", "shape")}
    if view.get("layouts"):
        first, *others = view["layouts"]
        copied = first.get("grid") or {}
        if any(k in copied and int(copied[k]) != int(out["grid"].get(k, -1))
               for k in ("n_rows", "n_cols")):
            raise ValueError(f"layouts[0].grid {copied} and grid {out['grid']} disagree")
        out["layouts"] = [similarity_layout_entry(first.get("labels"), first.get("missing", 0))]
        for entry in others:
            out["layouts"].append({**entry, "grid": {k: v for k, v in entry["grid"].items()
                                                     if k != "cell_size"}})
    return out


def _model(manifest: dict[str, Any], directory: str | Path = ".") -> Bundle:
    return Bundle.from_manifest(manifest, directory)


def open_cells(directory: str | Path, manifest: dict[str, Any]) -> PackedCells:
    """The cell thumbnails, (N, c, c, 3) uint8, decoded from the bundle's cell pack."""
    return _model(manifest).cells.open(directory)


def open_vectors(directory: str | Path, embedding: dict[str, Any]) -> VectorRows:
    """The vectors of one manifest ``embeddings`` entry, read as float32 rows."""
    return Embedding.from_entry(embedding).open_vectors(directory)


def open_top_neighbors(directory: str | Path, embedding: dict[str, Any]
                       ) -> tuple[RowFile, RowFile] | None:
    """``Embedding.open_top_neighbors`` for one manifest ``embeddings`` entry."""
    return Embedding.from_entry(embedding).open_top_neighbors(directory)


def layout_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's layouts as schema-4 entries, similarity first (a schema-3 manifest
    reads as its one similarity layout)."""
    return [layout.as_entry() for layout in _model(manifest).layouts]


def layout_entry(manifest: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The layout called ``name`` (None: similarity) as an entry; UsageError listing the
    layout names for an unknown one."""
    return _model(manifest).layout(name).as_entry()


def removed_ids(directory: str | Path, manifest: dict[str, Any]) -> np.ndarray:
    """``Bundle.removed_ids`` of a manifest dict."""
    return _model(manifest, directory).removed_ids()


def read_layout_positions(directory: str | Path, entry: dict[str, Any],
                          mmap: bool = False) -> np.ndarray:
    """int32 (N, 2) ``(row, col)`` of every item in the layout ``entry``."""
    return _load_positions(Path(directory) / entry["positions"], entry["name"], mmap)


def read_regions(directory: str | Path, manifest: dict[str, Any]
                 ) -> tuple[list[dict[str, Any]], np.ndarray] | None:
    """``Bundle.read_regions`` of a manifest dict."""
    return _model(manifest, directory).read_regions()


def region_text(region: dict[str, Any]) -> str:
    """What a region is called in an export: its label, else ``#<id>`` (never a word
    the metadata does not hold)."""
    return region["label"] if region.get("label") is not None else f"#{region['id']}"


def collection_document(manifest: dict[str, Any], url: Callable[[str], str]) -> dict[str, Any]:
    """``Bundle.collection_document`` of a manifest dict."""
    return _model(manifest).collection_document(url)


def meaning_embedding(manifest: dict[str, Any]) -> str | None:
    """``Bundle.meaning_embedding`` of a manifest dict."""
    return _model(manifest).meaning_embedding
