"""The published site's data (mosaic/publish.py) answers as the server does.

The search shards are read by the viewer's own StaticSource (static/js/source.js)
under node, over HTTP from the site, and every query's ids must equal
``mosaic.query.search_items`` on the same bundle, with the default shard sizes and
with a bundle cut into many text shards and numeric chunks; the stored neighbours
must equal the server's exact ones.
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import pytest
from server_data import write_collection
from static_host import static_host
from werkzeug.datastructures import MultiDict

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


# Many shards: a shard holds a few terms, a chunk 7 (value, id) pairs; weights repeat
# three times (one per colour), so equal values straddle chunk cuts.
SMALL_NUM_CHUNK = 7
SMALL_TEXT_SHARD_BYTES = 48
SHARDED_QUERIES = [
    # words, one or several, any case, accents folded as FTS5 folds them
    "q=red", "q=Green", "q=tile", "q=of", "q=7", "q=19", "q=red tile", "q=sample 3",
    "q=zzzz", "q=script", "q=quotes", "q=zurich", "q=Zürich", "q=東京", "q=alert 1",
    # prefixes, some across many shards
    "q=sam*", "q=1*", "q=t*", "q=r*", "q=b*", "q=gr*", "q=z*", "q=zz*", "q=red 1*",
    # facets and tags, one or several
    "category=blue", "meta.category=green", "parity=odd", "category=nope",
    "tags=prime", "tags=square", "tags=Zürich", "tags=東京", "tags=prime&tags=square",
    "tags=prime&tags=Zürich", "tags=nope", "meta.tags=square",
    # numeric ranges across chunk cuts, open on either side, empty, one value
    "year_min=1970", "year_max=1960", "year_min=1960&year_max=1990",
    "year_min=1990&year_max=1990", "weight_min=1.5&weight_max=3.25", "weight_max=0.5",
    "weight_min=5", "weight_min=2.1&weight_max=2.2", "weight_min=0&weight_max=100",
    # combinations
    "q=sample&category=red&year_max=1980", "q=b*&parity=odd",
    "tags=prime&category=green", "q=1*&weight_min=2&tags=square",
    "parity=even&year_min=1970&tags=Zürich", "q=tile&weight_min=1&weight_max=4&tags=prime",
]


def tags_of(index: int) -> str:
    """The tags of the ``index``-th item of a colour (several, one or none)."""
    tags = [name for name, holds in (("prime", index in (2, 3, 5, 7, 11, 13, 17, 19)),
                                     ("square", index in (0, 1, 4, 9, 16)),
                                     ("Zürich", index % 5 == 0), ("東京", index % 7 == 3))
            if holds]
    return "|".join(tags)


def serve_site(bundle: Path, folder: Path, **sizes: int):
    """Publish ``bundle`` into ``folder`` and serve it: a context giving the data URL."""
    write_site(bundle, folder, ROOT / "static", **sizes)
    return static_host(folder, "data/facets.json")


@pytest.fixture(scope="module")
def site(server_bundle, tmp_path_factory):
    """(site folder, its data URL) of the server tests' bundle, served on loopback."""
    folder = tmp_path_factory.mktemp("publish") / "site"
    with serve_site(server_bundle, folder) as root:
        yield folder, root + "data/"


@pytest.fixture(scope="module")
def tagged_bundle(tmp_path_factory) -> Path:
    """The server tests' collection plus a ``tags`` column, built by the CLI."""
    root = tmp_path_factory.mktemp("tagged")
    csv_path = write_collection(root / "images")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["tags"] = tags_of(int(row["filename"][:-4].split("_")[1]))
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    code = main(["-q", "pipeline", "--images", str(root / "images"), "--metadata",
                 str(csv_path), "--out", str(root / "out"), "--id", "tagged",
                 "--embedding", "raw", "--title", "{name}", "--cell-size", "16",
                 "--jobs", "1"])
    assert code == 0
    return root / "out" / "tagged"


