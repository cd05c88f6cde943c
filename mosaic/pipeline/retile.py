"""Re-render part of a Deep Zoom pyramid: the tiles over some changed cells, at every level.

``run.py remove`` empties a few cells of a map that ``dzsave`` cut; cutting the
whole pyramid again would read every cell. Instead the tiles that hold a changed
cell are built again from the cells (the deepest level), and each level above
from the four tiles under it, exactly as ``dzsave`` shrinks a level: the mean of
each 2 x 2 block, rounded (``(a + b + c + d + 2) >> 2``), the last column or row
repeated where a level's size is odd (checked against ``dzsave`` on PNG tiles in
tests/test_remove.py). With JPEG tiles a rebuilt tile above the deepest level
is shrunk from decoded JPEG tiles where ``dzsave`` shrank exact pixels: it
differs from a full re-cut by JPEG noise (the test bounds it).

``run.py add`` fills free cells the same way, and where the map grows by rows
at the bottom (``grow``) the same pyramid gains tiles along its new edge (and a
level on top when its longest side passes a power of two: the old levels are
renamed one up, as ``dzsave`` would have numbered them).

The geometry (regions, tile lists, shrinking, composing) is pure; ``rewrite_tiles``
and ``grow`` read and write the tile files, each through ``generation.replace``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyvips
from PIL import Image

from mosaic.pipeline import generation, render

# A level's rewritten tiles are kept as computed for the level above while they fit in
# this; beyond it (many thousands of changed cells) the level above reads them back
# decoded, which adds a little JPEG noise there.
EXACT_BYTES = 256 << 20


def level_sizes(width: int, height: int, levels: int) -> list[tuple[int, int]]:
    """``(width, height)`` of each pyramid level, level 0 (1 x 1) to ``levels - 1`` (full)."""
    sizes = []
    for level in range(levels):
        scale = 2 ** (levels - 1 - level)
        sizes.append((-(-width // scale), -(-height // scale)))
    return sizes


def tile_region(tx: int, ty: int, size: tuple[int, int], tile: int, overlap: int
                ) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``, the pixels of one level that tile ``(tx, ty)`` holds
    (``dzsave``'s ``dz`` layout: ``overlap`` more on each inner side)."""
    width, height = size
    x0 = tx * tile - (overlap if tx else 0)
    y0 = ty * tile - (overlap if ty else 0)
    return x0, y0, min((tx + 1) * tile + overlap, width), min((ty + 1) * tile + overlap, height)


