"""Layouts besides the similarity map (issue 11): date, category, geo and the user's xy.

Property tests on mosaic.pipeline.arrange (arrays in, arrays out, small N), then
one collection built by the real CLI with three more layouts: the manifest, the
ids, the cache, the server's API and files, export and poster.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sample_collection import make_collection

from mosaic import SCHEMA_VERSION
from mosaic.bundle import layout_entries, layout_entry, read_manifest
from mosaic.errors import UsageError
from mosaic.pipeline import arrange
from mosaic.pipeline.orchestrator import PipelineConfig, run_pipeline
from server import create_app

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = ["category", "date", "geo"]
NAMES = ["similarity", "category:category", "date:year", "geo:lat,lng"]


def assert_bijection(positions: np.ndarray, shape: tuple[int, int], n: int) -> None:
    """Every item in one cell of the grid, no cell holding two."""
    assert positions.shape == (n, 2)
    assert (positions >= 0).all()
    assert (positions[:, 0] < shape[0]).all() and (positions[:, 1] < shape[1]).all()
    flat = positions[:, 0].astype(np.int64) * shape[1] + positions[:, 1]
    assert len(np.unique(flat)) == n


def in_label(positions: np.ndarray, label: dict) -> np.ndarray:
    r, c = positions[:, 0], positions[:, 1]
    return ((r >= label["row"]) & (r < label["row"] + label["n_rows"])
            & (c >= label["col"]) & (c < label["col"] + label["n_cols"]))


# -- placement properties ---------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_every_layout_is_a_bijection_with_missing_values(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    xy = rng.random((n, 2))
    years = rng.integers(1850, 2020, n).astype(float)
    years[rng.random(n) < 0.1] = np.nan
    values = [None if rng.random() < 0.1 else f"v{rng.integers(0, 7)}" for _ in range(n)]
    latlng = np.column_stack([rng.uniform(-80, 80, n), rng.uniform(-180, 180, n)])
    latlng[rng.random(n) < 0.1] = np.nan
    coords = rng.normal(size=(n, 2))
    coords[rng.random(n) < 0.1] = np.nan
    for name, (positions, shape, labels) in {
            "date": arrange.arrange_date(years, xy),
            "category": arrange.arrange_category(values, xy),
            "geo": arrange.arrange_geo(latlng, xy),
            "xy": arrange.arrange_xy(coords, xy)}.items():
        assert_bijection(positions, shape, n)
        # the items without a value are in the one extra block, counted
        missing = [label for label in labels if label["text"] in arrange.MISSING]
        assert len(missing) <= 1, name
        for label in labels:
            assert in_label(positions, label).sum() == label["count"], (name, label)


def test_all_missing_and_single_items_still_place():
    xy = np.random.default_rng(0).random((5, 2))
    for positions, shape, labels in (
            arrange.arrange_date(np.full(5, np.nan), xy),
            arrange.arrange_category([None] * 5, xy),
            arrange.arrange_geo(np.full((5, 2), np.nan), xy),
            arrange.arrange_geo(np.array([[10.0, 20.0]] * 5), xy),
            arrange.arrange_date(np.array([2000.0]), xy[:1])):
        assert_bijection(positions, shape, len(positions))
        assert sum(label["count"] for label in labels) in (0, len(positions))


def bucket_of(label_of_column: dict[int, int], positions: np.ndarray) -> np.ndarray:
    return np.array([label_of_column[int(c)] for c in positions[:, 1]])


def test_date_columns_are_ordered_by_date_and_stacked_bottom_up():
    rng = np.random.default_rng(1)
    n = 400
    years = rng.integers(1700, 2000, n).astype(float)  # 300 years: buckets
    years[:7] = np.nan
    xy = rng.random((n, 2))
    positions, (n_rows, n_cols), labels = arrange.arrange_date(years, xy)
    assert len(labels) <= arrange.MAX_DATE_COLUMNS + 1
    widths = {label["n_cols"] for label in labels}
    assert len(widths) == 1  # every column as wide
    assert labels[-1]["text"] == arrange.NO_DATE and labels[-1]["count"] == 7
    size = arrange.year_bucket(years)
    assert size > 1
    present = np.isfinite(years)
    bucket = np.where(present, np.nan_to_num(years) // size, 1e9)
    # every item left of another has an earlier-or-equal bucket (no date: last)
    order = np.argsort(positions[:, 1], kind="stable")
    assert (np.diff(bucket[order]) >= 0).all()
    # negative control: the same check fails on shuffled columns
    shuffled = rng.permutation(positions[:, 1])
    assert not (np.diff(bucket[np.argsort(shuffled, kind="stable")]) >= 0).all()
    for label in labels:  # bars stand on the bottom row
        if label["count"]:
            assert label["row"] + label["n_rows"] == n_rows
    # empty buckets between the first and last keep their column: a time axis
    starts = [int(label["text"].split("-")[0]) for label in labels[:-1]]
    assert np.all(np.diff(starts) == size)


def test_few_years_one_column_each():
    years = np.array([1990, 1990, 1992, 1995, 1995, 1995], dtype=float)
    _, _, labels = arrange.arrange_date(years, np.random.default_rng(0).random((6, 2)))
    assert [label["text"] for label in labels] == [str(y) for y in range(1990, 1996)]
    assert [label["count"] for label in labels] == [2, 0, 1, 0, 0, 3]


def test_date_values_parse_years_and_iso_dates():
    years = arrange.parse_years(["1990", "1990.7", "2001-05-03", "2001-05-03T10:00:00Z",
                                 "1850-01", "", None, "circa 1900", "nan"])
    assert years[:5].tolist() == [1990, 1990, 2001, 2001, 1850]
    assert np.isnan(years[5:]).all()


def test_every_category_block_holds_only_its_value():
    rng = np.random.default_rng(2)
    n = 500
    names = ["a", "b", "c", "d", "e"]
    weights = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
    values = [None if rng.random() < 0.05 else str(rng.choice(names, p=weights))
              for _ in range(n)]
    positions, (n_rows, n_cols), labels = arrange.arrange_category(values, rng.random((n, 2)))
    assert 0.5 <= n_rows / n_cols <= 2  # near-square overall
    assert labels[-1]["text"] == arrange.NO_VALUE  # the missing block comes last
    assert [label["count"] for label in labels[:-1]] == sorted(
        (label["count"] for label in labels[:-1]), reverse=True)  # largest first
    grid = np.full((n_rows, n_cols), -1)
    grid[positions[:, 0], positions[:, 1]] = np.arange(n)
    for label in labels:
        inside = in_label(positions, label)
        expected = {i for i, v in enumerate(values)
                    if v == label["text"] or (v is None and label["text"] == arrange.NO_VALUE)}
        assert set(np.flatnonzero(inside).tolist()) == expected
        block = grid[label["row"]:label["row"] + label["n_rows"],
                     label["col"]:label["col"] + label["n_cols"]]
        assert 0.5 <= block.shape[0] / block.shape[1] <= 2  # each block near-square
    # one empty cell of gutter: no two blocks' rectangles touch
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            apart_rows = (a["row"] + a["n_rows"] < b["row"]) or (b["row"] + b["n_rows"] < a["row"])
            apart_cols = (a["col"] + a["n_cols"] < b["col"]) or (b["col"] + b["n_cols"] < a["col"])
            assert apart_rows or apart_cols, (a, b)


def test_items_close_on_the_similarity_map_stay_close_in_their_block():
    rng = np.random.default_rng(3)
    n = 400
    xy = rng.random((n, 2))
    values = ["x" if i % 2 else "y" for i in range(n)]
    positions, _, _ = arrange.arrange_category(values, xy)
    for block in ("x", "y"):
        ids = np.array([i for i, v in enumerate(values) if v == block])
        tree_d = np.linalg.norm(xy[ids][:, None] - xy[ids][None], axis=2)
        np.fill_diagonal(tree_d, np.inf)
        nearest = tree_d.argmin(axis=1)
        cell = positions[ids].astype(float)
        close = np.linalg.norm(cell - cell[nearest], axis=1).mean()
        pairs = rng.integers(0, len(ids), (2000, 2))
        random_pairs = np.linalg.norm(cell[pairs[:, 0]] - cell[pairs[:, 1]], axis=1).mean()
        assert close < 0.5 * random_pairs


def test_geo_keeps_west_east_and_north_south_order():
    rng = np.random.default_rng(4)
    n = 600  # scattered points, and a crowd of 60 in one city
    latlng = np.column_stack([rng.uniform(-60, 70, n), rng.uniform(-170, 170, n)])
    latlng[:60] = (48.85, 2.35) + rng.normal(0, 0.2, (60, 2))
    positions, (n_rows, n_cols), _ = arrange.arrange_geo(latlng, rng.random((n, 2)))
    assert_bijection(positions, (n_rows, n_cols), n)
    # well separated: more than 12 cells apart on that axis (the crowd spreads ~5 cells)
    step = np.ptp(latlng, axis=0) / (n_rows, n_cols)
    a, b = np.triu_indices(n, 1)
    far = np.abs(latlng[a] - latlng[b]) > 12 * step

    def keeps_order(cells: np.ndarray) -> bool:
        lat_far, lng_far = far[:, 0], far[:, 1]
        west_east = np.sign(cells[b, 1] - cells[a, 1]) == np.sign(latlng[b, 1] - latlng[a, 1])
        north_up = np.sign(cells[a, 0] - cells[b, 0]) == np.sign(latlng[b, 0] - latlng[a, 0])
        return bool(west_east[lng_far].all() and north_up[lat_far].all())

    assert far.any(axis=0).all()
    assert keeps_order(positions)
    assert not keeps_order(rng.permutation(positions))  # negative control


def test_geo_places_a_crowd_on_one_spot():
    # Its speed (not quadratic in N) is measured in bench/layouts_bench.py.
    rng = np.random.default_rng(5)
    n = 60_000  # half of them on one spot
    latlng = np.column_stack([rng.uniform(-60, 60, n), rng.uniform(-170, 170, n)])
    latlng[: n // 2] = (48.85, 2.35)
    positions, shape, _ = arrange.arrange_geo(latlng, rng.random((n, 2)))
    assert_bijection(positions, shape, n)


@pytest.mark.parametrize("text, message", [
    ("nope", "not a layout"), ("similarity:x", "not a layout"), ("date:a,b", "one column"),
    ("geo:lat", "two columns"), ("xy", "needs a file"), ("category:", "not a layout")])
def test_bad_specs_are_one_usage_error(text, message):
    with pytest.raises(UsageError, match=message):
        arrange.resolve_layout_specs([text], ["filename", "lat"])


def test_specs_resolve_defaults_and_keep_similarity_first():
    columns = ["filename", "Year", "Latitude", "LON", "category"]
    specs = arrange.resolve_layout_specs(["geo", "date", "similarity", "category"], columns)
    assert [s.name for s in specs] == ["similarity", "geo:Latitude,LON", "date:Year",
                                       "category:category"]
    assert [s.slug for s in specs] == ["similarity", "geo-Latitude-LON", "date-Year",
                                       "category-category"]
    with pytest.raises(UsageError, match="twice"):
        arrange.resolve_layout_specs(["date", "date:Year"], columns)
    with pytest.raises(UsageError, match="the CSV has no column 'date'"):
        arrange.resolve_layout_specs(["date:date"], columns)
    with pytest.raises(UsageError, match="needs --metadata"):
        arrange.resolve_layout_specs(["category"], None)


def test_schema_3_manifests_read_as_one_similarity_layout():
    manifest = {"grid": {"n_rows": 2, "n_cols": 3, "cell_size": 8, "method": "lap"},
                "tiles": {"dzi": "tiles/map.dzi"}, "overview": {"path": "overview.jpg"},
                "files": {"positions": "positions.npy", "grid": "grid.i32"}}
    [entry] = layout_entries(manifest)
    assert entry["name"] == "similarity" and entry["positions"] == "positions.npy"
    assert layout_entry(manifest) is not None
    with pytest.raises(UsageError, match="similarity"):
        layout_entry(manifest, "date:year")


# -- one collection through the real CLI -------------------------------------------

def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


PIPELINE = ["pipeline", "--images", "images", "--metadata", "images.csv", "--id", "lay",
            "--cell-size", "32", "--tile-size", "64", "--jobs", "2", "--perplexity", "5",
            "--embedding", "raw"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with images/, images.csv and output/lay built with three layouts."""
    work = tmp_path_factory.mktemp("layouts")
    make_collection(work / "images", per_cluster=8)
    args = [a for layout in LAYOUTS for a in ("--layout", layout)]
    result = run_cli("-q", *PIPELINE, *args, cwd=work)
    assert result.returncode == 0, result.stderr
    return work


