"""Montages as strips: the one streamer of rows of cells, and the stream libvips reads.

``iter_cell_strips`` builds a grid of cells one row of cells at a time: the render
stage's grid matrix (``mosaic.pipeline.render.matrix_rows``, streamed into
``dzsave``) and the poster's montage (``mosaic.poster.render.iter_montage_strips``,
with gutters) are both this stream, with their own cells.

``stream_image`` hands such strips to libvips as an uncompressed PNG stream through
a non-seekable ``pyvips.SourceCustom``, read in one sequential pass: memory holds a
strip plus libvips's buffers, whatever the size. Why PNG: of the loaders in this
libvips build, only PNG reads a non-seekable source as it goes. TIFF from a
non-seekable source is first read whole into memory, and the PPM and ``.v`` loaders
are not built into pyvips-binary (or need a file). The PNG is stored, not compressed
(deflate level 0, filter none), so encoding it is a copy and a checksum.
``write_tiff`` saves such a stream as a strip BigTIFF with libvips (the poster's
montage, read back once per output with plain sequential reads).
"""

from __future__ import annotations

import queue
import struct
import threading
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyvips

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROWS_AHEAD = 2  # rows of cells fetched before their strip is asked for
IDAT_BYTES = 1 << 20  # pixel bytes per IDAT chunk: the encoder holds a few chunks at a time


def iter_cell_strips(
    cell_grid: np.ndarray,
    fetch: Callable[[np.ndarray], np.ndarray],
    cell_px: int,
    gutter_px: int = 0,
    background: tuple[int, int, int] = (255, 255, 255),
    progress: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """A grid of cells as uint8 strips (h, width, 3), top to bottom.

    ``cell_grid`` is int (n_rows, n_cols) of item ids, -1 for empty cells;
    ``fetch(ids)`` returns their cells, in that order, as uint8 (k, cell_px, cell_px, 3)
    (one call per row of cells, ids in column order; the calls come in row order from
    a thread of their own, up to ``ROWS_AHEAD`` rows before their strip is asked for).
    Strips are one row of cells, then (with a gutter) a gutter strip between rows;
    empty cells and gutters are ``background``. ``progress(1)`` after each row of
    cells. The same buffer is reused: consume each strip before asking for the next.
    """
    n_rows, n_cols = cell_grid.shape
    pitch = cell_px + gutter_px
    width = n_cols * pitch - gutter_px
    strip = np.empty((cell_px, width, 3), dtype=np.uint8)
    gutter = np.empty((gutter_px, width, 3), dtype=np.uint8)
    gutter[:] = background
    # The next rows' cells are fetched on a thread of their own while this one is
    # consumed (the cells' JPEG decode releases the GIL): fetched in turn, with libvips
    # waiting, a core stayed idle (docs/scale.md, "The render stage at a million").
    pool = ThreadPoolExecutor(1, thread_name_prefix="cell-rows")
    ahead: deque = deque()

    def fetch_row(row: int) -> tuple[np.ndarray, Future | None]:
        cols = np.flatnonzero(cell_grid[row] >= 0)
        return cols, pool.submit(fetch, cell_grid[row, cols]) if len(cols) else None

    try:
        ahead.extend(fetch_row(row) for row in range(min(ROWS_AHEAD, n_rows)))
        for row in range(n_rows):
            cols, fetched = ahead.popleft()
            if row + ROWS_AHEAD < n_rows:
                ahead.append(fetch_row(row + ROWS_AHEAD))
            if len(cols) < n_cols or gutter_px:  # background under the gaps; a full row is cells
                strip[:] = background
            if fetched is not None:
                for cell, col in zip(fetched.result(), cols.tolist(), strict=True):
                    strip[:, col * pitch:col * pitch + cell_px] = cell
            yield strip
            if progress is not None:
                progress(1)
            if gutter_px and row < n_rows - 1:
                yield gutter
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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
    ``save_streamed`` to raise instead of libvips's message.
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
                    name="strip-stream", daemon=True)
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


def stream_image(blocks: Iterable[np.ndarray], width: int, height: int) -> pyvips.Image:
    """uint8 (h, ``width``, 3) ``blocks``, top to bottom, as a libvips image for one
    sequential pass (built as libvips reads them); nothing is written."""
    source = StreamSource(png_stream(iter(blocks), width, height))
    # fail_on: a stream cut short must fail the save, not pad the image with grey.
    return pyvips.Image.new_from_source(source, "", access="sequential", fail_on="truncated")


def _stream_sources(image: pyvips.Image) -> list[StreamSource]:
    # pyvips keeps an image's source alive in ``_references``
    return [s for s in getattr(image, "_references", []) if isinstance(s, StreamSource)]


def _failure(sources: list[StreamSource]) -> BaseException | None:
    """The exception that ended one of ``sources``' streams, if any."""
    return next((s.error for s in sources if s.error), None)


def save_streamed(image: pyvips.Image, save: Callable[[pyvips.Image], None]) -> None:
    """``save(image)`` for an image from ``stream_image``: the stream's sources are
    closed afterwards, and a failure inside them (e.g. a cell that cannot be read) is
    raised as itself, never as an image cut short."""
    sources = _stream_sources(image)
    try:
        save(image)
    except pyvips.Error as error:
        cause = _failure(sources)
        if cause is not None:
            raise cause from error
        raise
    finally:
        for source in sources:
            source.close()
    cause = _failure(sources)
    if cause is not None:  # not expected (fail_on), but an image cut short is none
        raise cause


def write_tiff(path: Path, blocks: Iterable[np.ndarray], width: int, height: int) -> None:
    """Write uint8 (h, ``width``, 3) ``blocks``, top to bottom, as a ``width`` x ``height``
    uncompressed strip BigTIFF, with libvips, in one pass. The blocks may have any
    heights but must add up to ``height``."""
    image = stream_image(blocks, width, height)
    save_streamed(image, lambda streamed: streamed.tiffsave(
        str(path), bigtiff=True, compression="none", strip=True))