@pytest.fixture(scope="module")
def sharded_site(tagged_bundle, tmp_path_factory):
    """(site folder, its data URL): ``tagged_bundle`` published into many small shards."""
    folder = tmp_path_factory.mktemp("sharded") / "site"
    with serve_site(tagged_bundle, folder, num_chunk=SMALL_NUM_CHUNK,
                    text_shard_bytes=SMALL_TEXT_SHARD_BYTES) as root:
        yield folder, root + "data/"


def expected(bundle: Path, query: str) -> list[int]:
    manifest = read_manifest(bundle)
    with sqlite3.connect(bundle / "metadata.sqlite") as conn:
        args = MultiDict(parse_qsl(query))  # a repeated tags=, as Flask's request.args
        parsed = parse_search_args(args, manifest["columns"])
        return search_items(conn, parsed)[1]


def assert_static_search_equals_the_servers(base: str, bundle: Path, queries: list[str],
                                            tmp_path: Path) -> set[int]:
    """StaticSource under node answers every query as search_items does; the totals."""
    if shutil.which("node") is None:
        pytest.fail("needs node (make install installs the npm packages with it)")
    script = tmp_path / "search.mjs"
    script.write_text(NODE_SCRIPT % (ROOT / "static" / "js" / "source.js").as_uri())
    done = subprocess.run(["node", str(script), base, *queries], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    totals = set()
    for query in queries:
        want = expected(bundle, query)
        assert found[query]["ids"] == want, query
        assert found[query]["total"] == len(want), query
        assert found[query]["page"] == want[:5], query
        totals.add(len(want))
    assert 0 in totals  # and the caller checks that the answers tell items apart
    return totals


def test_static_search_equals_the_servers(site, server_bundle, tmp_path):
    totals = assert_static_search_equals_the_servers(site[1], server_bundle, QUERIES,
                                                     tmp_path)
    assert len(totals) > 3
    assert max(totals) < read_manifest(server_bundle)["counts"]["items"]


def shard_terms(folder: Path) -> list[list[str]]:
    """The terms of each text shard ``search/t/<k>.bin``, in shard order."""
    shards = []
    for k in range(len(list(folder.glob("*.bin")))):
        body = (folder / f"{k}.bin").read_bytes()
        count, length = struct.unpack_from("<II", body)
        header = json.loads(body[8:8 + length])
        assert len(header) == count
        shards.append([term for term, _ in header])
    return shards


def test_static_search_over_many_shards_equals_the_servers(sharded_site, tagged_bundle,
                                                             tmp_path):
    folder, base = sharded_site
    search = folder / "data" / "search"
    index = json.loads((folder / "data" / "facets.json").read_text())["index"]
    # the files are many: every numeric column in several chunks, words in many shards
    assert len(index["numeric"]) == 2
    for column in index["numeric"]:
        chunks = sorted(search.glob(f"n{column['position']}/*.bin"))
        assert len(chunks) == len(column["chunks"]) > 1, column["name"]
        assert max(c[2] for c in column["chunks"]) == SMALL_NUM_CHUNK
    terms = shard_terms(search / "t")
    assert len(terms) == len(index["text"]) > 10
    assert [shard[0] for shard in terms] == index["text"]
    flat = [term for shard in terms for term in shard]
    assert flat == sorted(flat, key=str.encode) and len(flat) == len(set(flat))
    # a prefix query reads several shards; equal weights straddle a chunk cut
    assert len({k for k, shard in enumerate(terms) for t in shard if t.startswith("1")}) > 2
    weights = next(c for c in index["numeric"] if c["name"] == "weight")["chunks"]
    assert any(a[1] == b[0] for a, b in zip(weights, weights[1:]))
    assert any(c["kind"] == "tags" for c in index["facets"])
    assert len(SHARDED_QUERIES) >= 30
    totals = assert_static_search_equals_the_servers(base, tagged_bundle, SHARDED_QUERIES,
                                                     tmp_path)
    assert len(totals) > 15


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