@pytest.fixture(scope="module")
def bundle(project) -> Path:
    return project / "output" / "lay"


def test_the_manifest_lists_every_layout_similarity_first(bundle):
    manifest = read_manifest(bundle)
    assert manifest["schema_version"] == SCHEMA_VERSION
    entries = manifest["layouts"]
    assert [e["name"] for e in entries] == NAMES
    first = entries[0]
    assert first["tiles"] == manifest["tiles"] and first["positions"] == "positions.npy"
    assert first["grid"]["n_rows"] == manifest["grid"]["n_rows"]
    n = manifest["counts"]["items"]
    for entry in entries:
        positions = np.load(bundle / entry["positions"])
        shape = (entry["grid"]["n_rows"], entry["grid"]["n_cols"])
        assert_bijection(positions, shape, n)
        grid = np.fromfile(bundle / entry["grid_file"], dtype="<i4").reshape(shape)
        assert (grid[positions[:, 0], positions[:, 1]] == np.arange(n)).all()
        assert (grid >= 0).sum() == n
        assert (bundle / entry["tiles"]["dzi"]).is_file()
        assert (bundle / entry["overview"]["path"]).is_file()
        assert entry["tiles"]["width"] == shape[1] * 32
    geo = layout_entry(manifest, "geo:lat,lng")
    assert geo["missing"] == 3 and geo["labels"][-1]["text"] == "(no position)"


