"""Render stage: the giant grid matrix and its Deep Zoom pyramid.

The matrix is never stored. ``stream_matrix`` builds it one row of cells at a
time and hands it to libvips as an uncompressed PNG stream through a
non-seekable ``pyvips.SourceCustom``; ``dzsave`` reads that stream in one
sequential pass and cuts the tiles. Memory holds one row of cells plus
libvips's tile buffers, whatever N is, and the only files written are tiles.

Why PNG: of the loaders in this libvips build, only PNG reads a non-seekable
source as it goes. TIFF from a non-seekable source is first read whole into
memory, and the PPM and ``.v`` loaders are not built into pyvips-binary (or
need a file). The PNG is stored, not compressed (deflate level 0, filter
none), so encoding it is a copy and a checksum.
"""

from __future__ import annotations

import queue
import shutil
import struct
import threading
import weakref
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyvips

from mosaic.bundle import cell_ids
from mosaic.strip_tiff import iter_cell_strips

TILE_FORMATS = ("jpeg", "webp", "png")
SUFFIXES = {"jpeg": ".jpg", "webp": ".webp", "png": ".png"}
OVERVIEW_SIZE = 2048
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IDAT_BYTES = 1 << 20  # pixel bytes per IDAT chunk: the encoder holds a few chunks at a time


