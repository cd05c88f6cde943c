"""DZI geometry, after libvips's own dzsave tests: levels, 1x1 top, edge tiles, overlap."""

import math
from pathlib import Path

import numpy as np
import pytest
import pyvips

from mosaic.pipeline.render import cut_tiles, open_matrix, render_overview, write_matrix


def render(tmp_path: Path, n_items: int, n_rows: int, n_cols: int, cell: int = 16,
           **tile_options) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 255, size=(n_items, cell, cell, 3), dtype=np.uint8)
    positions = np.array([divmod(i, n_cols) for i in range(n_items)])
    write_matrix(tmp_path / "m.tif", cells, positions, n_rows, n_cols, background=(7, 8, 9))
    info = cut_tiles(open_matrix(tmp_path / "m.tif"), tmp_path / "tiles", **tile_options)
    return info, cells


def tile_size_of(path: Path) -> tuple[int, int]:
    image = pyvips.Image.new_from_file(str(path))
    return image.width, image.height


@pytest.mark.parametrize("tile_format,suffix", [("jpeg", "jpg"), ("png", "png"),
                                                ("webp", "webp")])
def test_dzi_geometry(tmp_path, tile_format, suffix):
    info, _ = render(tmp_path, n_items=50, n_rows=7, n_cols=8, cell=16, tile_size=32,
                     tile_format=tile_format)
    width, height = 8 * 16, 7 * 16
    assert (info["width"], info["height"]) == (width, height)
    files = tmp_path / "tiles" / "map_files"
    levels = sorted(int(p.name) for p in files.iterdir() if p.is_dir())
    assert len(levels) == info["levels"] == math.ceil(math.log2(max(width, height))) + 1
    assert tile_size_of(files / "0" / f"0_0.{suffix}") == (1, 1)  # level 0 is 1x1
    top = files / str(levels[-1])
    n_across, n_down = math.ceil(width / 32), math.ceil(height / 32)
    assert tile_size_of(top / f"0_0.{suffix}") == (32, 32)
    # Edge tiles are cut to the image; the tile past the edge does not exist.
    assert tile_size_of(top / f"{n_across - 1}_{n_down - 1}.{suffix}") == (
        width - 32 * (n_across - 1), height - 32 * (n_down - 1))
    assert not (top / f"{n_across}_0.{suffix}").exists()
    assert not (top / f"0_{n_down}.{suffix}").exists()
    assert 'TileSize="32"' in (tmp_path / "tiles" / "map.dzi").read_text()


def test_overlap_strips(tmp_path):
    info, _ = render(tmp_path, n_items=16, n_rows=4, n_cols=4, cell=16, tile_size=32,
                     overlap=2, tile_format="png")
    top = tmp_path / "tiles" / "map_files" / str(info["levels"] - 1)
    assert tile_size_of(top / "0_0.png") == (34, 34)  # one inner edge each way
    assert tile_size_of(top / "1_1.png") == (34, 34)  # 64 px wide image: 32 + 2 on the left


def test_deepest_level_has_every_cell_at_full_resolution(tmp_path):
    info, cells = render(tmp_path, n_items=10, n_rows=3, n_cols=4, cell=16, tile_size=256,
                         tile_format="png")
    top = pyvips.Image.new_from_file(
        str(tmp_path / "tiles" / "map_files" / str(info["levels"] - 1) / "0_0.png")).numpy()
    for item in range(10):
        row, col = divmod(item, 4)
        assert np.array_equal(top[row * 16:(row + 1) * 16, col * 16:(col + 1) * 16], cells[item])
    assert (top[2 * 16:, 2 * 16:] == (7, 8, 9)).all()  # empty cells are the background


def test_matrix_file_is_a_valid_tiff_holding_every_cell(tmp_path):
    _, cells = render(tmp_path, n_items=7, n_rows=2, n_cols=4, cell=8, tile_format="png")
    matrix = pyvips.Image.new_from_file(str(tmp_path / "m.tif")).numpy()
    assert matrix.shape == (16, 32, 3)
    for item in range(7):
        row, col = divmod(item, 4)
        assert np.array_equal(matrix[row * 8:(row + 1) * 8, col * 8:(col + 1) * 8], cells[item])


@pytest.mark.parametrize("overlap,tile_format", [(0, "png"), (2, "png"), (1, "jpeg")])
def test_overview_is_the_map_shrunk_from_the_pyramid(tmp_path, overlap, tile_format):
    info, cells = render(tmp_path, n_items=30, n_rows=5, n_cols=6, cell=16, tile_size=32,
                         overlap=overlap, tile_format=tile_format)
    full = render_overview(tmp_path / "tiles", info, size=1000)
    assert (full.width, full.height) == (96, 80)  # never upscaled: the deepest level
    if tile_format == "png":  # lossless tiles: the overview is exactly the matrix
        matrix = pyvips.Image.new_from_file(str(tmp_path / "m.tif")).numpy()
        assert np.array_equal(full.numpy(), matrix)
    small = render_overview(tmp_path / "tiles", info, size=30)
    assert max(small.width, small.height) <= 30 and (small.width, small.height) == (24, 20)


def test_resample_is_an_area_average_down_and_keeps_flat_colours():
    from mosaic.pipeline.thumbnail import resample, square_array

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(40, 60, 3), dtype=np.uint8)
    half = resample(image, 20, 30)
    assert np.abs(half - image.reshape(20, 2, 30, 2, 3).mean(axis=(1, 3))).max() <= 0.5
    flat = np.full((37, 53, 3), (10, 200, 90), dtype=np.uint8)
    for size in [(5, 7), (37, 53), (80, 120)]:
        assert (resample(flat, *size) == (10, 200, 90)).all()
    boxed = square_array(flat, 32, "fit", (255, 255, 255))
    assert boxed.shape == (32, 32, 3)
    assert (boxed[0, 0] == 255).all() and (boxed[16, 16] == (10, 200, 90)).all()
    assert (square_array(flat, 32, "fill", (255, 255, 255)) == (10, 200, 90)).all()
