"""``run.py remove``: a takedown without a rebuild (issue 18, parts 2 and 3).

A bundle is built once by the real CLI (a subprocess, the default ``--out
output`` relative to its working folder, default flags plus a CSV and two more
layouts), then each test removes items from a copy of it and checks what a
takedown promises: the items leave every grid, tile, overview, neighbour list,
table and export; no byte of their cells is left anywhere in the bundle; the
other items keep their ids, cells and tiles; the incremental tiles equal a full
re-cut within JPEG noise; a ``kill -9`` at any point leaves the old generation
served, and the command run again makes the same bundle as an uninterrupted run.

Kill points are injected as in tests/test_resume.py: this file doubles as a
wrapper script (``python tests/test_remove.py KILL_POINT remove ...``).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import kill_points
import numpy as np
import pytest
import pyvips
from annoy import AnnoyIndex
from bundle_compare import assert_same_bundle
from PIL import Image
from sample_collection import make_collection

from mosaic import SCHEMA_VERSION, knn
from mosaic.bundle import open_cells, read_manifest, read_regions
from mosaic.pipeline import render, retile
from mosaic.pipeline.index import build_annoy, drop_items

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
REMOVED = [3, 17, 30]
KILL_POINTS = ["cells", "tiles", "vectors", "metadata", "manifest", "exchange"]


def run_cli(cwd: Path, *args: str, wrapper: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(TESTS / "test_remove.py"), wrapper] if wrapper else \
        [sys.executable, str(ROOT / "run.py")]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A working folder holding ``images/``, ``images.csv`` and ``output/c`` (36 items)."""
    work = tmp_path_factory.mktemp("remove")
    make_collection(work / "images", per_cluster=12)
    done = run_cli(work, "pipeline", "--images", "images", "--metadata", "images.csv",
                   "--id", "c", "--title", "{name} ({year})",
                   "--layout", "category:category", "--layout", "date:year")
    assert done.returncode == 0, done.stderr
    return work


@pytest.fixture
def work(built, tmp_path) -> Path:
    """A fresh copy of the built working folder (relative paths as a user has them)."""
    target = tmp_path / "work"
    shutil.copytree(built, target)
    return target


def positions_gone(bundle: Path) -> np.ndarray:
    return np.load(bundle / "positions.npy")[:, 0] < 0


