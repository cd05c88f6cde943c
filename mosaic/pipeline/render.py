"""Render stage: the giant grid matrix and its Deep Zoom pyramid.

The matrix is never stored. ``stream_matrix`` builds it one row of cells at a
time and hands it to libvips as a stream (``mosaic.strips.stream_image``);
``dzsave`` reads that stream in one sequential pass and cuts the tiles. Memory
holds one row of cells plus libvips's tile buffers, whatever N is, and the only
files written are tiles.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyvips

from mosaic.bundle import cell_ids
from mosaic.strips import iter_cell_strips, save_streamed, stream_image

TILE_FORMATS = ("jpeg", "webp", "png")
SUFFIXES = {"jpeg": ".jpg", "webp": ".webp", "png": ".png"}
OVERVIEW_SIZE = 2048


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
    overwritten by the next one (``mosaic.strips.iter_cell_strips``, the poster's
    montage stream too).
    """
    read_rows = getattr(cells, "read_rows", None) or (lambda ids: cells[ids])
    return iter_cell_strips(cell_ids(positions, n_rows, n_cols), read_rows, cells.shape[1],
                            background=background, progress=progress)


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
    rows = matrix_rows(cells, positions, n_rows, n_cols, background, progress)
    return stream_image(rows, n_cols * cell, n_rows * cell)


def dzsave_streamed(matrix: pyvips.Image, target: Path, **options) -> None:
    """``matrix.dzsave(target, **options)`` for a matrix streamed from the cells
    (``mosaic.strips.save_streamed``: a cell that cannot be read raises as itself)."""
    save_streamed(matrix, lambda image: image.dzsave(str(target), **options))


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
