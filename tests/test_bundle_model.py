"""The bundle's read model (``mosaic.bundle.Bundle``): each fact stored once, read one way.

The manifest (schema 5) stores the cell size in ``grid.cell_size`` only; older
manifests kept copies (``cells.cell_size``, ``cells.shape``, every layout grid's
``cell_size``, the similarity map's grid, tiles and files again in ``layouts[0]``),
which the model never reads. A schema this program does not read is one clear error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from server_data import write_collection

from mosaic import READABLE_SCHEMAS, SCHEMA_VERSION, iiif
from mosaic.bundle import Bundle, open_cells, read_manifest
from mosaic.errors import BundleError
from server import create_app

pytest_plugins = ["server_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
WRONG = 7  # a cell size no copy may carry without the readers noticing


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _paths_of(value, key: str, path: tuple = ()) -> list[tuple]:
    """Every path in a JSON value at which ``key`` is a dict key."""
    if isinstance(value, dict):
        found = [path + (key,)] if key in value else []
        for name, inner in value.items():
            found += _paths_of(inner, key, path + (name,))
        return found
    if isinstance(value, list):
        return [p for i, inner in enumerate(value) for p in _paths_of(inner, key, path + (i,))]
    return []


@pytest.fixture
def copied(server_bundle, tmp_path) -> Path:
    """A copy of the server tests' bundle, free to be changed: ``<tmp>/out/test``."""
    target = tmp_path / "out" / "test"
    shutil.copytree(server_bundle, target)
    return target