def test_switching_layouts_keeps_item_ids(bundle):
    manifest = read_manifest(bundle)
    conn = sqlite3.connect(bundle / "metadata.sqlite")
    ids = [i for (i,) in conn.execute("SELECT id FROM items ORDER BY id")]
    similarity = np.array(conn.execute("SELECT row, col FROM items ORDER BY id").fetchall())
    conn.close()
    assert ids == list(range(manifest["counts"]["items"]))
    assert (np.load(bundle / "positions.npy") == similarity).all()
    category = layout_entry(manifest, "category:category")
    positions = np.load(bundle / category["positions"])
    conn = sqlite3.connect(bundle / "metadata.sqlite")
    position = [n for (n,) in conn.execute("SELECT position FROM columns WHERE name='category'")]
    values = dict(conn.execute(f"SELECT id, c{position[0]} FROM metadata"))
    conn.close()
    for label in category["labels"]:  # each block holds that category's items, by id
        inside = np.flatnonzero(in_label(positions, label))
        assert {values[int(i)] for i in inside} == {label["text"]}


def test_a_bad_layout_is_one_error_line_naming_the_column(project):
    for args, expected in (
            (["--layout", "date:when"], "--layout date:when: the CSV has no column 'when'"),
            (["--layout", "category:notes", "--layout", "category:notes"], "given twice"),
            (["--layout", "date:notes"], "column 'notes' has no usable value"),
            (["--layout", "sideways"], "--layout 'sideways' is not a layout")):
        result = run_cli(*PIPELINE, "--id", "bad", *args, cwd=project)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0]
    assert not (project / "output" / "bad").exists()  # failed before any work
    result = run_cli("pipeline", "--images", "images", "--id", "bad", "--layout", "category",
                     cwd=project)
    assert result.returncode == 2 and "needs --metadata" in result.stderr


