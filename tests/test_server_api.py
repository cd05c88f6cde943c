"""The JSON API through Flask's test client, on a bundle built by the pipeline."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3

import numpy as np
import pytest
from bundle_sql import col
from scipy.spatial.distance import cdist
from server_data import XSS_NAME, XSS_NOTES, collection_rows

from mosaic.bundle import open_vectors
from server import create_app

pytest_plugins = ["server_fixtures"]

BASE = "/api/collections/test"


def manifest_of(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def assert_error(response, status: int, contains: str = "") -> dict:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["ok"] is False and body["status"] == status
    assert isinstance(body["error"], str) and body["error"]
    assert contains.lower() in body["error"].lower()
    return body


def item_id_of(bundle, filename: str) -> int:
    with sqlite3.connect(bundle / "metadata.sqlite") as conn:
        return conn.execute("SELECT id FROM items WHERE filename = ?", (filename,)).fetchone()[0]


def test_collections_lists_only_finished_bundles(client, server_bundle):
    body = client.get("/api/collections").get_json()
    assert body["ok"] is True
    assert [c["id"] for c in body["collections"]] == ["test"]  # not unfinished/, not future/
    test = body["collections"][0]
    assert test["n_items"] == 60
    assert test["embeddings"] == ["raw"]
    assert test["facets"] == manifest_of(server_bundle)["facets"]
    assert test["url"] == "/c/test"
    assert client.get(test["overview"]).status_code == 200


def test_collections_of_a_missing_folder_is_empty(tmp_path):
    client = create_app({"TESTING": True}, out_dir=tmp_path / "nothing").test_client()
    assert client.get("/api/collections").get_json() == {"ok": True, "collections": []}


def test_collection_has_what_the_viewer_needs(client, server_bundle):
    manifest = manifest_of(server_bundle)
    body = client.get(BASE).get_json()
    assert body["grid"] == {k: manifest["grid"][k] for k in ("n_rows", "n_cols", "cell_size")}
    assert body["dzi"].startswith("/collections/test/tiles/map.dzi?v=")
    assert client.get(body["dzi"]).status_code == 200
    assert client.get(body["grid_url"]).status_code == 200
    assert body["thumbnail_url"].format(id=0) == "/collections/test/thumbs/0.jpg"
    assert body["embeddings"] == [{"name": "raw", "kind": "raw", "dim": 768,
                                   "metric": manifest["embeddings"][0]["metric"]}]
    assert body["hotspots"] == manifest["hotspots"] and len(body["hotspots"]) == 3
    assert body["display"] == manifest["display"]
    assert {c["name"] for c in body["columns"]} == {"name", "category", "parity", "year",
                                                   "weight", "notes"}


def test_item_has_row_col_title_url_and_all_metadata(client, server_bundle):
    positions = np.load(server_bundle / "positions.npy")
    rows = {row["filename"]: row for row in collection_rows()}
    for item_id in (0, 31, 59):
        body = client.get(f"{BASE}/items/{item_id}").get_json()
        assert body["id"] == item_id
        assert (body["row"], body["col"]) == tuple(positions[item_id])
        csv_row = rows[body["filename"]]
        assert body["title"] == csv_row["name"]
        assert body["url"] == f"https://example.org/items/{body['filename']}"
        assert body["thumbnail"] == f"/collections/test/thumbs/{item_id}.jpg"
        assert body["metadata"]["category"] == csv_row["category"]
        assert body["metadata"]["notes"] == csv_row["notes"]
        assert body["metadata"]["weight"] == pytest.approx(float(csv_row["weight"]))
        assert set(body["metadata"]) == set(csv_row) - {"filename"}


def test_xss_payload_round_trips_as_data(client, server_bundle):
    item_id = item_id_of(server_bundle, "red_07.png")
    response = client.get(f"{BASE}/items/{item_id}")
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["title"] == XSS_NAME
    assert body["metadata"]["name"] == XSS_NAME
    assert body["metadata"]["notes"] == XSS_NOTES
    exported = client.get(f"{BASE}/export.csv?q=script").get_data(as_text=True)
    assert XSS_NAME in exported


@pytest.mark.parametrize("url, status, message", [
    ("/api/collections/nope", 404, "nope"),
    ("/api/collections/unfinished", 404, "unfinished"),
    ("/api/collections/future", 404, "schema_version"),
    ("/api/collections/..%2fout", 404, ""),
    (f"{BASE}/items/60", 404, "item 60"),
    (f"{BASE}/items/-1", 404, ""),
    (f"{BASE}/items/abc", 404, ""),
    (f"{BASE}/items/99999999999999999999", 404, ""),
    ("/api/collections/nope/items/0", 404, "nope"),
    (f"{BASE}/items/0/neighbors?k=0", 400, "k must be between 1 and 500"),
    (f"{BASE}/items/0/neighbors?k=10000", 400, "k must be"),
    (f"{BASE}/items/0/neighbors?k=ten", 400, "k must be an integer"),
    (f"{BASE}/items/0/neighbors?k=2.5", 400, "integer"),
    (f"{BASE}/items/0/neighbors?embedding=vgg16", 400, "unknown embedding 'vgg16'"),
    (f"{BASE}/items/60/neighbors", 404, "item 60"),
    (f"{BASE}/search?colour=red", 400, "colour"),
    (f"{BASE}/search?year_min=soon", 400, "year_min must be a number"),
    (f"{BASE}/search?weight_max=nan", 400, "finite"),
    (f"{BASE}/search?name_min=3", 400, "name_min"),  # name is text, not numeric
    (f"{BASE}/search?limit=-1", 400, "limit"),
    (f"{BASE}/search?limit=1001", 400, "limit"),
    (f"{BASE}/search?offset=-5", 400, "offset"),
    (f"{BASE}/search?ids=some", 400, "ids"),
    (f"{BASE}/search?q=%22red&_searchmode=raw", 400, "full-text"),
    (f"{BASE}/search?q=red&_searchmode=regex", 400, "_searchmode"),
    (f"{BASE}/random?n=0", 400, "n must be"),
    (f"{BASE}/random?n=1001", 400, "n must be"),
    (f"{BASE}/random?seed=-1", 400, "seed"),
    (f"{BASE}/random?seed=x", 400, "seed"),
    (f"{BASE}/export.csv?bogus=1", 400, "bogus"),
    ("/api/nothing/here", 404, "/api/nothing/here"),
    ("/collections/test/thumbs/60.jpg", 404, "item 60"),
    ("/collections/nope/tiles/map.dzi", 404, "nope"),
    ("/c/nope", 404, "nope"),
])
def test_errors_have_one_json_shape(client, url, status, message):
    assert_error(client.get(url), status, message)


def test_method_not_allowed_is_json_and_keeps_allow(client):
    response = client.post("/api/collections")
    assert_error(response, 405, "POST")
    assert "GET" in response.headers["Allow"]


def test_unexpected_errors_are_json_500(server_bundle, monkeypatch):
    app = create_app({"TESTING": False}, out_dir=server_bundle.parent)
    from server import api

    monkeypatch.setattr(api, "_summary", lambda bundle: 1 / 0)
    assert_error(app.test_client().get("/api/collections"), 500, "internal")


def brute_force(vectors: np.ndarray, item_id: int, k: int, metric: str):
    if metric == "angular":
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        distances = cdist(unit[item_id:item_id + 1], unit)[0]
    else:
        distances = cdist(vectors[item_id:item_id + 1].astype(np.float64), vectors)[0]
    distances[item_id] = np.inf
    order = np.argsort(distances, kind="stable")[:k]
    return order, distances[order]


@pytest.mark.parametrize("exact_max", [5_000_000, 0], ids=["exact", "annoy"])
def test_neighbors_equal_brute_force(server_bundle, exact_max):
    app = create_app({"TESTING": True, "MOSAIC_EXACT_MAX": exact_max},
                     out_dir=server_bundle.parent)
    client = app.test_client()
    spec = manifest_of(server_bundle)["embeddings"][0]
    vectors = open_vectors(server_bundle, spec)[:].astype(np.float64)
    positions = np.load(server_bundle / "positions.npy")
    for item_id in (0, 17, 42, 59):
        body = client.get(f"{BASE}/items/{item_id}/neighbors?embedding=raw&k=10").get_json()
        assert body["method"] == ("exact" if exact_max else "annoy")
        assert body["metric"] == spec["metric"] and body["k"] == 10
        ids = [n["id"] for n in body["neighbors"]]
        distances = [n["distance"] for n in body["neighbors"]]
        assert item_id not in ids and len(set(ids)) == 10
        assert distances == sorted(distances)
        expected_ids, expected = brute_force(vectors, item_id, 10, spec["metric"])
        assert ids == expected_ids.tolist()
        assert distances == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-4)
        for n in body["neighbors"]:
            assert (n["row"], n["col"]) == tuple(positions[n["id"]])
            assert n["thumbnail"] == f"/collections/test/thumbs/{n['id']}.jpg"
            assert isinstance(n["title"], str)


def test_neighbors_default_embedding_and_largest_k(client):
    body = client.get(f"{BASE}/items/5/neighbors").get_json()
    assert body["embedding"] == "raw" and len(body["neighbors"]) == 20
    body = client.get(f"{BASE}/items/5/neighbors?k=500").get_json()
    assert len(body["neighbors"]) == 59  # every other item, never itself
    assert 5 not in {n["id"] for n in body["neighbors"]}


def test_neighbors_of_a_cluster_are_mostly_in_that_cluster(client, server_bundle):
    with sqlite3.connect(server_bundle / "metadata.sqlite") as conn:
        category = dict(conn.execute(f"SELECT id, {col(conn, 'category')} FROM metadata"))
    same = []
    for item_id in range(0, 60, 6):
        body = client.get(f"{BASE}/items/{item_id}/neighbors?k=5").get_json()
        same += [category[n["id"]] == category[item_id] for n in body["neighbors"]]
    assert np.mean(same) >= 0.9


def test_random_is_reproducible_with_a_seed_and_respects_filters(client):
    first = client.get(f"{BASE}/random?n=10&seed=7").get_json()
    again = client.get(f"{BASE}/random?n=10&seed=7").get_json()
    assert first["seed"] == 7 and first["items"] == again["items"]
    ids = [i["id"] for i in first["items"]]
    assert len(set(ids)) == 10 and all(0 <= i < 60 for i in ids)
    unseeded = client.get(f"{BASE}/random?n=3").get_json()
    assert isinstance(unseeded["seed"], int) and len(unseeded["items"]) == 3
    everything = client.get(f"{BASE}/random?n=1000&seed=1").get_json()
    assert sorted(i["id"] for i in everything["items"]) == list(range(60))
    red = client.get(f"{BASE}/random?n=50&seed=1&category=red").get_json()
    assert red["total"] == 20 and len(red["items"]) == 20
    titles = {i["title"] for i in red["items"]}
    assert all(t.startswith("red") or t == XSS_NAME for t in titles)


def test_facets_have_counts_and_numeric_ranges(client):
    body = client.get(f"{BASE}/facets").get_json()
    facets = {f["name"]: f["values"] for f in body["facets"]}
    assert facets["category"] == [{"value": v, "count": 20} for v in ("blue", "green", "red")]
    assert {v["value"]: v["count"] for v in facets["parity"]} == {"even": 30, "odd": 30}
    numeric = {n["name"]: n for n in body["numeric"]}
    years = [int(r["year"]) for r in collection_rows() if r["year"]]
    assert numeric["year"] == {"name": "year", "kind": "year", "min": min(years),
                               "max": max(years), "count": 59}
    assert numeric["weight"]["min"] == pytest.approx(0.5)
    assert numeric["weight"]["max"] == pytest.approx(5.25)


def test_export_csv_has_the_selection_with_all_metadata(client):
    response = client.get(f"{BASE}/export.csv?category=blue&parity=even")
    assert response.mimetype == "text/csv"
    assert 'filename="test.csv"' in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == 10
    assert [int(r["id"]) for r in rows] == sorted(int(r["id"]) for r in rows)
    assert {r["meta.category"] for r in rows} == {"blue"}
    assert {r["meta.parity"] for r in rows} == {"even"}
    csv_columns = [f"meta.{c}" for c in collection_rows()[0] if c != "filename"]
    assert list(rows[0]) == ["id", "row", "col", "x", "y", "title", "url", "filename",
                             *csv_columns]
    everything = client.get(f"{BASE}/export.csv").get_data(as_text=True)
    assert len(list(csv.DictReader(io.StringIO(everything)))) == 60


def test_a_rebuilt_bundle_is_reopened(server_bundle, tmp_path):
    shutil.copytree(server_bundle, tmp_path / "copy", ignore=shutil.ignore_patterns("cache"))
    client = create_app({"TESTING": True}, out_dir=tmp_path).test_client()
    first = client.get("/api/collections/copy").get_json()
    manifest_path = tmp_path / "copy" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["title"] = "Rebuilt"
    manifest_path.write_text(json.dumps(manifest))
    stat = manifest_path.stat()
    os.utime(manifest_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = client.get("/api/collections/copy").get_json()
    assert second["title"] == "Rebuilt" and second["version"] != first["version"]
    assert client.get(first["dzi"]).cache_control.max_age == 3600  # old version: short cache
