"""IIIF out: the map and every item as level-0 IIIF images, and the Presentation 3
manifest, served (server/iiif.py) and written as static files (pipeline/iiif_out.py)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from static_host import free_port, static_host

from mosaic import iiif
from mosaic.bundle import Bundle, read_manifest
from mosaic.pipeline.iiif_out import write_iiif

pytest_plugins = ["server_fixtures"]

BASE = "http://localhost/iiif/test"


def _tile_urls(info: dict) -> list[tuple[str, int, int, int]]:
    """(IIIF tile path, scale factor, col, row) of every tile info.json offers."""
    width, height = info["width"], info["height"]
    tile = info["tiles"][0]["width"]
    out = []
    for factor in info["tiles"][0]["scaleFactors"]:
        span = tile * factor
        for row, y in enumerate(range(0, height, span)):
            for col, x in enumerate(range(0, width, span)):
                w, h = min(span, width - x), min(span, height - y)
                sw, sh = -(-w // factor), -(-h // factor)
                region = "full" if (w, h) == (width, height) else f"{x},{y},{w},{h}"
                out.append((f"{region}/{sw},{sh}/0/default.jpg", factor, col, row))
    return out


def test_map_info_json_is_level_0_with_its_own_url_as_id(client, server_bundle):
    response = client.get("/iiif/test/map/info.json")
    assert response.status_code == 200
    info = response.get_json()
    manifest = read_manifest(server_bundle)
    assert info["id"] == "http://localhost/iiif/test/map"
    assert info["type"] == "ImageService3" and info["profile"] == "level0"
    assert (info["width"], info["height"]) == (manifest["tiles"]["width"],
                                               manifest["tiles"]["height"])
    assert info["tiles"][0]["width"] == manifest["tiles"]["tile_size"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    behind = client.get("/iiif/test/map/info.json", base_url="https://maps.example.org/sub")
    assert behind.get_json()["id"] == "https://maps.example.org/sub/iiif/test/map"


def test_every_iiif_tile_is_the_dzi_tile_it_names(client, server_bundle):
    info = client.get("/iiif/test/map/info.json").get_json()
    top = read_manifest(server_bundle)["tiles"]["levels"] - 1
    tiles = _tile_urls(info)
    assert len(tiles) > 4
    for path, factor, col, row in tiles:
        response = client.get(f"/iiif/test/map/{path}")
        assert response.status_code == 200, path
        level = top - (factor.bit_length() - 1)
        dzi = server_bundle / "tiles" / "map_files" / str(level) / f"{col}_{row}.jpg"
        assert response.data == dzi.read_bytes(), path
        size = tuple(int(v) for v in path.split("/")[1].split(","))
        assert Image.open(io.BytesIO(response.data)).size == size, path
        response.close()


@pytest.mark.parametrize("path", ["map/0,0,100,100/100,100/0/default.jpg",  # not a tile
                                  "map/0,0,128,128/64,64/0/default.jpg",  # wrong size
                                  "map/full/max/90/default.jpg",  # rotation
                                  "map/full/max/0/gray.jpg", "map/full/max/0/default.png",
                                  "items/0/full/7,7/0/default.jpg"])
def test_what_level_0_does_not_offer_is_a_json_400(client, path):
    response = client.get(f"/iiif/test/{path}")
    assert response.status_code == 400
    assert response.get_json()["ok"] is False and response.get_json()["status"] == 400


def test_unknown_items_and_pages_are_json_404s(client):
    for path in ("items/60/info.json", "items/999/full/max/0/default.jpg",
                 "annotations/5.json", "nope/manifest.json"):
        response = client.get(f"/iiif/{path}" if path.startswith("nope") else
                              f"/iiif/test/{path}")
        assert response.status_code == 404 and response.get_json()["status"] == 404, path


def test_full_max_is_the_overview(client, server_bundle):
    info = client.get("/iiif/test/map/info.json").get_json()
    response = client.get("/iiif/test/map/full/max/0/default.jpg")
    assert response.data == (server_bundle / "overview.jpg").read_bytes()
    assert Image.open(io.BytesIO(response.data)).size == (info["maxWidth"], info["maxHeight"])


def test_item_images_are_their_cells(client, server_bundle):
    bundle = Bundle.open(server_bundle)
    cell = bundle.grid.cell_size
    with bundle.open_cells() as cells:
        for item in (0, 17, 59):
            info = client.get(f"/iiif/test/items/{item}/info.json").get_json()
            assert info["id"] == f"http://localhost/iiif/test/items/{item}"
            assert info["sizes"] == [{"width": cell, "height": cell}]
            for size in ("max", f"{cell},{cell}", f"{cell},"):
                data = client.get(f"/iiif/test/items/{item}/full/{size}/0/default.jpg").data
                assert data == cells.read_encoded(item)


def test_manifest_has_one_map_canvas_and_paged_item_annotations(client, server_bundle):
    manifest = read_manifest(server_bundle)
    document = client.get("/iiif/test/manifest.json").get_json()
    assert document["type"] == "Manifest" and len(document["items"]) == 1
    canvas = document["items"][0]
    assert (canvas["width"], canvas["height"]) == (manifest["tiles"]["width"],
                                                   manifest["tiles"]["height"])
    body = canvas["items"][0]["items"][0]["body"]
    assert body["service"][0]["id"] == "http://localhost/iiif/test/map"
    pages = canvas["annotations"]
    assert [p["type"] for p in pages] == ["AnnotationPage"] and "items" not in pages[0]
    page = client.get(pages[0]["id"].removeprefix("http://localhost")).get_json()
    positions = np.load(server_bundle / "positions.npy")
    cell = manifest["grid"]["cell_size"]
    assert len(page["items"]) == manifest["counts"]["items"]
    with (server_bundle.parent / "test" / "metadata.sqlite").open("rb"):
        pass
    for annotation in page["items"]:
        item = int(annotation["id"].rsplit("/", 1)[1])
        row, col = positions[item]
        assert annotation["target"] == (f"{canvas['id']}#xywh={col * cell},{row * cell},"
                                        f"{cell},{cell}")
        assert annotation["thumbnail"][0]["service"][0]["id"].endswith(f"/items/{item}")
    titles = {a["label"]["none"][0] for a in page["items"]}
    assert "red tile 3" in titles and len(titles) == manifest["counts"]["items"]


def test_item_manifest_carries_the_csv_columns(client):
    document = client.get("/iiif/test/items/0/manifest.json").get_json()
    assert document["label"] == {"none": ["blue tile 0"]}
    pairs = {m["label"]["none"][0]: m["value"]["none"][0] for m in document["metadata"]}
    assert pairs["category"] == "blue" and pairs["parity"] == "even"
    assert document["items"][0]["items"][0]["items"][0]["body"]["id"].endswith(
        "/items/0/full/max/0/default.jpg")


def test_annotation_pages_split_and_link(server_bundle):
    bundle = Bundle.open(server_bundle)
    document = iiif.build_manifest(bundle, BASE, page_size=25)
    assert len(document["items"][0]["annotations"]) == 3  # 60 items, 25 a page
    pages = [iiif.build_annotation_page(bundle, BASE, k, 25) for k in range(3)]
    assert [len(p["items"]) for p in pages] == [25, 25, 10]
    assert pages[0]["next"] == pages[1]["id"] and pages[2]["prev"] == pages[1]["id"]
    with pytest.raises(IndexError):
        iiif.build_annotation_page(bundle, BASE, 3, 25)


def test_static_copy_matches_what_the_server_serves(client, server_bundle, tmp_path):
    site = tmp_path / "site" / "iiif" / "test"
    sizes = write_iiif(server_bundle, site, BASE)
    n_items = read_manifest(server_bundle)["counts"]["items"]
    info = json.loads((site / "map" / "info.json").read_text())
    served = client.get("/iiif/test/map/info.json").get_json()
    assert info == served  # same id (BASE is the test client's), tiles, sizes and max
    for path, *_ in _tile_urls(info):
        static = np.asarray(Image.open(site / "map" / path), dtype=np.int16)
        dynamic = np.asarray(Image.open(io.BytesIO(client.get(f"/iiif/test/map/{path}").data)),
                             dtype=np.int16)
        assert static.shape == dynamic.shape, path
        assert np.abs(static - dynamic).mean() < 2.0, path  # the same pixels, cut twice
    assert (site / "map" / "full" / "max" / "0" / "default.jpg").is_file()
    assert json.loads((site / "manifest.json").read_text()) == \
        client.get("/iiif/test/manifest.json").get_json()
    assert json.loads((site / "items" / "5" / "manifest.json").read_text()) == \
        client.get("/iiif/test/items/5/manifest.json").get_json()
    per_item = (sizes["annotations"] + sizes["items"]) / n_items
    print(f"IIIF bytes per item: annotations {sizes['annotations'] / n_items:.0f}, "
          f"item files {sizes['items'] / n_items:.0f}; manifest {sizes['manifest']}")
    assert sizes["manifest"] < 3000 and per_item < 20_000


VALIDATOR_TESTS = ["info_json", "id_basic", "format_jpg"]


@pytest.mark.parametrize("identifier", ["map", "items/3"])
def test_iiif_validator_passes_at_level_0(live_server, identifier):
    """The consortium's validator over loopback, Image API 3.0, level 0's tests.

    Level 0's fourth test (id_squares) checks the colours of the consortium's own test
    image (a 10 x 10 pattern) and so runs only against that image: see
    test_iiif_validator_on_its_test_image."""
    script = shutil.which("iiif-validate.py", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.fail("iiif-validator is not installed: make install (requirements-dev.txt)")
    host = live_server.removeprefix("http://")
    prefix = "iiif/test" + ("/items" if "/" in identifier else "")
    result = subprocess.run(
        [sys.executable, script, "-s", host, "-p", prefix, "-i", identifier.split("/")[-1],
         "--version=3.0", "--level=0", *(f"--test={t}" for t in VALIDATOR_TESTS)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout.upper().replace("FAILED 0", ""), result.stdout


def test_iiif_validator_passes_on_the_published_site(server_bundle, tmp_path):
    """The same validator against a published site's static level-0 map and an item,
    served by ``python -m http.server`` under a prefix (no server code)."""
    script = shutil.which("iiif-validate.py", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.fail("iiif-validator is not installed: make install (requirements-dev.txt)")
    port = free_port()
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "run.py"), "-q", "publish", "--id", "test", "--out",
         str(server_bundle.parent), "--to", "www/pub/test", "--base-url",
         f"http://127.0.0.1:{port}/pub/test/"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with static_host(tmp_path / "www", "pub/test/iiif/map/info.json", port):
        for prefix, identifier in (("pub/test/iiif", "map"), ("pub/test/iiif/items", "3")):
            result = subprocess.run(
                [sys.executable, script, "-s", f"127.0.0.1:{port}", "-p", prefix,
                 "-i", identifier, "--version=3.0", "--level=0",
                 *(f"--test={t}" for t in VALIDATOR_TESTS)],
                capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "FAIL" not in result.stdout.upper().replace("FAILED 0", ""), result.stdout
