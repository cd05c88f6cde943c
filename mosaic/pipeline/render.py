"""Render stage: the giant grid matrix and its Deep Zoom pyramid.

The matrix is written once, one row of cells at a time, into an uncompressed
strip BigTIFF, which libvips then reads sequentially (plain reads, no memory
map) while ``dzsave`` streams it into tiles. So memory holds one strip of
cells plus libvips's tile buffers, whatever N is, and no per-image pipeline is
re-evaluated per tile. (A raw file opened with ``rawload`` is memory-mapped
instead, and its pages count towards the process's RSS as dzsave reads them.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyvips

from mosaic.strip_tiff import write_strip_tiff

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
    """Write the (n_rows * c) x (n_cols * c) RGB matrix to ``path`` as a strip BigTIFF.

    ``cells`` is (N, c, c, 3) uint8 (an array or a RowFile); ``positions`` (N, 2)
    is (row, col). One grid row is in memory at a time. Returns (width, height).
    """
    cell = cells.shape[1]
    width, height = n_cols * cell, n_rows * cell
    order = np.lexsort((positions[:, 1], positions[:, 0]))
    row_starts = np.searchsorted(positions[order, 0], np.arange(n_rows + 1))

    def strips():
        strip = np.empty((cell, width, 3), dtype=np.uint8)
        for row in range(n_rows):
            strip[:] = background
            items = order[row_starts[row]:row_starts[row + 1]]
            for item, image in zip(items, cells[items]):
                col = positions[item, 1]
                strip[:, col * cell:(col + 1) * cell] = image
            yield strip  # written before the next row overwrites it
            if progress is not None:
                progress(1)

    write_strip_tiff(path, strips(), width, height)
    return width, height


def open_matrix(path: Path) -> pyvips.Image:
    """Open a matrix written by ``write_matrix`` for one sequential pass."""
    return pyvips.Image.new_from_file(str(path), access="sequential")


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
    suffix = _SUFFIX[tiles["format"]]
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
