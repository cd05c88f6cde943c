"""Render stage: the giant grid matrix and its Deep Zoom pyramid.

The matrix is written once, one row of cells at a time, into a raw uint8 file
that libvips memory-maps (``rawload``) and ``dzsave`` streams into tiles. So
memory holds one strip of cells plus libvips's tile buffers, whatever N is, and
no per-image pipeline is re-evaluated per tile.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyvips

TILE_FORMATS = ("jpeg", "webp", "png")
_SUFFIX = {"jpeg": ".jpg", "webp": ".webp", "png": ".png"}
OVERVIEW_SIZE = 2048


def write_matrix(
    path: Path,
    cells: np.ndarray,
    positions: np.ndarray,
    n_rows: int,
    n_cols: int,
    background: tuple[int, int, int] = (255, 255, 255),
    progress=None,
) -> tuple[int, int]:
    """Write the (n_rows * c) x (n_cols * c) RGB matrix to ``path`` as raw bytes.

    ``cells`` is (N, c, c, 3) uint8 (an array or a RowFile); ``positions`` (N, 2) is
    (row, col). Returns (width, height) in pixels.
    """
    cell = cells.shape[1]
    order = np.lexsort((positions[:, 1], positions[:, 0]))
    row_starts = np.searchsorted(positions[order, 0], np.arange(n_rows + 1))
    strip = np.empty((cell, n_cols * cell, 3), dtype=np.uint8)
    with open(path, "wb") as handle:
        for row in range(n_rows):
            strip[:] = background
            items = order[row_starts[row]:row_starts[row + 1]]
            for item, image in zip(items, cells[items]):
                col = positions[item, 1]
                strip[:, col * cell:(col + 1) * cell] = image
            handle.write(strip.data)
            if progress is not None:
                progress(1)
    return n_cols * cell, n_rows * cell


def open_matrix(path: Path, width: int, height: int) -> pyvips.Image:
    """Memory-map a raw matrix file as an sRGB libvips image."""
    image = pyvips.Image.rawload(str(path), width, height, 3)
    return image.copy(interpretation="srgb")


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
    suffix = _SUFFIX[tile_format]
    if tile_format != "png":
        suffix += f"[Q={quality},strip]" if tile_format == "jpeg" else f"[Q={quality}]"
    matrix.dzsave(str(tmp / "map"), tile_size=tile_size, overlap=overlap,
                  suffix=suffix, layout="dz", depth="onepixel")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    levels = (max(matrix.width, matrix.height) - 1).bit_length() + 1
    return {"dzi": f"{out_dir.name}/map.dzi", "tile_size": tile_size, "overlap": overlap,
            "format": tile_format, "quality": quality, "width": matrix.width,
            "height": matrix.height, "levels": levels}


def overview_image(matrix: pyvips.Image, size: int = OVERVIEW_SIZE) -> pyvips.Image:
    """The whole matrix shrunk so its longest side is at most ``size``."""
    scale = min(1.0, size / max(matrix.width, matrix.height))
    return matrix.resize(scale) if scale < 1.0 else matrix