def test_export_and_poster_take_a_layout(project, bundle):
    result = run_cli("export", "--id", "lay", "--layout", "date:year", "-o", "date.csv",
                     cwd=project)
    assert result.returncode == 0, result.stderr
    with open(project / "date.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    entry = layout_entry(read_manifest(bundle), "date:year")
    positions = np.load(bundle / entry["positions"])
    assert [(int(r["row"]), int(r["col"])) for r in rows] == [tuple(p) for p in positions]
    for name in ("export", "poster"):
        extra = ["-o", "p.png"] if name == "poster" else []
        result = run_cli(name, "--id", "lay", "--layout", "nope", *extra, cwd=project)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("Error: ") and "category:category" in lines[0]
    result = run_cli("-q", "poster", "--id", "lay", "--layout", "category:category", "-o",
                     "cat.png", "--pixels", "400x400", cwd=project)
    assert result.returncode == 0, result.stderr
    placed = json.loads((project / "cat.items.json").read_text())
    category = layout_entry(read_manifest(bundle), "category:category")
    assert (placed["grid"]["n_rows"], placed["grid"]["n_cols"]) == (
        category["grid"]["n_rows"], category["grid"]["n_cols"])


def test_the_server_lists_and_serves_every_layout(bundle):
    client = create_app({"TESTING": True}, out_dir=bundle.parent).test_client()
    body = client.get("/api/collections/lay").get_json()
    assert [layout["name"] for layout in body["layouts"]] == NAMES
    assert body["layouts"][0]["dzi"] == body["dzi"]
    assert body["layouts"][0]["grid_url"] == body["grid_url"]
    for layout in body["layouts"]:
        dzi = client.get(layout["dzi"])
        assert dzi.status_code == 200 and b"<Image" in dzi.data
        assert "immutable" in dzi.headers["Cache-Control"]
        tile = client.get(layout["dzi"].split("?")[0].replace("map.dzi", "map_files/0/0_0.jpg"))
        assert tile.status_code == 200 and tile.data[:2] == b"\xff\xd8"
        grid = client.get(layout["grid_url"])
        shape = (layout["grid"]["n_rows"], layout["grid"]["n_cols"])
        assert grid.headers["X-Grid-Shape"] == f"{shape[0]},{shape[1]}"
        cells = np.frombuffer(grid.data, dtype="<i4")
        assert len(cells) == shape[0] * shape[1] and (cells >= 0).sum() == body["n_items"]
        assert client.get(layout["overview"]).status_code == 200
        assert isinstance(layout["labels"], list) and "missing" in layout
    item = client.get("/api/collections/lay/items/5").get_json()
    assert set(item["positions"]) == set(NAMES)
    assert item["positions"]["similarity"] == [item["row"], item["col"]]
    for path in ("/collections/lay/layouts/nope/grid.i32",
                 "/collections/lay/layouts/date-year/tiles/../../../manifest.json",
                 "/collections/lay/layouts/date-year/tiles/map_files/0/9_9.jpg"):
        response = client.get(path)
        assert response.status_code == 404
    error = client.get("/collections/lay/layouts/nope/tiles/map.dzi").get_json()
    assert error["ok"] is False and "date-year" in error["error"]


def test_one_more_layout_reruns_only_its_stages(tmp_path):
    make_collection(tmp_path / "images", per_cluster=4)
    config = PipelineConfig(images=str(tmp_path / "images"), out=str(tmp_path / "out"), id="c",
                            metadata=str(tmp_path / "images.csv"), cell_size=16, jobs=1,
                            embeddings=["raw"], perplexity=3, tile_size=64,
                            layouts=["category"])
    first = run_pipeline(config)
    (tmp_path / "xy.csv").write_text("filename,x,y\n" + "".join(
        f"{p.name},{i % 5},{i // 5}\n" for i, p in enumerate(
            sorted((tmp_path / "images").rglob("*.*"))[:-2])))
    config.layouts = ["category", f"xy:{tmp_path / 'xy.csv'}"]
    second = run_pipeline(config)
    new = {"layout-xy-xy", "render-xy-xy"}
    assert set(second.manifest["timings"]) - set(second.cached_stages) == new
    assert set(first.manifest["timings"]) <= set(second.cached_stages)
    entry = layout_entry(second.manifest, f"xy:{tmp_path / 'xy.csv'}")
    assert entry["missing"] == 2 and entry["labels"][0]["text"] == "(no position)"
    positions = np.load(Path(config.out) / "c" / entry["positions"])
    assert_bijection(positions, (entry["grid"]["n_rows"], entry["grid"]["n_cols"]), 12)