def _all_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _tile(path: Path) -> np.ndarray:
    return pyvips.Image.new_from_file(str(path)).numpy()[..., :3].astype(np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = float(((a - b) ** 2).mean())
    return 99.0 if error == 0 else 10 * np.log10(255.0 ** 2 / error)


# -- geometry --------------------------------------------------------------------------


def test_shrink_is_dzsave_exactly(tmp_path):
    """Each pyramid level from the one below by ``retile.shrink`` equals dzsave's (PNG
    tiles, odd sizes, overlap); a shrink that rounds down instead (the control) does not."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (203, 301, 3), dtype=np.uint8)
    image = pyvips.Image.new_from_array(pixels).copy(interpretation="srgb")
    for overlap in (0, 3):
        folder = tmp_path / f"o{overlap}"
        folder.mkdir()
        image.dzsave(str(folder / "map"), tile_size=64, overlap=overlap, suffix=".png",
                     layout="dz", depth="onepixel")
        levels = (301 - 1).bit_length() + 1
        sizes = retile.level_sizes(301, 203, levels)

        def reader(level, folder=folder):
            return lambda x, y: _tile(folder / "map_files" / str(level) /
                                      f"{x}_{y}.png").astype(np.uint8)

        rounded_down = 0
        for level in range(levels - 2, -1, -1):
            across, down = -(-sizes[level][0] // 64), -(-sizes[level][1] // 64)
            for ty in range(down):
                for tx in range(across):
                    ours = retile.shrunk_tile(tx, ty, sizes[level], sizes[level + 1], 64,
                                              overlap, reader(level + 1))
                    theirs = reader(level)(tx, ty)
                    assert np.array_equal(ours, theirs), (overlap, level, tx, ty)
            region = (0, 0, *sizes[level + 1])
            below = retile.assemble(region, sizes[level + 1], 64, overlap, reader(level + 1))
            if below.shape[0] % 2 == 0 and below.shape[1] % 2 == 0:
                wide = below.astype(np.uint16)
                floor = ((wide[0::2, 0::2] + wide[1::2, 0::2] + wide[0::2, 1::2]
                          + wide[1::2, 1::2]) >> 2).astype(np.uint8)
                whole = retile.assemble((0, 0, *sizes[level]), sizes[level], 64, overlap,
                                        reader(level))
                rounded_down += not np.array_equal(floor, whole)
        assert rounded_down > 0


def test_a_rewritten_jpeg_tile_decodes_to_libvips_own_pixels(tmp_path):
    """retile reads and writes JPEG tiles with Pillow (faster); decoded, they are the
    pixels libvips's own jpegsave and decode give, at qualities on both sides of libvips's
    switch to full-resolution chroma (Q 90); the same save with chroma always halved (the
    control) is not, at Q 92."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    pixels = np.asarray(pyvips.Image.new_from_array(small).resize(8, kernel="linear")
                        .numpy(), dtype=np.uint8)[:256, :300]
    for quality in (75, 85, 92):
        tiles = {"format": "jpeg", "quality": quality}
        ours, theirs = tmp_path / f"ours{quality}.jpg", tmp_path / f"theirs{quality}.jpg"
        retile.write_tile(ours, pixels, tiles)
        pyvips.Image.new_from_array(pixels).copy(interpretation="srgb").write_to_file(
            f"{theirs}{retile.tile_options(tiles)[1]}")
        assert np.array_equal(_tile(ours), _tile(theirs)), quality
        assert np.array_equal(retile.read_tile(theirs), _tile(theirs)), quality
    control = tmp_path / "control.jpg"
    Image.fromarray(pixels).save(control, quality=92, subsampling=2)
    assert not np.array_equal(_tile(control), _tile(tmp_path / "theirs92.jpg"))


def test_tiles_over_finds_every_tile_a_rectangle_touches():
    size, tile = (1000, 700), 256
    for overlap in (0, 1):
        found = retile.tiles_over([(250, 250, 260, 260)], size, tile, overlap)
        assert found == {(0, 0), (1, 0), (0, 1), (1, 1)}
        assert retile.tiles_over([(300, 300, 310, 310)], size, tile, overlap) == {(1, 1)}
    # overlap: a rectangle just inside tile 1 is also in tile 0's overlap strip
    assert retile.tiles_over([(256, 0, 257, 1)], size, tile, 1) == {(0, 0), (1, 0)}
    assert retile.tiles_over([(256, 0, 257, 1)], size, tile, 0) == {(1, 0)}


def test_drop_neighbors_keeps_order_and_pads():
    ids = np.array([[5, 2, 9, -1], [1, 2, 3, 4]], dtype=np.int32)
    distances = np.array([[0.1, 0.2, 0.3, np.inf], [1, 2, 3, 4]], dtype=np.float32)
    gone = np.zeros(10, dtype=bool)
    gone[[2, 4]] = True
    kept, dist = knn.drop_neighbors(ids, distances, gone)
    assert kept.tolist() == [[5, 9, -1, -1], [1, 3, -1, -1]]
    assert dist[0, :2].tolist() == pytest.approx([0.1, 0.3]) and np.isinf(dist[:, 2:]).all()


