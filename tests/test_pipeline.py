"""End-to-end: the pipeline CLI on generated images, and the bundle it writes."""

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from annoy import AnnoyIndex
from bundle_sql import col
from sample_collection import CATEGORIES, build_bundle, make_collection, write_image

from mosaic.bundle import open_cells, read_manifest
from mosaic.cli.main import main
from mosaic.cli.pipeline import config_from_args
from mosaic.pipeline.grid import cell_ids
from mosaic.pipeline.orchestrator import run_pipeline

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ALL_STAGES = {"decode", "vectors", "layout", "grid", "render", "index-pixels", "metadata",
              "hotspots", "regions", "duplicates"}


def categories_by_id(directory):
    conn = sqlite3.connect(directory / "metadata.sqlite")
    rows = conn.execute(f"SELECT {col(conn, 'category')} FROM metadata ORDER BY id").fetchall()
    conn.close()
    return [r[0] for r in rows]


def test_bundle_matches_its_contract(bundle):
    manifest = read_manifest(bundle)
    n = manifest["counts"]["items"]
    assert n == manifest["counts"]["inputs"] == 36 and manifest["skipped"] == []
    n_rows, n_cols = manifest["grid"]["n_rows"], manifest["grid"]["n_cols"]
    positions = np.load(bundle / "positions.npy")
    assert positions.shape == (n, 2) and len({tuple(p) for p in positions}) == n
    grid = np.fromfile(bundle / "grid.i32", dtype="<i4").reshape(n_rows, n_cols)
    assert np.array_equal(grid, cell_ids(positions, n_rows, n_cols))
    layout = np.load(bundle / "layout.npy")
    assert layout.shape == (n, 2) and layout.min() >= 0 and layout.max() <= 1
    assert open_cells(bundle, manifest).shape == (n, 32, 32, 3)
    (embedding,) = manifest["embeddings"]
    vectors = np.load(bundle / embedding["vectors"])
    assert vectors.shape == (n, embedding["dim"])
    index = AnnoyIndex(embedding["dim"], embedding["metric"])
    assert index.load(str(bundle / embedding["index"])) and index.get_n_items() == n
    assert (bundle / manifest["tiles"]["dzi"]).is_file()
    assert (bundle / manifest["overview"]["path"]).is_file()


def test_metadata_store_is_typed_counted_and_searchable(bundle):
    manifest = read_manifest(bundle)
    kinds = {c["name"]: c["kind"] for c in manifest["columns"]}
    assert kinds["year"] == "year" and kinds["category"] == "facet"
    assert manifest["facets"] == ["category"]
    conn = sqlite3.connect(bundle / "metadata.sqlite")
    ids = [r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")]
    assert ids == list(range(36))
    counts = dict(conn.execute("SELECT value, count FROM facet_values WHERE name='category'"))
    assert counts == {c: 12 for c in CATEGORIES}
    hits = [r[0] for r in conn.execute(
        "SELECT rowid FROM items_fts WHERE items_fts MATCH 'green'")]
    assert len(hits) == 12
    category = col(conn, "category")
    assert {r[0] for r in conn.execute(
        f"SELECT {category} FROM metadata WHERE id IN ({','.join(map(str, hits))})")} == {"green"}
    year_column = col(conn, "year")
    title, year = conn.execute(f"SELECT i.title, m.{year_column} FROM items i JOIN metadata m "
                               "USING (id) WHERE i.id = 0").fetchone()
    assert title.endswith(f"({year})") and isinstance(year, int)
    positions = np.load(bundle / "positions.npy")
    stored = np.array(conn.execute("SELECT row, col FROM items ORDER BY id").fetchall())
    assert np.array_equal(stored, positions)


def test_colour_clusters_stay_apart_on_the_grid(bundle):
    # Each colour family must fill one 4-connected region of the grid.
    from scipy import ndimage

    positions = np.load(bundle / "positions.npy")
    labels = categories_by_id(bundle)
    n_rows, n_cols = positions.max(axis=0) + 1
    for category in CATEGORIES:
        mask = np.zeros((n_rows, n_cols), dtype=bool)
        members = [i for i, label in enumerate(labels) if label == category]
        mask[positions[members, 0], positions[members, 1]] = True
        assert ndimage.label(mask)[1] == 1, category


def test_same_arguments_rerun_from_cache(bundle):
    out = bundle.parent
    images = read_manifest(bundle)["parameters"]["images"]
    metadata = read_manifest(bundle)["parameters"]["metadata"]
    args = ["pipeline", "--images", images, "--out", str(out), "--id", "test", "--jobs", "2",
            "--cell-size", "32", "--tile-size", "64", "--metadata", metadata,
            "--title", "{name} ({year})"]
    from mosaic.cli.main import get_parser

    result = run_pipeline(config_from_args(get_parser().parse_args(args)))
    assert set(result.cached_stages) == ALL_STAGES
    assert (bundle / "manifest.json").is_file()


def test_late_parameter_reruns_only_later_stages(bundle, tmp_path):
    copy = tmp_path / "test"
    shutil.copytree(bundle, copy)
    manifest = read_manifest(copy)
    p = manifest["parameters"]
    from mosaic.cli.main import get_parser

    args = get_parser().parse_args([
        "pipeline", "--images", p["images"], "--out", str(tmp_path), "--id", "test",
        "--jobs", "2", "--cell-size", "32", "--tile-size", "64", "--metadata", p["metadata"],
        "--title", "{name} ({year})", "--tile-format", "png"])
    result = run_pipeline(config_from_args(args))
    assert set(result.cached_stages) == ALL_STAGES - {"render"}
    assert result.manifest["tiles"]["format"] == "png"
    assert list((copy / "tiles" / "map_files" / "0").iterdir())[0].suffix == ".png"


def test_fixed_seed_repeats_the_layout(collection, tmp_path):
    images, _ = collection
    for name in ("one", "two"):
        assert build_bundle(images, tmp_path, name, "--random-state", "3") == 0
    for name in ("layout.npy", "positions.npy"):
        assert np.array_equal(np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name))


