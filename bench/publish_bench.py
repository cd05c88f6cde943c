"""The static site's search at 100k and 1M items: bytes and latency, against SQLite over ranges.

For each N, a synthetic metadata.sqlite (the columns of bench/synth_bundle.py:
a 4-word ``description`` text, a ``category`` facet of 12 values, a ``year``;
titles ``item <id>``) is written with the pipeline's own writer, and the
site's data (mosaic.publish: items, titles, the sharded search index) from it.
Then, over loopback HTTP from ``python -m http.server``:

- **sharded index** (what the site uses): the viewer's StaticSource
  (static/js/source.js) under node, a cold cache per query: bytes fetched and
  wall time of ``search(filters, 48)`` (the match ids and the first 48 titles);
- **SQLite over HTTP ranges** (sql.js-httpvfs's model): the bytes SQLite reads
  from the file for the same query on a cold connection, measured as the
  ``rchar`` of /proc/self/io (every page SQLite reads is a ``pread``); the
  httpvfs would fetch at least these bytes as ranges, in at least as many
  round trips as the B-tree is deep;
- whether ``python -m http.server`` answers a Range request (it does not: 200
  and the whole file), which rules range-based readers out for that host.

    python bench/publish_bench.py --n 100000 1000000 --work /tmp/publish-bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mosaic.bundle import grid_shape  # noqa: E402
from mosaic.pipeline.metadata import ItemRecord, write_metadata_db  # noqa: E402
from mosaic.publish import write_items, write_search_index  # noqa: E402
from mosaic.query import parse_search_args, search_items  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("red green blue amber violet harbour mountain river forest desert city market "
         "portrait still life garden winter summer night morning bridge tower").split()
KINDS = {"description": "text", "category": "facet", "year": "year"}
COLUMNS = [{"name": k, "kind": v} for k, v in KINDS.items()]
QUERIES = ["q=harbour", "q=harbour mountain", "q=mount*", "category=cluster-03",
           "year_min=1990&year_max=1999", "q=river&category=cluster-07&year_min=2000",
           "q=item 123456"]
NODE = """
import { StaticSource } from "%s";
const [base, ...queries] = process.argv.slice(2);
const realFetch = globalThis.fetch;
let bytes = 0, requests = 0;
globalThis.fetch = async (url, options) => {
  const response = await realFetch(url, options);
  const body = await response.arrayBuffer();
  bytes += body.byteLength; requests += 1;
  return new Response(body, { status: response.status, statusText: response.statusText });
};
const out = { queries: {} };
{
  const source = new StaticSource(new URL(base));
  const info = await source.collection();
  await source.grid(info.grid_url);
  out.paint = bytes;
  await source.facets();
  out.before_search = bytes;
}
for (const query of queries) {
  const source = new StaticSource(new URL(base));
  await source.collection(); await source.facets();
  bytes = 0; requests = 0;
  const started = performance.now();
  const body = await source.search(new URLSearchParams(query), 48);
  const ms = performance.now() - started;
  out.queries[query] = { total: body.total, bytes, requests, ms };
}
console.log(JSON.stringify(out));
"""


def build(folder: Path, n: int, seed: int = 0) -> Path:
    """metadata.sqlite and a manifest's worth of fields for ``n`` synthetic items."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metadata.sqlite"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    n_rows, n_cols = grid_shape(n)
    labels = np.sort(rng.integers(0, 12, n))
    years = rng.integers(1850, 2025, n)
    words = rng.integers(0, len(WORDS), (n, 4))
    records = (ItemRecord(
        id=i, source=f"/synthetic/{i:07d}.jpg", row=i // n_cols, col=i % n_cols,
        x=(i % n_cols + 0.5) / n_cols, y=(i // n_cols + 0.5) / n_rows, title=f"item {i}",
        url=None, width=32, height=32,
        metadata={"description": " ".join(WORDS[w] for w in words[i]),
                  "category": f"cluster-{labels[i]:02d}", "year": str(years[i])})
        for i in range(n))
    write_metadata_db(path, records, KINDS)
    return path


def publish(db: Path, site: Path, n: int) -> dict:
    manifest = {"id": "bench", "title": "bench", "columns": COLUMNS, "facets": ["category"],
                "counts": {"items": n}}
    data = site / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    started = time.perf_counter()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        sizes = {"items": write_items(conn, manifest, data),
                 "search": write_search_index(conn, manifest, data)}
    sizes["seconds"] = round(time.perf_counter() - started, 1)
    from mosaic.publish import write_viewer
    sizes["viewer"] = write_viewer(ROOT / "static", site)
    n_rows, n_cols = grid_shape(n)
    from mosaic.publish import write_collection
    grid = {"n_rows": n_rows, "n_cols": n_cols, "cell_size": 32}
    write_collection({**manifest, "grid": grid, "embeddings": [],
                      "tiles": {"dzi": "tiles/map.dzi"}}, data, neighbors=False)
    (data / "grid.i32").write_bytes(b"\xff" * (4 * n_rows * n_cols))
    return sizes


def sqlite_bytes(db: Path, query: str) -> tuple[int, float, int]:
    """(bytes SQLite reads, seconds, matches) for ``query`` on a cold connection."""
    def rchar() -> int:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
        raise RuntimeError("no rchar in /proc/self/io")
    parsed = parse_search_args(dict(parse_qsl(query)), COLUMNS)
    before = rchar()
    started = time.perf_counter()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.execute("PRAGMA mmap_size = 0")
    total, ids = search_items(conn, parsed, limit=None)
    titles = conn.execute(f"SELECT title FROM items WHERE id IN "
                          f"({','.join(map(str, ids[:48])) or '-1'})").fetchall()
    seconds = time.perf_counter() - started
    conn.close()
    assert len(titles) == min(48, total)
    return rchar() - before, seconds, total


def range_answer(base: str, path: str) -> str:
    request = urllib.request.Request(base + path, headers={"Range": "bytes=0-99"})
    with urllib.request.urlopen(request) as response:
        return f"{response.status}, {len(response.read())} bytes for bytes=0-99"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/publish-bench"))
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    script = args.work / "search.mjs"
    args.work.mkdir(parents=True, exist_ok=True)
    script.write_text(NODE % (ROOT / "static" / "js" / "source.js").as_uri())
    results = {}
    for n in args.n:
        folder = args.work / f"n{n}"
        db = build(folder, n)
        sizes = publish(db, folder / "site", n)
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(args.port),
                                   "--bind", "127.0.0.1", "-d", str(folder)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{args.port}/"
            for _ in range(100):
                try:
                    urllib.request.urlopen(base, timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            done = subprocess.run(["node", str(script), base + "site/data/", *QUERIES],
                                  capture_output=True, text=True, timeout=600, check=True)
            static = json.loads(done.stdout)
            ranges = range_answer(base, "metadata.sqlite")
        finally:
            server.terminate()
            server.wait()
        sql = {q: sqlite_bytes(db, q) for q in QUERIES}
        results[n] = {"sizes": sizes, "static": static, "sqlite": sql, "range": ranges,
                      "db_bytes": db.stat().st_size,
                      "site_bytes": sum(p.stat().st_size for p in (folder / "site").rglob("*")
                                        if p.is_file())}
        report(n, results[n])
    (args.work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


def report(n: int, r: dict) -> None:
    s = r["static"]
    print(f"\n### {n:,} items\n")
    print(f"- metadata.sqlite {r['db_bytes'] / 1e6:.1f} MB; the site's data "
          f"{r['site_bytes'] / 1e6:.1f} MB (items {r['sizes']['items'] / 1e6:.1f}, "
          f"search index {r['sizes']['search'] / 1e6:.1f}), written in "
          f"{r['sizes']['seconds']} s")
    print(f"- the viewer (index.html, js, css, OpenSeadragon): "
          f"{r['sizes']['viewer'] / 1e3:.0f} KB, the same at any N")
    print(f"- data before first paint (collection.json + grid.i32): {s['paint'] / 1e3:.1f} KB; "
          f"before the first search (+ facets.json): {s['before_search'] / 1e3:.1f} KB")
    print(f"- `python -m http.server` and a Range request: {r['range']}\n")
    print("| query | matches | sharded: bytes | requests | ms | SQLite pages read: bytes | ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for query, q in s["queries"].items():
        read, seconds, total = r["sqlite"][query]
        assert total == q["total"], (query, total, q["total"])
        print(f"| `{query}` | {q['total']:,} | {q['bytes'] / 1e3:,.1f} KB | {q['requests']} | "
              f"{q['ms']:.0f} | {read / 1e3:,.1f} KB | {seconds * 1e3:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