def _stored(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _write(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_the_cell_size_is_stored_once(server_bundle):
    stored = _stored(server_bundle)
    assert stored["schema_version"] == SCHEMA_VERSION
    # parameters records the command line; the fact is grid.cell_size
    assert _paths_of(stored, "cell_size") == [("parameters", "cell_size"),
                                              ("grid", "cell_size")]
    assert "shape" not in stored["cells"]
    # the similarity map's grid, tiles, overview and files are the top-level ones only
    assert set(stored["layouts"][0]) == {"name", "kind", "slug", "labels", "missing"}
    bundle = Bundle.open(server_bundle)
    assert bundle.cells.shape == (stored["counts"]["items"], 32, 32, 3)
    assert {layout.grid.cell_size for layout in bundle.layouts} == {32}
    assert bundle.similarity.tiles.entry == stored["tiles"]
    assert bundle.similarity.grid_file == stored["files"]["grid"]


def test_every_reader_takes_the_cell_size_from_the_grid(copied, tmp_path):
    """Copies of the cell size that disagree with ``grid.cell_size`` (as a schema-4
    manifest could hold them) change nothing any reader says."""
    stored = _stored(copied)
    before = Bundle.open(copied).collection_document(lambda path: path)
    legacy = read_manifest(copied)
    legacy["cells"].update(cell_size=WRONG, shape=[legacy["counts"]["items"], WRONG, WRONG, 3])
    for entry in legacy["layouts"]:
        entry["grid"]["cell_size"] = WRONG
    legacy["layouts"][0]["grid"]["n_rows"] = 1
    legacy["parameters"]["cell_size"] = WRONG
    _write(copied, legacy)

    bundle = Bundle.open(copied)
    assert bundle.grid.cell_size == stored["grid"]["cell_size"] == 32
    assert bundle.cells.shape[1:] == (32, 32, 3)
    assert all(layout.grid.cell_size == 32 for layout in bundle.layouts)
    assert bundle.similarity.grid.n_rows == stored["grid"]["n_rows"]
    assert bundle.collection_document(lambda path: path) == before
    assert iiif.item_info(bundle, "x")["width"] == 32
    with open_cells(copied, read_manifest(copied)) as cells:  # the dict wrapper, too
        assert cells[0].shape == (32, 32, 3)
    assert read_manifest(copied)["cells"]["cell_size"] == 32  # copies rebuilt from the grid

    client = create_app({"TESTING": True}, out_dir=copied.parent).test_client()
    body = client.get("/api/collections/test").get_json()
    assert {layout["grid"]["cell_size"] for layout in body["layouts"]} == {32}
    assert body["grid"]["cell_size"] == 32
    info = client.get("/iiif/test/items/0/info.json").get_json()
    assert (info["width"], info["height"]) == (32, 32)
    assert client.get("/iiif/test/items/0/full/32,32/0/default.jpg").status_code == 200
    shown = run_cli(tmp_path, "info", "--id", "test", "--out", "out")
    assert shown.returncode == 0, shown.stderr
    assert ", cell 32 px" in shown.stdout


def test_a_schema_4_manifest_reads_as_the_same_model(copied):
    """A bundle made before schema 5 (the copies in place, ``schema_version`` 4) gives
    the same model: the same collection document, layouts, cells and counts."""
    new = Bundle.open(copied)
    old = read_manifest(copied)
    old["schema_version"] = 4
    old["files"].update(cells="cells.pack", cells_index="cells.idx")
    _write(copied, old)
    older = Bundle.open(copied)
    assert older.schema_version == 4
    for part in ("grid", "cells", "layouts", "embeddings", "counts", "regions", "duplicates"):
        assert getattr(older, part) == getattr(new, part), part
    assert older.collection_document(str) == new.collection_document(str)


@pytest.mark.parametrize("schema", [2, 99, None])
def test_a_schema_it_cannot_read_is_one_clear_error(copied, tmp_path, schema):
    stored = _stored(copied)
    stored["schema_version"] = schema
    _write(copied, stored)
    readable = ", ".join(str(v) for v in READABLE_SCHEMAS[:-1])
    with pytest.raises(BundleError, match=f"schema_version {schema!r}; this program reads "
                                          f"{readable} and {READABLE_SCHEMAS[-1]}: rebuild"):
        Bundle.open(copied)
    for command in (["info"], ["export", "-o", "-"], ["duplicates"]):
        done = run_cli(tmp_path, *command, "--id", "test", "--out", "out")
        assert done.returncode != 0 and done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and \
            "rebuild the bundle with `python run.py pipeline`" in lines[0], done.stderr


def test_a_layout_outside_the_bundle_is_a_usage_error(server_bundle):
    bundle = Bundle.open(server_bundle)
    assert bundle.layout() is bundle.similarity
    with pytest.raises(Exception, match="is not a layout of this bundle; it has similarity"):
        bundle.layout("date:year")
    assert bundle.layout_by_slug("nope") is None


@pytest.fixture(scope="module")
def relative(tmp_path_factory) -> Path:
    """A folder with ``pics/`` and the bundle ``bundles/rel`` that ``pipeline`` built
    from it with relative paths (24-px cells, a category layout)."""
    work = tmp_path_factory.mktemp("relative")
    write_collection(work / "pics")
    built = run_cli(work, "pipeline", "--images", "pics", "--metadata", "metadata.csv",
                    "--out", "bundles", "--id", "rel", "--embedding", "raw", "--cell-size",
                    "24", "--tile-size", "64", "--jobs", "2", "--perplexity", "5",
                    "--layout", "category:category")
    assert built.returncode == 0, built.stderr
    assert "at 24 px" in built.stdout
    return work


def test_the_cli_reads_a_bundle_built_with_relative_paths(relative, tmp_path):
    """``pipeline`` with a relative image folder and output folder, then the readers as
    subprocesses from the same folder: every path they open is the bundle's own."""
    shutil.copytree(relative, tmp_path, dirs_exist_ok=True)
    bundle = Bundle.open(tmp_path / "bundles" / "rel")
    assert bundle.grid.cell_size == 24 and len(bundle.layouts) == 2
    shown = run_cli(tmp_path, "info", "--id", "rel", "--out", "bundles")
    assert shown.returncode == 0, shown.stderr
    assert "cell 24 px" in shown.stdout and "layout category:category" in shown.stdout
    exported = run_cli(tmp_path, "export", "--id", "rel", "--out", "bundles",
                       "--layout", "category:category", "-o", "rel.csv")
    assert exported.returncode == 0, exported.stderr
    assert len((tmp_path / "rel.csv").read_text().splitlines()) == bundle.counts.items + 1
    poster = run_cli(tmp_path, "poster", "--id", "rel", "--out", "bundles", "--pixels",
                     "200x150", "--margin", "1mm", "-o", "rel.png", "--layout",
                     "category:category")
    assert poster.returncode == 0, poster.stderr
    record = json.loads((tmp_path / "rel.items.json").read_text())
    assert record["cells"]["stored_px"] == 24 and record["bundle"] == "rel"


def test_add_and_remove_store_each_fact_once(relative, tmp_path):
    """``run.py add`` and ``remove`` write their generation's manifest as the pipeline
    does: the cell size in ``grid`` (and the command line in ``parameters``) only, the
    similarity map's facts at the top level only, every layout still read."""
    import numpy as np
    from PIL import Image

    shutil.copytree(relative, tmp_path, dirs_exist_ok=True)
    (tmp_path / "new").mkdir()
    ramp = np.linspace(0, 255, 40 * 30 * 3).reshape(30, 40, 3).astype(np.uint8)
    Image.fromarray(ramp).save(tmp_path / "new" / "ramp.png")
    bundle = tmp_path / "bundles" / "rel"
    before = Bundle.open(bundle)
    for args in (("add", "--images", "new"), ("remove", "--ids", "0")):
        done = run_cli(tmp_path, *args, "--id", "rel", "--out", "bundles")
        assert done.returncode == 0, done.stderr
        stored = _stored(bundle)
        assert stored["schema_version"] == SCHEMA_VERSION
        assert _paths_of(stored, "cell_size") == [("parameters", "cell_size"),
                                                  ("grid", "cell_size")], args
        assert set(stored["layouts"][0]) == {"name", "kind", "slug", "labels", "missing"}
        model = Bundle.open(bundle)
        assert model.grid.cell_size == 24 and len(model.layouts) == 2
        assert model.counts.items == before.counts.items + 1