def test_corrupt_image_is_skipped_with_its_reason(tmp_path):
    make_collection(tmp_path / "imgs", per_cluster=4, with_csv=False)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert build_bundle(tmp_path / "imgs", tmp_path / "out", "c") == 0
    manifest = read_manifest(tmp_path / "out" / "c")
    assert manifest["counts"] == {**manifest["counts"], "inputs": 13, "items": 12, "skipped": 1}
    (skipped,) = manifest["skipped"]
    assert skipped["source"].endswith("broken.jpg") and skipped["reason"]


def test_zero_usable_images_is_an_error(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_text("not an image")
    assert build_bundle(tmp_path / "imgs", tmp_path / "out", "c") == 1
    assert "no usable images" in capsys.readouterr().err
    assert not (tmp_path / "out" / "c" / "manifest.json").exists()


def test_user_vectors_and_xy_layout(tmp_path):
    make_collection(tmp_path / "imgs", per_cluster=4, with_csv=False)
    n = 12
    rows, cols = np.divmod(np.arange(n), 4)  # a 3 x 4 lattice in reading order
    xy = np.column_stack([cols, rows]).astype(np.float32)
    vectors = np.random.default_rng(0).normal(size=(n, 5)).astype(np.float32)
    np.save(tmp_path / "xy.npy", xy)
    np.save(tmp_path / "vecs.npy", vectors)
    code = build_bundle(tmp_path / "imgs", tmp_path / "out", "u", "--embedding",
                        f"xy:{tmp_path / 'xy.npy'}", "--embedding", f"file:{tmp_path / 'vecs.npy'}")
    assert code == 0
    bundle = tmp_path / "out" / "u"
    manifest = read_manifest(bundle)
    assert [e["name"] for e in manifest["embeddings"]] == ["xy-xy", "file-vecs"]
    assert np.allclose(np.load(bundle / "embeddings" / "file-vecs.npy"), vectors)
    positions = np.load(bundle / "positions.npy")
    assert np.array_equal(positions, np.column_stack([rows, cols]))  # the layout is kept


def test_vgg16_path_runs_for_real_with_random_weights(tmp_path):
    make_collection(tmp_path / "imgs", per_cluster=2, with_csv=False)
    code = build_bundle(tmp_path / "imgs", tmp_path / "out", "v", "--embedding", "vgg16",
                        "--weights", "none", "--embedding", "raw")
    assert code == 0
    manifest = read_manifest(tmp_path / "out" / "v")
    vgg = manifest["embeddings"][0]
    assert vgg["name"] == "vgg16" and vgg["dim"] == 4096 and vgg["metric"] == "angular"
    assert vgg["dtype"] == "float16"
    vectors = np.load(tmp_path / "out" / "v" / vgg["vectors"])
    assert vectors.shape == (6, 4096) and vectors.dtype == np.float16
    assert np.isfinite(vectors).all()
    assert len({v.tobytes() for v in vectors}) == 6  # each image gets its own vector


def test_imagenet_download_failure_names_weights(tmp_path):
    # VGG16 runs in the decode workers, so the offline download is faked in every
    # process (tests/process_hooks/sitecustomize.py), and the CLI runs as the user's.
    write_image(tmp_path / "imgs" / "a.png", np.zeros((8, 8, 3), np.uint8))
    env = dict(os.environ, MOSAIC_TEST_OFFLINE_WEIGHTS="1", PYTHONPATH=os.pathsep.join(
        [str(TESTS / "process_hooks"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "-q", "pipeline", "--images",
                           "imgs", "--out", "out", "--id", "w", "--embedding", "vgg16"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert err.startswith("Error:") and "--weights" in err and "\n" not in err


def test_export_csv_and_json(bundle, tmp_path):
    out, cid = str(bundle.parent), bundle.name
    assert main(["export", "--id", cid, "--out", out, "-o", str(tmp_path / "e.csv")]) == 0
    with open(tmp_path / "e.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 36
    assert list(rows[0])[:8] == ["id", "source", "row", "col", "x", "y", "title", "url"]
    assert {"meta.category", "meta.year", "meta.notes"} <= set(rows[0])
    positions = np.load(bundle / "positions.npy")
    assert all((int(r["row"]), int(r["col"])) == tuple(positions[int(r["id"])]) for r in rows)
    assert main(["export", "--id", cid, "--out", out, "--format", "json",
                 "-o", str(tmp_path / "e.json")]) == 0
    items = json.loads((tmp_path / "e.json").read_text())
    assert [r["id"] for r in items] == list(range(36))
    assert {"category", "year", "notes"} <= set(items[0]["metadata"])


def test_info_describes_the_bundle(bundle, capsys):
    assert main(["info", "--id", bundle.name, "--out", str(bundle.parent)]) == 0
    text = capsys.readouterr().out
    assert "items 36 of 36" in text and "embedding pixels" in text
    assert "column category: facet" in text


@pytest.mark.parametrize("extra,needle", [
    (["--cell-size", "4"], "--cell-size"),
    (["--tile-size", "5"], "--tile-size"),
    (["--overlap", "200"], "--overlap"),
    (["--quality", "0"], "--quality"),
    (["--jobs", "0"], "--jobs"),
    (["--clusters", "many"], "--clusters"),
    (["--embedding", "resnet"], "--embedding"),
    (["--embedding", "file:/no/such.npy"], "no such file"),
    (["--title", "{nope}"], "--title"),
    (["--metadata", "/no/such.csv"], "--metadata"),
    (["--id", "../escape"], "--id"),
])
def test_each_validation_rule_gives_one_line_and_exit_2(collection, tmp_path, capsys,
                                                        extra, needle):
    images, _ = collection
    code = main(["pipeline", "--images", str(images), "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("Error:") and needle in err and "\n" not in err


def test_csv_without_filename_column_is_refused(collection, tmp_path, capsys):
    images, _ = collection
    bad = tmp_path / "bad.csv"
    bad.write_text("name,year\nx,1990\n")
    assert main(["pipeline", "--images", str(images), "--metadata", str(bad),
                 "--out", str(tmp_path)]) == 2
    assert "no 'filename' column" in capsys.readouterr().err


def test_missing_images_and_unknown_flag_values(tmp_path, capsys):
    assert main(["pipeline", "--images", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "--images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", "--images", str(tmp_path), "--fit", "stretch"])
    assert exit_info.value.code == 2
    assert "--fit" in capsys.readouterr().err