def matrix_rows(
    cells,
    positions: np.ndarray,
    n_rows: int,
    n_cols: int,
    background: tuple[int, int, int] = (255, 255, 255),
    progress: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """The (n_rows * c) x (n_cols * c) RGB matrix as ``n_rows`` blocks of (c, n_cols * c, 3).

    ``cells`` is (N, c, c, 3) uint8: anything with ``.shape`` and
    ``.read_rows(ids)`` (a RowFile) or a numpy array; ``positions`` (N, 2) is
    (row, col), ``(-1, -1)`` for an item on no cell. Every block is the same buffer,
    overwritten by the next one (``mosaic.strip_tiff.iter_cell_strips``, the poster's
    montage stream too).
    """
    read_rows = getattr(cells, "read_rows", None) or (lambda ids: cells[ids])
    return iter_cell_strips(cell_ids(positions, n_rows, n_cols), read_rows, cells.shape[1],
                            background=background, progress=progress)


def _png_chunk(kind: bytes, body) -> tuple[bytes, ...]:
    """A PNG chunk as pieces (length + type, body, CRC), so a large body is not copied."""
    crc = zlib.crc32(body, zlib.crc32(kind))
    return struct.pack(">I", len(body)) + kind, body, struct.pack(">I", crc)


def png_stream(blocks: Iterator[np.ndarray], width: int, height: int) -> Iterator[bytes]:
    """An 8-bit RGB PNG of uint8 (h, ``width``, 3) ``blocks``, top to bottom, as byte pieces.

    Stored deflate (no compression) and filter type none on every scanline, so
    the pixels pass through unchanged. The blocks must add up to ``height``.
    """
    yield PNG_SIGNATURE
    yield from _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    deflate = zlib.compressobj(0)
    lines_per_chunk = max(1, IDAT_BYTES // (width * 3 + 1))
    lines = np.zeros((lines_per_chunk, width * 3 + 1), dtype=np.uint8)  # column 0: filter 0
    written = 0
    for block in blocks:
        if block.shape[1:] != (width, 3) or block.dtype != np.uint8:
            raise ValueError(f"block of shape {block.shape} is not (h, {width}, 3) uint8")
        flat = block.reshape(block.shape[0], width * 3)
        for start in range(0, len(flat), lines_per_chunk):
            part = flat[start:start + lines_per_chunk]
            lines[:len(part), 1:] = part
            data = deflate.compress(lines[:len(part)].data)
            if data:
                yield from _png_chunk(b"IDAT", data)
        written += block.shape[0]
    if written != height:
        raise ValueError(f"blocks hold {written} rows, not {height}")
    yield from _png_chunk(b"IDAT", deflate.flush())
    yield from _png_chunk(b"IEND", b"")


_END = object()


def _produce(pieces: Iterator[bytes], out: queue.Queue, closed: threading.Event) -> None:
    """Put ``pieces`` on ``out``, then _END or the exception that stopped them."""
    try:
        for piece in pieces:
            if not _put(out, piece, closed):
                return
        last = _END
    except BaseException as error:  # noqa: BLE001 -- handed to the reader, raised there
        last = error
    _put(out, last, closed)


def _put(out: queue.Queue, item, closed: threading.Event) -> bool:
    while not closed.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


class StreamSource(pyvips.SourceCustom):
    """A non-seekable libvips source that reads an iterator of byte pieces.

    The iterator runs in one thread of its own, at most ``depth`` pieces ahead
    of libvips: its allocations stay in one malloc arena (libvips calls
    ``read`` from any of its worker threads, and large buffers freed across
    many arenas were kept as RSS), and building the next row overlaps with
    cutting the last. An exception raised by the iterator ends the stream
    (libvips then fails on a truncated image) and is kept in ``error`` for
    ``cut_tiles`` to raise instead of libvips's message.
    """

    def __init__(self, pieces: Iterator[bytes], depth: int = 4):
        super().__init__()
        self.error: BaseException | None = None
        self.pieces, self.queue = pieces, queue.Queue(maxsize=depth)
        self.closed = threading.Event()
        self.producer: threading.Thread | None = None
        self.piece, self.offset = memoryview(b""), 0
        self.lock = threading.Lock()
        weakref.finalize(self, self.closed.set)  # a source dropped half-read stops its thread
        self.on_read(self.read)

    def read(self, size: int) -> memoryview | None:
        with self.lock:
            if self.producer is None:
                self.producer = threading.Thread(
                    target=_produce, args=(self.pieces, self.queue, self.closed),
                    name="matrix-stream", daemon=True)
                self.producer.start()
            while self.offset >= len(self.piece):
                if self.closed.is_set():
                    return None
                item = self.queue.get()
                if item is _END:
                    self.closed.set()
                    return None
                if isinstance(item, BaseException):
                    self.error = item
                    self.closed.set()
                    return None
                self.piece, self.offset = memoryview(item), 0
            chunk = self.piece[self.offset:self.offset + size]
            self.offset += len(chunk)
            return chunk

    def close(self) -> None:
        """Stop the producer thread (the stream is done or abandoned)."""
        self.closed.set()
        if self.producer is not None:
            self.producer.join()


def stream_matrix(
    cells,
    positions: np.ndarray,
    n_rows: int,
    n_cols: int,
    background: tuple[int, int, int] = (255, 255, 255),
    progress: Callable[[int], None] | None = None,
) -> pyvips.Image:
    """The grid matrix as a libvips image for one sequential pass; nothing is written.

    Arguments as ``matrix_rows``. Rows of cells are built as libvips reads
    them, so the image can be read once, top to bottom (e.g. by ``cut_tiles``).
    """
    cell = cells.shape[1]
    width, height = n_cols * cell, n_rows * cell
    rows = matrix_rows(cells, positions, n_rows, n_cols, background, progress)
    source = StreamSource(png_stream(rows, width, height))
    # fail_on: a stream cut short must fail the cut, not pad the map with grey.
    return pyvips.Image.new_from_source(source, "", access="sequential", fail_on="truncated")


def _stream_sources(matrix: pyvips.Image) -> list[StreamSource]:
    # pyvips keeps an image's source alive in ``_references``
    return [s for s in getattr(matrix, "_references", []) if isinstance(s, StreamSource)]


def dzsave_streamed(matrix: pyvips.Image, target: Path, **options) -> None:
    """``matrix.dzsave(target, **options)`` for a matrix streamed from the cells: the
    stream's sources are closed afterwards, and a failure inside them (e.g. a cell
    that cannot be read) is raised as itself, never as a map cut short."""
    sources = _stream_sources(matrix)
    try:
        matrix.dzsave(str(target), **options)
    except pyvips.Error as error:
        cause = next((s.error for s in sources if s.error), None)
        if cause is not None:
            raise cause from error
        raise
    finally:
        for source in sources:
            source.close()
    cause = next((s.error for s in sources if s.error), None)
    if cause is not None:  # not expected (fail_on), but a map cut short is no map
        raise cause


def cut_tiles(
    matrix: pyvips.Image,
    out_dir: Path,
    tile_size: int = 256,
    overlap: int = 0,
    tile_format: str = "jpeg",
    quality: int = 85,
) -> dict:
    """Cut ``matrix`` into ``out_dir/map.dzi`` + ``map_files/``; returns tile info.

    Writes into a sibling temp folder first and renames it, so an interrupted
    cut never leaves a half pyramid where a finished one is expected.
    """
    if tile_format not in TILE_FORMATS:
        raise ValueError(f"tile_format must be one of {TILE_FORMATS}")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    suffix = SUFFIXES[tile_format]
    if tile_format != "png":
        suffix += f"[Q={quality},strip]" if tile_format == "jpeg" else f"[Q={quality}]"
    dzsave_streamed(matrix, tmp / "map", tile_size=tile_size, overlap=overlap, suffix=suffix,
                    layout="dz", depth="onepixel")
    # libvips's metadata sidecar holds a timestamp and nothing a viewer needs.
    (tmp / "map_files" / "vips-properties.xml").unlink(missing_ok=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    levels = (max(matrix.width, matrix.height) - 1).bit_length() + 1
    return {"dzi": f"{out_dir.name}/map.dzi", "tile_size": tile_size, "overlap": overlap,
            "format": tile_format, "quality": quality, "width": matrix.width,
            "height": matrix.height, "levels": levels}


def render_overview(tiles_dir: Path, tiles: dict, size: int = OVERVIEW_SIZE) -> pyvips.Image:
    """The whole map with its longest side at most ``size``, joined from the pyramid.

    The deepest level that fits is already cut, so this reads at most a few
    dozen tiles instead of the whole matrix again.
    """
    width, height, tile, overlap = (tiles["width"], tiles["height"], tiles["tile_size"],
                                    tiles["overlap"])
    top = tiles["levels"] - 1
    level = top
    while level > 0 and max(-(-width // 2 ** (top - level)), -(-height // 2 ** (top - level))) \
            > size:
        level -= 1
    level_width = -(-width // 2 ** (top - level))
    level_height = -(-height // 2 ** (top - level))
    across, down = -(-level_width // tile), -(-level_height // tile)
    suffix = SUFFIXES[tiles["format"]]
    pieces = []
    for y in range(down):
        for x in range(across):
            piece = pyvips.Image.new_from_file(
                str(tiles_dir / "map_files" / str(level) / f"{x}_{y}{suffix}"))
            left, upper = (overlap if x else 0), (overlap if y else 0)
            pieces.append(piece.crop(left, upper, min(tile, level_width - x * tile),
                                     min(tile, level_height - y * tile)))
    # arrayjoin lays pieces on a grid of equal cells; only the last column and row
    # are narrower, so cropping the joined image to the level's size is exact.
    joined = pyvips.Image.arrayjoin(pieces, across=across)
    return joined.crop(0, 0, level_width, level_height).copy_memory()


def render_grid(
    cells,
    positions: np.ndarray,
    n_rows: int,
    n_cols: int,
    tiles_dir: Path,
    background: tuple[int, int, int] = (255, 255, 255),
    tile_size: int = 256,
    overlap: int = 0,
    tile_format: str = "jpeg",
    quality: int = 85,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict, pyvips.Image]:
    """One layout's pyramid from the stored cells: ``stream_matrix`` -> ``cut_tiles`` ->
    ``render_overview``. Returns the tile info and the overview image (not written)."""
    matrix = stream_matrix(cells, positions, n_rows, n_cols, background, progress)
    tiles = cut_tiles(matrix, tiles_dir, tile_size, overlap, tile_format, quality)
    return tiles, render_overview(tiles_dir, tiles)
