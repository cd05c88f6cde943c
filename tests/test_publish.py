"""The published site's data (mosaic/publish.py) answers as the server does.

The search shards are read by the viewer's own StaticSource (static/js/source.js)
under node, over HTTP from the site, and every query's ids must equal
``mosaic.query.search_items`` on the same bundle; the stored neighbours must
equal the server's exact ones.
"""

from __future__ import annotations

import functools
import json
import shutil
import sqlite3
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import pytest

from mosaic.bundle import open_vectors, read_manifest
from mosaic.cli.main import main
from mosaic.knn import exact_neighbors
from mosaic.publish import KNN_K, KNN_SHARD, write_site
from mosaic.query import parse_search_args, search_items

pytest_plugins = ["server_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
QUERIES = [
    "q=red", "q=RED", "q=sam*", "q=red sample", "q=zzzz", "q=number 7",
    "category=blue", "meta.category=green", "category=nope",
    "parity=even&year_min=1970", "weight_max=2", "weight_min=1.5&weight_max=3.25",
    "year_min=1990&year_max=1990", "q=sample&category=red&year_max=1980",
    "q=b*&parity=odd",
]
NODE_SCRIPT = """
import { StaticSource } from "%s";
const [base, ...queries] = process.argv.slice(2);
const source = new StaticSource(new URL(base));
await source.collection();
const out = {};
for (const query of queries) {
  const body = await source.search(new URLSearchParams(query), 5);
  out[query] = { total: body.total, ids: Array.from(body.ids), page: body.items.map((i) => i.id) };
}
console.log(JSON.stringify(out));
"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site(server_bundle, tmp_path_factory):
    """(site folder, its URL) of the server tests' bundle, served on loopback."""
    folder = tmp_path_factory.mktemp("publish") / "site"
    write_site(server_bundle, folder, ROOT / "static")
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/data/"
    server.shutdown()


def expected(bundle: Path, query: str) -> list[int]:
    manifest = read_manifest(bundle)
    with sqlite3.connect(bundle / "metadata.sqlite") as conn:
        parsed = parse_search_args(dict(parse_qsl(query)), manifest["columns"])
        return search_items(conn, parsed)[1]


def test_static_search_equals_the_servers(site, server_bundle, tmp_path):
    if shutil.which("node") is None:
        pytest.fail("needs node (make install installs the npm packages with it)")
    folder, base = site
    script = tmp_path / "search.mjs"
    script.write_text(NODE_SCRIPT % (ROOT / "static" / "js" / "source.js").as_uri())
    done = subprocess.run(["node", str(script), base, *QUERIES], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    totals = set()
    for query in QUERIES:
        want = expected(server_bundle, query)
        assert found[query]["ids"] == want, query
        assert found[query]["total"] == len(want)
        assert found[query]["page"] == want[:5]
        totals.add(len(want))
    assert len(totals) > 3  # the queries tell items apart (no trivially equal answers)
    assert 0 in totals and max(totals) < read_manifest(server_bundle)["counts"]["items"]


def test_facet_shards_hold_each_values_items(site, server_bundle):
    folder, _ = site
    facets = json.loads((folder / "data" / "facets.json").read_text())
    for facet, where in zip(facets["facets"], facets["index"]["facets"], strict=True):
        for v, entry in enumerate(facet["values"]):
            ids = np.fromfile(folder / "data" / "search" / f"f{where['position']}" / f"{v}.u32",
                              dtype="<u4")
            assert len(ids) == entry["count"]
            assert ids.tolist() == expected(server_bundle, f"{facet['name']}={entry['value']}")


def test_neighbour_shards_equal_exact_search(site, server_bundle):
    folder, _ = site
    manifest = read_manifest(server_bundle)
    n = manifest["counts"]["items"]
    for e, entry in enumerate(manifest["embeddings"]):
        vectors = open_vectors(server_bundle, entry)[:]
        for item in (0, 17, n - 1):
            body = (folder / "data" / "knn" / str(e) / f"{item // KNN_SHARD}.bin").read_bytes()
            rows = len(body) // (8 * KNN_K)
            ids = np.frombuffer(body, "<i4", rows * KNN_K).reshape(rows, KNN_K)
            distances = np.frombuffer(body, "<f4", rows * KNN_K, 4 * rows * KNN_K) \
                .reshape(rows, KNN_K)
            want_ids, want_d = exact_neighbors(vectors, vectors[item], KNN_K, entry["metric"],
                                               exclude=item)
            row = item % KNN_SHARD
            assert ids[row, :len(want_ids)].tolist() == want_ids.tolist()
            assert np.allclose(distances[row, :len(want_ids)], want_d, rtol=1e-5)
            assert item not in ids[row].tolist()


def test_first_paint_needs_no_file_that_grows_with_items(site, server_bundle):
    folder, _ = site
    collection = json.loads((folder / "data" / "collection.json").read_text())
    assert "items" not in collection and len(json.dumps(collection)) < 20_000
    page = (folder / "index.html").read_text()
    assert 'content="static"' in page and 'src="/' not in page and 'href="/' not in page
    assert (folder / "static" / "openseadragon" / "openseadragon.min.js").is_file()
    assert (folder / "data" / "tiles" / "map.dzi").is_file()


def test_publish_cli_refuses_a_missing_bundle(tmp_path, capsys):
    code = main(["publish", "--out", str(tmp_path), "--id", "nothing", "--to",
                 str(tmp_path / "site")])
    assert code == 2
    assert capsys.readouterr().err.startswith("Error: ")
    assert not (tmp_path / "site").exists()