def tiles_over(rects: Iterable[tuple[int, int, int, int]], size: tuple[int, int], tile: int,
               overlap: int) -> set[tuple[int, int]]:
    """Every tile ``(tx, ty)`` of a level whose region meets one of ``rects`` (x0, y0, x1, y1)."""
    width, height = size
    across, down = -(-width // tile), -(-height // tile)
    found = set()
    for x0, y0, x1, y1 in rects:
        for ty in range(max(0, (y0 - overlap) // tile), min(down, -(-(y1 + overlap) // tile))):
            for tx in range(max(0, (x0 - overlap) // tile),
                            min(across, -(-(x1 + overlap) // tile))):
                rx0, ry0, rx1, ry1 = tile_region(tx, ty, size, tile, overlap)
                if rx0 < x1 and x0 < rx1 and ry0 < y1 and y0 < ry1:
                    found.add((tx, ty))
    return found


def halve_rects(rects: Iterable[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """The pixels of the level above that depend on ``rects``."""
    return [(x0 // 2, y0 // 2, -(-x1 // 2), -(-y1 // 2)) for x0, y0, x1, y1 in rects]


def shrink(block: np.ndarray) -> np.ndarray:
    """``dzsave``'s 2 x 2 mean of a uint8 (h, w, bands) block that starts at even
    coordinates; an odd last row or column is repeated (the level's edge)."""
    if block.shape[1] % 2:
        block = np.concatenate([block, block[:, -1:]], axis=1)
    if block.shape[0] % 2:
        block = np.concatenate([block, block[-1:]], axis=0)
    wide = block.astype(np.uint16)
    total = wide[0::2, 0::2] + wide[1::2, 0::2] + wide[0::2, 1::2] + wide[1::2, 1::2]
    return ((total + 2) >> 2).astype(np.uint8)


def compose_cells(region: tuple[int, int, int, int], grid: np.ndarray, cell: int,
                  read_cells: Callable[[np.ndarray], np.ndarray],
                  background: tuple[int, int, int]) -> np.ndarray:
    """The deepest level's pixels in ``region`` (x0, y0, x1, y1): the cells of ``grid``
    (int32 (n_rows, n_cols) of item ids, -1 empty) that fall in it, ``background`` elsewhere.
    ``read_cells(ids)`` gives uint8 (k, cell, cell, 3)."""
    x0, y0, x1, y1 = region
    out = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
    out[:] = background
    rows = range(y0 // cell, -(-y1 // cell))
    cols = range(x0 // cell, -(-x1 // cell))
    block = grid[rows.start:rows.stop, cols.start:cols.stop]
    where = np.argwhere(block >= 0)
    if not len(where):
        return out
    ids = block[where[:, 0], where[:, 1]]
    order = np.argsort(ids, kind="stable")  # read the pack in id order
    pictures = read_cells(ids[order])
    for (r, c), picture in zip(where[order], pictures):
        top, left = (rows.start + int(r)) * cell, (cols.start + int(c)) * cell
        sy0, sx0 = max(y0, top), max(x0, left)
        sy1, sx1 = min(y1, top + cell), min(x1, left + cell)
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = picture[sy0 - top:sy1 - top,
                                                            sx0 - left:sx1 - left]
    return out


def assemble(region: tuple[int, int, int, int], size: tuple[int, int], tile: int, overlap: int,
             read_tile: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """The pixels of one level in ``region`` (x0, y0, x1, y1), from its tiles
    (``read_tile(tx, ty)`` gives a uint8 (h, w, 3) tile as stored)."""
    x0, y0, x1, y1 = region
    out = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
    for ty in range(y0 // tile, -(-y1 // tile)):
        for tx in range(x0 // tile, -(-x1 // tile)):
            rx0, ry0, _, _ = tile_region(tx, ty, size, tile, overlap)
            # the tile's own square, without the overlap it shares with its neighbours
            ox0, oy0 = tx * tile, ty * tile
            ox1, oy1 = min(ox0 + tile, size[0]), min(oy0 + tile, size[1])
            sx0, sy0, sx1, sy1 = max(x0, ox0), max(y0, oy0), min(x1, ox1), min(y1, oy1)
            if sx0 >= sx1 or sy0 >= sy1:
                continue
            pixels = read_tile(tx, ty)
            out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = pixels[sy0 - ry0:sy1 - ry0,
                                                               sx0 - rx0:sx1 - rx0]
    return out


def shrunk_tile(tx: int, ty: int, size: tuple[int, int], below: tuple[int, int], tile: int,
                overlap: int, read_below: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Tile ``(tx, ty)`` of a level of ``size`` made from the level ``below`` it (twice
    as large), whose tiles ``read_below(tx, ty)`` gives."""
    x0, y0, x1, y1 = tile_region(tx, ty, size, tile, overlap)
    source = (2 * x0, 2 * y0, min(2 * x1, below[0]), min(2 * y1, below[1]))
    return shrink(assemble(source, below, tile, overlap, read_below))


# -- the tile files ------------------------------------------------------------


def read_tile(path: Path) -> np.ndarray:
    """A stored tile's pixels, uint8 (h, w, 3). A JPEG tile is decoded by Pillow: the same
    pixels as libvips's decode (libjpeg's default IDCT and upsampling in both; checked on
    the tiles of a 100k map) in a third of the time, which libvips spends on finding
    the loader and setting up a pipeline for each small file."""
    if path.suffix in (".jpg", ".jpeg"):
        with Image.open(path) as image:
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    image = pyvips.Image.new_from_file(str(path))
    pixels = image.numpy().reshape(image.height, image.width, image.bands)
    return pixels[..., :3] if image.bands >= 3 else np.repeat(pixels[..., :1], 3, axis=2)


def write_tile(path: Path, pixels: np.ndarray, tiles: dict) -> None:
    """Save one tile's uint8 (h, w, 3) pixels as ``render.cut_tiles`` saves them. A JPEG
    tile is encoded by Pillow with libvips's settings (the quality, chroma halved below
    Q 90 as libvips's ``subsample_mode=auto`` does, no metadata): the same pixels once
    decoded (checked at Q 75-95 on a 100k map's tiles; the headers differ), in under
    half the time."""
    if tiles["format"] == "jpeg":
        quality = int(tiles["quality"])
        Image.fromarray(pixels).save(path, format="JPEG", quality=quality,
                                     subsampling=0 if quality >= 90 else 2)
        return
    _, options = tile_options(tiles)
    pyvips.Image.new_from_array(np.ascontiguousarray(pixels)).copy(
        interpretation="srgb").write_to_file(f"{path}{options}")


def tile_options(tiles: dict) -> tuple[str, str]:
    """The tile files' suffix and libvips save options, as ``render.cut_tiles`` wrote them."""
    suffix = render.SUFFIXES[tiles["format"]]
    if tiles["format"] == "jpeg":
        return suffix, f"[Q={tiles['quality']},strip]"
    if tiles["format"] == "webp":
        return suffix, f"[Q={tiles['quality']}]"
    return suffix, ""


def levels_for(width: int, height: int) -> int:
    """How many levels ``dzsave`` (``depth="onepixel"``) cuts for a ``width x height`` map."""
    return (max(width, height) - 1).bit_length() + 1


def rewrite_tiles(folder: Path, tiles: dict, rects, grid: np.ndarray, cell: int, cells,
                  background, every_tile_below: int = 0) -> int:
    """Write again every tile of the pyramid ``folder`` (``map_files``) over ``rects``
    (pixels of the deepest level), deepest level first, each level from the one below:
    that level's rewritten tiles as computed (exact, while they fit in ``EXACT_BYTES``),
    the others decoded. Levels below ``every_tile_below`` are written whole. Returns how
    many tiles were written."""
    size, overlap, levels = int(tiles["tile_size"]), int(tiles["overlap"]), int(tiles["levels"])
    sizes = level_sizes(int(tiles["width"]), int(tiles["height"]), levels)
    suffix, _ = tile_options(tiles)
    written = 0
    exact: dict[tuple[int, int], np.ndarray] = {}

    def read_below(level: int):
        def read(tx: int, ty: int) -> np.ndarray:
            if (tx, ty) in exact:
                return exact[tx, ty]
            return read_tile(folder / str(level) / f"{tx}_{ty}{suffix}")
        return read

    for level in range(levels - 1, -1, -1):
        level_rects = [(0, 0, *sizes[level])] if level < every_tile_below else rects
        dirty = sorted(tiles_over(level_rects, sizes[level], size, overlap))
        keep = len(dirty) * (size + 2 * overlap) ** 2 * 3 <= EXACT_BYTES
        made: dict[tuple[int, int], np.ndarray] = {}
        (folder / str(level)).mkdir(parents=True, exist_ok=True)
        for tx, ty in dirty:
            if level == levels - 1:
                region = tile_region(tx, ty, sizes[level], size, overlap)
                pixels = compose_cells(region, grid, cell, cells.read_rows, background)
            else:
                pixels = shrunk_tile(tx, ty, sizes[level], sizes[level + 1], size,
                                     overlap, read_below(level + 1))
            path = folder / str(level) / f"{tx}_{ty}{suffix}"
            generation.replace(path, lambda tmp, pixels=pixels: write_tile(tmp, pixels, tiles))
            if keep:
                made[tx, ty] = pixels
            written += 1
        exact = made
        rects = halve_rects(rects)
    return written


def grow(tiles_dir: Path, tiles: dict, height: int) -> tuple[dict, int]:
    """Make the pyramid under ``tiles_dir`` (``map.dzi`` + ``map_files``) ready for a map
    ``height`` pixels high (taller, same width): the ``.dzi`` says the new size, and where
    the level count grows the levels are renamed up to where ``dzsave`` puts them.
    Returns the new tile info and the number of new levels on top (whose tiles the
    caller writes whole, with ``rewrite_tiles(every_tile_below=...)``)."""
    levels = levels_for(int(tiles["width"]), height)
    added = levels - int(tiles["levels"])
    folder = tiles_dir / "map_files"
    for level in range(int(tiles["levels"]) - 1, -1, -1) if added else ():
        (folder / str(level)).rename(folder / str(level + added))
    dzi = tiles_dir / "map.dzi"
    text = re.sub(r'Height="\d+"', f'Height="{height}"', dzi.read_text(encoding="utf-8"))
    generation.replace(dzi, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return {**tiles, "height": height, "levels": levels}, added
