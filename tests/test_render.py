"""DZI geometry, after libvips's own dzsave tests: levels, 1x1 top, edge tiles, overlap.

And the matrix stream: the tiles are byte for byte those cut from a matrix
file, the matrix is read once, and nothing but tiles is written.
"""

import math
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import pyvips

from mosaic.pipeline.render import (
    cut_tiles,
    matrix_rows,
    render_overview,
    stream_matrix,
)
from mosaic.strips import ROWS_AHEAD, iter_cell_strips, png_stream, write_tiff

BACKGROUND = (7, 8, 9)


def render(tmp_path: Path, n_items: int, n_rows: int, n_cols: int, cell: int = 16,
           **tile_options) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 255, size=(n_items, cell, cell, 3), dtype=np.uint8)
    positions = np.array([divmod(i, n_cols) for i in range(n_items)])
    matrix = stream_matrix(cells, positions, n_rows, n_cols, background=BACKGROUND)
    info = cut_tiles(matrix, tmp_path / "tiles", **tile_options)
    return info, cells


def expected_matrix(cells, positions, n_rows: int, n_cols: int) -> np.ndarray:
    cell = cells.shape[1]
    matrix = np.empty((n_rows * cell, n_cols * cell, 3), dtype=np.uint8)
    matrix[:] = BACKGROUND
    for image, (row, col) in zip(cells, positions):
        matrix[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = image
    return matrix


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


@pytest.mark.parametrize("overlap,tile_format", [(0, "png"), (2, "png"), (1, "jpeg")])
def test_overview_is_the_map_shrunk_from_the_pyramid(tmp_path, overlap, tile_format):
    info, cells = render(tmp_path, n_items=30, n_rows=5, n_cols=6, cell=16, tile_size=32,
                         overlap=overlap, tile_format=tile_format)
    full = render_overview(tmp_path / "tiles", info, size=1000)
    assert (full.width, full.height) == (96, 80)  # never upscaled: the deepest level
    if tile_format == "png":  # lossless tiles: the overview is exactly the matrix
        positions = np.array([divmod(i, 6) for i in range(30)])
        assert np.array_equal(full.numpy(), expected_matrix(cells, positions, 5, 6))
    small = render_overview(tmp_path / "tiles", info, size=30)
    assert max(small.width, small.height) <= 30 and (small.width, small.height) == (24, 20)


# -- the matrix stream ------------------------------------------------------------


class CellReader:
    """Cells behind ``read_rows``, as the bundle's cell file gives them; counts the reads."""

    def __init__(self, cells: np.ndarray, fail_at: int | None = None):
        self.cells, self.shape, self.fail_at = cells, cells.shape, fail_at
        self.calls: list[list[int]] = []

    def read_rows(self, ids) -> np.ndarray:
        if len(self.calls) == self.fail_at:
            raise OSError("cells.u8: read failed")
        self.calls.append([int(i) for i in ids])
        return self.cells[np.asarray(ids, dtype=np.int64)]


def random_grid(n_rows: int, n_cols: int, n_items: int, cell: int, seed: int = 0):
    """Random cells at random cells of the grid, so some cells are empty."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, size=(n_items, cell, cell, 3), dtype=np.uint8)
    spots = rng.permutation(n_rows * n_cols)[:n_items]
    return cells, np.stack([spots // n_cols, spots % n_cols], axis=1)


def cut_from_matrix_file(path: Path, cells, positions, n_rows, n_cols, out_dir, **options):
    """The render stage as it was: a strip TIFF matrix file, read once by dzsave."""
    cell = cells.shape[1]
    write_tiff(path, matrix_rows(cells, positions, n_rows, n_cols, BACKGROUND),
                     n_cols * cell, n_rows * cell)
    info = cut_tiles(pyvips.Image.new_from_file(str(path), access="sequential"), out_dir,
                     **options)
    path.unlink()
    return info


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("tile_format,overlap,tile_size", [
    ("jpeg", 0, 32), ("png", 0, 32), ("webp", 0, 64), ("jpeg", 1, 32), ("png", 3, 64)])
def test_streamed_tiles_are_byte_identical_to_tiles_from_a_matrix_file(
        tmp_path, tile_format, overlap, tile_size):
    n_rows, n_cols = 11, 17  # not square, not a multiple of the tile size
    cells, positions = random_grid(n_rows, n_cols, n_items=150, cell=12)
    options = {"tile_size": tile_size, "overlap": overlap, "tile_format": tile_format}
    old = cut_from_matrix_file(tmp_path / "m.tif", cells, positions, n_rows, n_cols,
                               tmp_path / "old" / "tiles", **options)
    matrix = stream_matrix(CellReader(cells), positions, n_rows, n_cols, BACKGROUND)
    new = cut_tiles(matrix, tmp_path / "new" / "tiles", **options)
    assert new == old
    old_files, new_files = files_of(tmp_path / "old"), files_of(tmp_path / "new")
    assert len(new_files) > 20 and new_files.keys() == old_files.keys()
    assert [name for name in old_files if new_files[name] != old_files[name]] == []


def test_stream_is_the_matrix_and_reads_each_row_of_cells_once():
    n_rows, n_cols = 6, 5
    cells, positions = random_grid(n_rows, n_cols, n_items=20, cell=8, seed=1)
    reader = CellReader(cells)
    matrix = stream_matrix(reader, positions, n_rows, n_cols, BACKGROUND)
    assert (matrix.width, matrix.height, matrix.bands) == (40, 48, 3)
    assert np.array_equal(matrix.numpy(), expected_matrix(cells, positions, n_rows, n_cols))
    assert len(reader.calls) == n_rows  # one sequential pass: one read per row of cells
    assert sorted(sum(reader.calls, [])) == list(range(20))


def test_rows_are_fetched_ahead_in_order_on_one_thread_and_stop_when_closed():
    n_rows, n_cols = 12, 4
    grid = np.arange(n_rows * n_cols).reshape(n_rows, n_cols)
    grid[3] = -1  # an empty row fetches nothing
    calls, threads = [], set()

    def fetch(ids):
        calls.append(int(ids[0]) // n_cols)
        threads.add(threading.get_ident())
        return np.repeat(ids.astype(np.uint8)[:, None, None, None], 2, 1).repeat(2, 2) \
            .repeat(3, 3)

    strips = iter_cell_strips(grid, fetch, 2)
    for row in range(5):
        strip = next(strips)
        # the strip is its row's cells (the empty row background), whichever thread
        # fetched them
        expected = [255] * n_cols if row == 3 else grid[row].tolist()
        assert strip[0, ::2, 0].tolist() == expected
        assert max(calls) <= row + ROWS_AHEAD  # never more than ROWS_AHEAD ahead
    strips.close()
    fetched = list(calls)
    assert fetched == sorted(fetched) and 3 not in fetched
    assert threads and threading.get_ident() not in threads and len(threads) == 1
    assert max(fetched) <= 4 + ROWS_AHEAD  # closing stopped it: no row past those asked
    # negative control: read to the end, every non-empty row is fetched exactly once
    calls.clear()
    assert len(list(iter_cell_strips(grid, fetch, 2))) == n_rows
    assert calls == [row for row in range(n_rows) if row != 3]


def test_png_stream_checks_the_blocks():
    with pytest.raises(ValueError, match="rows, not 3"):
        list(png_stream(iter([np.zeros((2, 4, 3), np.uint8)]), 4, 3))
    with pytest.raises(ValueError, match=r"not \(h, 5, 3\)"):
        list(png_stream(iter([np.zeros((2, 4, 3), np.uint8)]), 5, 2))


def test_a_failed_cell_read_is_raised_and_leaves_no_pyramid(tmp_path):
    cells, positions = random_grid(8, 8, n_items=40, cell=16)
    matrix = stream_matrix(CellReader(cells, fail_at=3), positions, 8, 8, BACKGROUND)
    with pytest.raises(OSError, match="cells.u8: read failed"):
        cut_tiles(matrix, tmp_path / "tiles", tile_size=32)
    assert not (tmp_path / "tiles").exists()


class SizeWatcher(threading.Thread):
    """Polls the biggest size of every file that appears under ``root``, outside ``skip``,
    and of libvips temp files (``vips-*``) in the temp folder, until stopped."""

    def __init__(self, root: Path, skip: set[str]):
        super().__init__(daemon=True)
        self.root, self.skip = root, skip
        self.temp = Path(tempfile.gettempdir())
        self.before = {p for p in root.rglob("*")} | set(self.temp.glob("vips-*"))
        self.seen: dict[str, int] = {}
        self.done = threading.Event()

    def poll(self) -> None:
        found = [p for p in self.temp.glob("vips-*")]
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if d not in self.skip]
            found += [Path(folder) / f for f in files]
        for path in found:
            if path in self.before:
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            self.seen[str(path)] = max(size, self.seen.get(str(path), 0))

    def run(self) -> None:
        while not self.done.wait(0.001):
            self.poll()
        self.poll()


@pytest.mark.parametrize("way", ["stream", "matrix file"])
def test_render_writes_nothing_but_tiles(tmp_path, way):
    """The streamed stage leaves no scratch file; the watcher does see the old one."""
    bundle = tmp_path / "bundle"
    (bundle / "cache").mkdir(parents=True)
    n_rows = n_cols = 48
    cells, positions = random_grid(n_rows, n_cols, n_items=2000, cell=16)  # 1.8 MB matrix
    watcher = SizeWatcher(bundle, skip={"tiles", "tiles.tmp"})
    watcher.start()
    try:
        if way == "stream":
            matrix = stream_matrix(CellReader(cells), positions, n_rows, n_cols, BACKGROUND)
            info = cut_tiles(matrix, bundle / "tiles", tile_size=64)
        else:
            info = cut_from_matrix_file(bundle / "cache" / "matrix.tif", cells, positions,
                                        n_rows, n_cols, bundle / "tiles", tile_size=64)
        render_overview(bundle / "tiles", info)
    finally:
        watcher.done.set()
        watcher.join()
    limit = 4 * 64 * 64 * 3  # a few uncompressed tiles
    big = {path: size for path, size in watcher.seen.items() if size > limit}
    if way == "stream":
        assert big == {}
        assert len(files_of(bundle / "tiles")) > 50
    else:
        assert list(big) == [str(bundle / "cache" / "matrix.tif")]
