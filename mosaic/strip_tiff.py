"""Write an uncompressed strip BigTIFF from a stream of RGB row blocks.

The poster montage is produced one row of cells at a time; writing those rows
into a strip TIFF lets libvips read it back with plain sequential reads
(``access="sequential"``). (The render stage's grid matrix is not written at
all: ``mosaic.pipeline.render`` streams it into ``dzsave``.) A raw file
opened with ``rawload`` would be memory-mapped instead, and every page libvips
touched would count towards the process's RSS.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

ROWS_PER_STRIP = 64
_HEADER = 16
_SHORT, _LONG8 = 3, 16


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
