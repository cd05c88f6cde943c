"""Montages as strips: the one streamer of rows of cells, and a strip BigTIFF writer.

``iter_cell_strips`` builds a grid of cells one row of cells at a time: the render
stage's grid matrix (``mosaic.pipeline.render.matrix_rows``, streamed into
``dzsave``) and the poster's montage (``mosaic.poster.render.iter_montage_strips``,
with gutters) are both this stream, with their own cells.

The poster montage is produced one row of cells at a time; writing those rows
into a strip TIFF lets libvips read it back with plain sequential reads
(``access="sequential"``). (The render stage's grid matrix is not written at
all: ``mosaic.pipeline.render`` streams it into ``dzsave``.) A raw file
opened with ``rawload`` would be memory-mapped instead, and every page libvips
touched would count towards the process's RSS.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

ROWS_PER_STRIP = 64
_HEADER = 16
_SHORT, _LONG8 = 3, 16


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
    (one call per row of cells, ids in column order). Strips are one row of cells,
    then (with a gutter) a gutter strip between rows; empty cells and gutters are
    ``background``. ``progress(1)`` after each row of cells. The same buffer is
    reused: consume each strip before asking for the next.
    """
    n_rows, n_cols = cell_grid.shape
    pitch = cell_px + gutter_px
    width = n_cols * pitch - gutter_px
    strip = np.empty((cell_px, width, 3), dtype=np.uint8)
    gutter = np.empty((gutter_px, width, 3), dtype=np.uint8)
    gutter[:] = background
    for row in range(n_rows):
        cols = np.flatnonzero(cell_grid[row] >= 0)
        if len(cols) < n_cols or gutter_px:  # background under the gaps; a full row is cells
            strip[:] = background
        if len(cols):
            cells = fetch(cell_grid[row, cols])
            for cell, col in zip(cells, cols.tolist(), strict=True):
                strip[:, col * pitch:col * pitch + cell_px] = cell
        yield strip
        if progress is not None:
            progress(1)
        if gutter_px and row < n_rows - 1:
            yield gutter


def write_strip_tiff(path: Path, blocks: Iterable[np.ndarray], width: int, height: int) -> None:
    """Write uint8 (h, ``width``, 3) ``blocks``, top to bottom, as a ``width`` x ``height`` TIFF.

    The blocks may have any heights but must add up to ``height``.
    """
    written = 0
    with open(path, "wb") as handle:
        handle.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))  # IFD offset patched below
        for block in blocks:
            if block.shape[1:] != (width, 3) or block.dtype != np.uint8:
                raise ValueError(f"block of shape {block.shape} is not (h, {width}, 3) uint8")
            handle.write(np.ascontiguousarray(block).data)
            written += block.shape[0]
        if written != height:
            raise ValueError(f"blocks hold {written} rows, not {height}")
        _write_directory(handle, width, height)


def _write_directory(handle, width: int, height: int) -> None:
    rows = min(ROWS_PER_STRIP, height)
    n_strips = -(-height // rows)
    row_bytes = width * 3
    offsets = [_HEADER + i * rows * row_bytes for i in range(n_strips)]
    counts = [min(rows, height - i * rows) * row_bytes for i in range(n_strips)]
    offsets_at = handle.tell()
    handle.write(struct.pack(f"<{n_strips}Q", *offsets))
    counts_at = handle.tell()
    handle.write(struct.pack(f"<{n_strips}Q", *counts))

    def entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
        return struct.pack("<HHQ", tag, kind, count) + value.ljust(8, b"\0")

    def number(value: int) -> bytes:
        return struct.pack("<Q", value)

    single = n_strips == 1
    entries = [
        entry(256, _LONG8, 1, number(width)),
        entry(257, _LONG8, 1, number(height)),
        entry(258, _SHORT, 3, struct.pack("<HHH", 8, 8, 8)),
        entry(259, _SHORT, 1, struct.pack("<H", 1)),    # no compression
        entry(262, _SHORT, 1, struct.pack("<H", 2)),    # RGB
        entry(273, _LONG8, n_strips, number(offsets[0] if single else offsets_at)),
        entry(277, _SHORT, 1, struct.pack("<H", 3)),
        entry(278, _LONG8, 1, number(rows)),
        entry(279, _LONG8, n_strips, number(counts[0] if single else counts_at)),
        entry(284, _SHORT, 1, struct.pack("<H", 1)),    # chunky RGBRGB
    ]
    directory_at = handle.tell()
    handle.write(struct.pack("<Q", len(entries)) + b"".join(entries) + number(0))
    handle.seek(8)
    handle.write(number(directory_at))
