"""Tiles, grid, thumbnails, overview, pages and static files."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import pyvips

from mosaic.bundle import open_cells
from server import STATIC_DIR, create_app

pytest_plugins = ["server_fixtures"]

FILES = "/collections/test"
YEAR = 365 * 24 * 3600


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def test_dzi_matches_the_manifest(client, server_bundle):
    tiles = manifest_of(server_bundle)["tiles"]
    response = client.get(f"{FILES}/tiles/map.dzi")
    assert response.status_code == 200 and response.mimetype == "application/xml"
    root = ET.fromstring(response.data)
    size = root.find("{*}Size")
    assert int(size.get("Width")) == tiles["width"] and int(size.get("Height")) == tiles["height"]
    assert int(root.get("TileSize")) == tiles["tile_size"]


def test_every_level_has_its_tiles_and_nothing_past_the_edge(client, server_bundle):
    tiles = manifest_of(server_bundle)["tiles"]
    size = tiles["tile_size"]
    for level in range(tiles["levels"]):
        scale = 2 ** (tiles["levels"] - 1 - level)
        width = -(-tiles["width"] // scale)
        height = -(-tiles["height"] // scale)
        cols, rows = -(-width // size), -(-height // size)
        last = client.get(f"{FILES}/tiles/map_files/{level}/{cols - 1}_{rows - 1}.jpg")
        assert last.status_code == 200 and last.mimetype == "image/jpeg"
        image = pyvips.Image.new_from_buffer(last.data, "")
        assert image.width == width - (cols - 1) * size
        past = client.get(f"{FILES}/tiles/map_files/{level}/{cols}_0.jpg")
        assert past.status_code == 404 and past.get_json()["ok"] is False


def test_tiles_are_cached_with_etags(client, server_bundle):
    version = client.get("/api/collections/test").get_json()["version"]
    plain = client.get(f"{FILES}/tiles/map_files/0/0_0.jpg")
    assert plain.cache_control.public and plain.cache_control.max_age == 3600
    etag = plain.headers["ETag"]
    assert etag
    again = client.get(f"{FILES}/tiles/map_files/0/0_0.jpg", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    versioned = client.get(f"{FILES}/tiles/map_files/0/0_0.jpg?v={version}")
    assert versioned.cache_control.max_age == YEAR and versioned.cache_control.immutable
    stale = client.get(f"{FILES}/tiles/map_files/0/0_0.jpg?v=old")
    assert stale.cache_control.max_age == 3600


@pytest.mark.parametrize("path", [
    "/collections/test/tiles/..%2fmanifest.json",
    "/collections/test/tiles/..%2f..%2ftest%2fmetadata.sqlite",
    "/collections/test/tiles/map_files/..%2f..%2fmanifest.json",
    "/collections/test/tiles/%2e%2e/manifest.json",
    "/collections/test/tiles/%2fetc%2fpasswd",
    "/collections/test/tiles//etc/passwd",
    "/collections/..%2ftest/tiles/map.dzi",
    "/collections/test/thumbs/..%2f0.jpg",
    "/static/js/..%2f..%2fserver%2f__init__.py",
    "/static/node_modules/openseadragon/package.json",
    "/static/openseadragon/..%2f..%2fpackage.json",
    "/static/package.json",
])
def test_traversal_is_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.get_json() == {"ok": False, "error": response.get_json()["error"],
                                   "status": 404}


def test_grid_maps_every_cell_to_its_item(client, server_bundle):
    manifest = manifest_of(server_bundle)
    response = client.get(f"{FILES}/grid.i32")
    assert response.status_code == 200
    n_rows, n_cols = manifest["grid"]["n_rows"], manifest["grid"]["n_cols"]
    assert response.headers["X-Grid-Shape"] == f"{n_rows},{n_cols}"
    grid = np.frombuffer(response.data, dtype="<i4").reshape(n_rows, n_cols)
    positions = np.load(server_bundle / "positions.npy")
    assert sorted(grid[grid >= 0].tolist()) == list(range(60))
    assert (grid[positions[:, 0], positions[:, 1]] == np.arange(60)).all()


def test_thumbnail_is_the_items_cell(client, server_bundle):
    manifest = manifest_of(server_bundle)
    cells = open_cells(server_bundle, manifest)
    for item_id in (0, 29, 59):
        response = client.get(f"{FILES}/thumbs/{item_id}.jpg")
        assert response.status_code == 200 and response.mimetype == "image/jpeg"
        image = pyvips.Image.new_from_buffer(response.data, "")
        assert (image.width, image.height) == (32, 32)
        decoded = image.numpy().astype(np.float64)
        assert np.abs(decoded.mean((0, 1)) - cells[item_id].mean((0, 1))).max() < 4
        assert response.cache_control.max_age == 3600
        again = client.get(f"{FILES}/thumbs/{item_id}.jpg",
                           headers={"If-None-Match": response.headers["ETag"]})
        assert again.status_code == 304


def test_overview_is_served(client, server_bundle):
    overview = manifest_of(server_bundle)["overview"]
    response = client.get(f"{FILES}/overview.jpg")
    image = pyvips.Image.new_from_buffer(response.data, "")
    assert (image.width, image.height) == (overview["width"], overview["height"])


def test_pages_and_every_asset_they_reference_load(client):
    for page in ("/", "/c/test"):
        response = client.get(page)
        assert response.status_code == 200 and response.mimetype == "text/html"
        html = response.get_data(as_text=True)
        references = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
        assert references
        for url in references:
            assert client.get(url).status_code == 200, url


def test_every_module_import_resolves(client):
    for path in (STATIC_DIR / "js").glob("*.js"):
        assert client.get(f"/static/js/{path.name}").status_code == 200
        for name in re.findall(r'from "\./([^"]+)"', path.read_text()):
            assert (STATIC_DIR / "js" / name).is_file(), f"{path.name} imports {name}"


def test_openseadragon_comes_from_the_pinned_npm_package(client):
    package = json.loads((STATIC_DIR / "package.json").read_text())
    pinned = package["dependencies"]["openseadragon"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), "pin an exact version"
    lock = json.loads((STATIC_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/openseadragon"]["version"] == pinned
    installed = STATIC_DIR / "node_modules" / "openseadragon"
    assert json.loads((installed / "package.json").read_text())["version"] == pinned, \
        "run `npm ci` in static/"
    response = client.get("/static/openseadragon/openseadragon.min.js")
    assert response.status_code == 200
    build = installed / "build" / "openseadragon"
    assert response.data == (build / "openseadragon.min.js").read_bytes()
    assert client.get("/static/openseadragon/images/zoomin_rest.png").status_code == 200
    assert not list(STATIC_DIR.glob("js/openseadragon*")), "never copy the library"


def test_missing_openseadragon_says_how_to_install(tmp_path, server_bundle):
    app = create_app({"TESTING": True, "MOSAIC_STATIC": str(tmp_path)},
                     out_dir=server_bundle.parent)
    response = app.test_client().get("/static/openseadragon/openseadragon.min.js")
    assert response.status_code == 404 and "npm ci" in response.get_json()["error"]


def test_viewer_code_never_writes_html():
    pattern = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write")
    for path in (STATIC_DIR / "js").glob("*.js"):
        assert not pattern.search(path.read_text()), f"{path.name} writes HTML"