# -- the command -----------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["euclidean", "angular"])
def test_drop_items_takes_them_out_of_an_annoy_index(tmp_path, metric):
    vectors = np.random.default_rng(3).random((3_000, 24)).astype(np.float32)
    built = build_annoy(vectors, metric, n_trees=8)
    built.save(str(tmp_path / "a.ann"))
    built.unload()
    gone = np.array([0, 5, 17, 2_000, 2_999])
    assert drop_items(tmp_path / "a.ann", tmp_path / "b.ann", gone, vectors[gone], metric)
    before, after = AnnoyIndex(24, metric), AnnoyIndex(24, metric)
    before.load(str(tmp_path / "a.ann"))
    after.load(str(tmp_path / "b.ann"))
    for item in gone.tolist():  # never found, even searching from their own vectors
        assert not set(after.get_nns_by_vector(vectors[item].tolist(), 50, search_k=-1)) \
            & set(gone.tolist())
        assert not any(after.get_item_vector(item))
        assert vectors[item].tobytes() not in (tmp_path / "b.ann").read_bytes()
    for item in range(1, 3_000, 37):  # the others answer as before, less the dropped
        if item in gone:
            continue
        old = [j for j in before.get_nns_by_item(item, 20, search_k=400) if j not in gone]
        assert after.get_nns_by_item(item, 20, search_k=400)[:len(old)] == old
    # dropping them again is a no-op; vectors that are not the index's are refused
    assert drop_items(tmp_path / "b.ann", tmp_path / "c.ann", gone, vectors[gone] * 0, metric)
    assert (tmp_path / "c.ann").read_bytes() == (tmp_path / "b.ann").read_bytes()
    assert not drop_items(tmp_path / "a.ann", tmp_path / "d.ann", gone, vectors[gone] + 1,
                          metric)
    assert not (tmp_path / "d.ann").exists()


def test_remove_takes_items_out_of_everything(work):
    bundle = work / "output" / "c"
    before = read_manifest(bundle)
    with open_cells(bundle, before) as cells:
        removed_cells = {i: cells.read_encoded(i) for i in REMOVED}
        kept_cells = {i: cells.read_encoded(i) for i in range(36) if i not in REMOVED}
    old_top = np.load(bundle / before["embeddings"][0]["top"]["ids"])
    old_vectors = np.load(bundle / before["embeddings"][0]["vectors"])
    old_grids = {e["name"]: np.fromfile(bundle / e["grid_file"], dtype="<i4")
                 for e in before["layouts"]}
    old_tiles = _all_bytes(bundle / "tiles")

    done = run_cli(work, "remove", "--id", "c", "--ids", ",".join(map(str, REMOVED)))
    assert done.returncode == 0, done.stderr
    assert f"Removed {len(REMOVED)} items" in done.stdout
    manifest = read_manifest(bundle)
    assert manifest["generation"] == 2 and manifest["counts"]["removed"] == len(REMOVED)
    assert not (work / "output" / ".c.next").exists()
    # the new generation stores each fact once, as the pipeline writes it (schema 5):
    # the cell size in grid (and the command line in parameters), not the copies
    # read_manifest hands the not-yet-typed code
    stored = json.loads((bundle / "manifest.json").read_text())
    assert stored["schema_version"] == SCHEMA_VERSION
    assert (bundle / "manifest.json").read_text().count('"cell_size"') == 2
    assert stored["grid"]["cell_size"] == before["grid"]["cell_size"]
    assert set(stored["layouts"][0]) == {"name", "kind", "slug", "labels", "missing"}

    # every layout: the removed items on no cell, every other item where it was
    for entry in manifest["layouts"]:
        positions = np.load(bundle / entry["positions"])
        grid = np.fromfile(bundle / entry["grid_file"], dtype="<i4")
        assert (positions[REMOVED] == -1).all()
        assert not np.isin(grid, REMOVED).any()
        old = old_grids[entry["name"]]
        assert np.array_equal(grid, np.where(np.isin(old, REMOVED), -1, old))
        placed = grid[grid >= 0]
        assert sorted(placed.tolist()) == [i for i in range(36) if i not in REMOVED]

    # the cells: theirs blank, the others byte for byte
    with open_cells(bundle, manifest) as cells:
        for item, data in kept_cells.items():
            assert cells.read_encoded(item) == data
        blank = cells.read_rows(REMOVED).astype(int)
        assert np.abs(blank - 255).max() <= 2

    # no byte of a removed cell anywhere in the bundle (a 1-kB piece of each)
    everything = b"".join(_all_bytes(bundle).values())
    for item, data in removed_cells.items():
        middle = data[len(data) // 2:len(data) // 2 + 1024]
        assert middle not in everything, item

    # neighbours: stored lists and the rebuilt annoy index never name them
    embedding = manifest["embeddings"][0]
    top = np.load(bundle / embedding["top"]["ids"])
    assert not np.isin(top, REMOVED).any() and (top[REMOVED] == -1).all()
    for item in range(36):
        if item in REMOVED:
            continue
        expected = [j for j in old_top[item].tolist() if j not in REMOVED]
        assert top[item, :len(expected)].tolist() == expected
    from annoy import AnnoyIndex
    index = AnnoyIndex(embedding["dim"], embedding["metric"])
    index.load(str(bundle / embedding["index"]))
    assert index.get_n_items() <= 36
    for item in range(36):
        if item not in REMOVED:
            assert not set(index.get_nns_by_item(item, 36)) & set(REMOVED)
    vectors = np.load(bundle / embedding["vectors"])
    assert not vectors[REMOVED].any() and vectors[[0, 1, 2]].any()
    # the index holds no copy of their vectors (annoy stores float32 rows)
    assert not any(index.get_item_vector(item)[:8] != [0.0] * 8 for item in REMOVED)
    annoy_bytes = (bundle / embedding["index"]).read_bytes()
    for item in REMOVED:
        row = np.asarray(old_vectors[item], dtype=np.float32) * np.float32(
            embedding.get("scale") or 1.0)
        assert row.tobytes()[:64] not in annoy_bytes

    # tiles: only those over the removed cells changed, and they equal a full re-cut
    new_tiles = _all_bytes(bundle / "tiles")
    assert new_tiles.keys() == old_tiles.keys()
    changed = [k for k in new_tiles if new_tiles[k] != old_tiles[k]]
    assert 0 < len(changed) < len(new_tiles)
    similarity = manifest["layouts"][0]
    with open_cells(bundle, manifest) as cells:
        positions = np.load(bundle / similarity["positions"])
        reference = work / "reference"
        render.render_grid(cells, positions, similarity["grid"]["n_rows"],
                           similarity["grid"]["n_cols"], reference)
    worst = min(_psnr(_tile(bundle / "tiles" / k), _tile(reference / k))
                for k in changed if k.endswith(".jpg"))
    assert worst > 35, worst
    # the removed cells are background in the deepest level's tiles; before, they were not
    cell = similarity["grid"]["cell_size"]
    tiles = similarity["tiles"]
    top_level = tiles["levels"] - 1
    grid = np.fromfile(bundle / similarity["grid_file"], dtype="<i4").reshape(
        similarity["grid"]["n_rows"], similarity["grid"]["n_cols"])
    for row, col in zip(*np.nonzero(old_grids["similarity"].reshape(grid.shape) == REMOVED[0])):
        x, y = col * cell, row * cell
        tile_name = f"map_files/{top_level}/{x // 256}_{y // 256}.jpg"
        now = _tile(bundle / "tiles" / tile_name)[y % 256:y % 256 + cell, x % 256:x % 256 + cell]
        was = pyvips.Image.new_from_buffer(old_tiles[tile_name], "").numpy()[
            y % 256:y % 256 + cell, x % 256:x % 256 + cell].astype(float)
        assert np.abs(now - 255).mean() < 3 and np.abs(was - 255).mean() > 20

    # metadata: rows, search and facet counts
    conn = sqlite3.connect(bundle / manifest["files"]["metadata"])
    try:
        ids = [i for (i,) in conn.execute("SELECT id FROM items ORDER BY id")]
        assert ids == [i for i in range(36) if i not in REMOVED]
        assert not conn.execute(f"SELECT 1 FROM items_fts WHERE rowid IN "
                                f"({','.join(map(str, REMOVED))})").fetchall()
        counts = dict(conn.execute("SELECT value, count FROM facet_values "
                                   "WHERE name = 'category'"))
        column = [c["name"] for c in manifest["columns"]].index("category")
        truth = dict(conn.execute(f"SELECT c{column}, COUNT(*) FROM metadata "
                                  f"GROUP BY c{column}"))
        assert counts == truth and sum(counts.values()) == 36 - len(REMOVED)
    finally:
        conn.close()
    labels = {e["name"]: e["labels"] for e in manifest["layouts"]}
    assert sum(label["count"] for label in labels["category:category"]) == 36 - len(REMOVED)

    # export: one row per item left
    export = run_cli(work, "export", "--id", "c")
    assert export.returncode == 0, export.stderr
    exported = [int(row["id"]) for row in csv.DictReader(io.StringIO(export.stdout))]
    assert exported == [i for i in range(36) if i not in REMOVED]


def test_the_server_no_longer_shows_them(work):
    from server import create_app

    done = run_cli(work, "remove", "--id", "c", "--ids", ",".join(map(str, REMOVED)))
    assert done.returncode == 0, done.stderr
    app = create_app({"MOSAIC_OUT": str(work / "output"), "TESTING": True})
    client = app.test_client()
    gone = REMOVED[0]
    assert client.get(f"/collections/c/thumbs/{gone}.jpg").status_code == 404
    assert client.get(f"/collections/c/thumbs/{gone + 1}.jpg").status_code == 200
    response = client.get(f"/api/collections/c/items/{gone}")
    assert response.status_code == 404 and "removed" in response.get_json()["error"]
    for item in (0, 1, 2, 4):
        found = client.get(f"/api/collections/c/items/{item}/neighbors?k=30").get_json()
        assert not {n["id"] for n in found["neighbors"]} & set(REMOVED)
    drawn = client.get("/api/collections/c/random?n=50&seed=1").get_json()
    assert drawn["total"] == 36 - len(REMOVED)
    assert not {i["id"] for i in drawn["items"]} & set(REMOVED)
    assert client.get(f"/iiif/c/items/{gone}/info.json").status_code == 404


def test_where_removes_a_facet_value(work):
    done = run_cli(work, "remove", "--id", "c", "--where", "category=red")
    assert done.returncode == 0, done.stderr
    bundle = work / "output" / "c"
    manifest = read_manifest(bundle)
    conn = sqlite3.connect(bundle / "metadata.sqlite")
    column = [c["name"] for c in manifest["columns"]].index("category")
    left = {v for (v,) in conn.execute(f"SELECT DISTINCT c{column} FROM metadata")}
    conn.close()
    assert "red" not in left and len(left) == 2
    assert manifest["counts"]["removed"] == 12
    labels = manifest["layouts"][1]["labels"]
    assert {label["text"]: label["count"] for label in labels}["red"] == 0
    # the stored duplicate groups name none of them
    stored = json.loads((bundle / manifest["duplicates"]["path"]).read_text())
    grouped = [i for group in stored["groups"] for i in group["ids"]]
    assert len(grouped) == manifest["duplicates"]["items"]
    assert not {i for i in grouped if positions_gone(bundle)[i]}
    # the labelled regions: same hierarchy, without them, labelled from the rest only
    regions, region_ids = read_regions(bundle, manifest)
    gone = np.load(bundle / "positions.npy")[:, 0] < 0
    assert gone.sum() == 12 and (np.asarray(region_ids)[gone] == -1).all()
    assert (np.asarray(region_ids)[~gone] >= 0).all()
    order = np.fromfile(bundle / manifest["regions"]["order"], dtype="<i4")
    assert sorted(order.tolist()) == np.flatnonzero(~gone).tolist()
    for level in range(region_ids.shape[1]):
        shown = [r for r in regions if r["levels"][0] <= level + 1 <= r["levels"][1]]
        assert sum(r["size"] for r in shown) == 24
    for region in regions:
        members = order[region["start"]:region["end"]]
        assert len(members) == region["size"]
        assert not gone[members].any()
        assert region["size"] == 0 or not gone[[region["representative"],
                                               region["anchor"]]].any()
        assert region["label"] != "red"
        assert "red" not in {term["text"] for term in region["terms"]}


@pytest.mark.parametrize("args, message", [
    (["--ids", "3,99"], "no item 99"),
    (["--ids", "3,x"], "'x' is not an item id"),
    (["--where", "colour=red"], "no metadata column 'colour'"),
    (["--where", "category=purple"], "no item"),
    (["--where", "category"], "COLUMN=VALUE"),
    ([], "one of the arguments --ids --where is required"),
])
def test_bad_requests_change_nothing(work, args, message):
    before = _all_bytes(work / "output")
    done = run_cli(work, "remove", "--id", "c", *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert _all_bytes(work / "output") == before


def test_missing_bundle(work):
    done = run_cli(work, "remove", "--id", "nothing", "--ids", "1")
    assert done.returncode == 2 and done.stderr.startswith("Error: no finished bundle")


def test_a_locked_bundle_is_refused(work):
    with open(work / "output" / "c" / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        done = run_cli(work, "remove", "--id", "c", "--ids", "1")
    assert done.returncode == 1 and "Error: another" in done.stderr
    assert read_manifest(work / "output" / "c").get("generation") is None


def test_removing_again_is_a_no_op(work):
    assert run_cli(work, "remove", "--id", "c", "--ids", "3").returncode == 0
    before = _all_bytes(work / "output")
    again = run_cli(work, "remove", "--id", "c", "--ids", "3")
    assert again.returncode == 0 and "already removed" in again.stderr
    assert _all_bytes(work / "output") == before


def test_publish_after_remove_drops_their_files(work):
    site = work / "site"
    assert run_cli(work, "publish", "--id", "c", "--to", "site").returncode == 0
    thumbs = sorted(site.rglob(f"{REMOVED[0]}.jpg"))
    assert thumbs, "the published site has a thumbnail per item"
    assert run_cli(work, "remove", "--id", "c", "--ids", str(REMOVED[0])).returncode == 0
    done = run_cli(work, "publish", "--id", "c", "--to", "site")
    assert done.returncode == 0, done.stderr
    assert not any(p.exists() for p in thumbs)


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_then_run_again(work, tmp_path, point):
    """SIGKILL inside each step: the old generation stays served until the exchange;
    the same command again finishes to the bundle an uninterrupted run makes."""
    clean = tmp_path / "clean"
    shutil.copytree(work, clean)
    args = ("remove", "--id", "c", "--ids", ",".join(map(str, REMOVED)))
    assert run_cli(clean, *args).returncode == 0
    old_manifest = (work / "output" / "c" / "manifest.json").read_bytes()
    killed = run_cli(work, *args, wrapper=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    served = read_manifest(work / "output" / "c")
    if point == "exchange":
        assert served["generation"] == 2
    else:
        assert (work / "output" / "c" / "manifest.json").read_bytes() == old_manifest
    again = run_cli(work, *args)
    assert again.returncode == 0, again.stderr
    assert not (work / "output" / ".c.next").exists()
    assert_same_bundle(clean / "output" / "c", work / "output" / "c")


# -- the kill injector (runs in the child process) -------------------------------------


def _install_kill_point(point: str) -> None:
    from mosaic.pipeline import generation
    from mosaic.pipeline import remove as remove_module

    if point == "cells":
        kill_points.after(remove_module, "_blank_cells")
    elif point == "tiles":  # the cells pack and index, two arrays, two tiles
        kill_points.after_replacements(6)
    elif point == "vectors":
        kill_points.after(remove_module, "_remove_vectors")
    elif point == "metadata":
        kill_points.after(remove_module, "_remove_rows")
    elif point == "manifest":
        kill_points.in_manifest(remove_module)
    elif point == "exchange":
        kill_points.after(generation, "exchange")
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _install_kill_point(sys.argv[1])
    from mosaic.cli.main import main

    sys.exit(main(sys.argv[2:]))
