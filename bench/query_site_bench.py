"""Query by example in a published site at a realistic size: index bytes, the browser's
search time and its recall@10 against exact search in full dimension.

The index of a bundle's ``pixels`` (or ``raw``) embedding is written as ``run.py
publish`` writes it (``mosaic.publish.write_query_indexes``) into ``--work``, served by
``python -m http.server`` and searched in Debian chromium (Playwright) by the site's own
module (static/js/query_index.js). Queries are ``--queries`` items spread over the ids:
their stored vectors (what their own files give) and, for the end-to-end time, their
own files (decode, vector, search). Recall@10: the share of the exact 10 nearest in the
full 768 dimensions (numpy, float32) that the browser's top 10 holds.

    python bench/query_site_bench.py --bundle /work/bench-living100k/out/full \\
        --work /tmp/query-site-bench
"""

from __future__ import annotations

import argparse
import base64
import json
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from static_host import static_host  # noqa: E402

from mosaic.bundle import Bundle  # noqa: E402
from mosaic.publish import write_query_indexes  # noqa: E402

PAGE = "<!doctype html><meta charset=utf-8><title>bench</title>"
SEARCH = """async ([entry, queries, k]) => {
    const { loadIndex, searchIndex } = await import("./static/js/query_index.js");
    const source = {
        json: async (path) => (await fetch("data/" + path)).json(),
        bytes: async (path) => (await fetch("data/" + path)).arrayBuffer(),
    };
    let started = performance.now();
    const index = await loadIndex(source, entry);
    const load = performance.now() - started;
    const times = [], found = [];
    for (const query of queries) {
        started = performance.now();
        found.push(searchIndex(index, Uint8Array.from(query), k).map((r) => r.id));
        times.push(performance.now() - started);
    }
    return { load, times, found };
}"""
FILES = """async ([entry, files, k]) => {
    const { loadIndex, searchIndex } = await import("./static/js/query_index.js");
    const { decodeFile, queryVector } = await import("./static/js/query_vector.js");
    const source = {
        json: async (path) => (await fetch("data/" + path)).json(),
        bytes: async (path) => (await fetch("data/" + path)).arrayBuffer(),
    };
    const index = await loadIndex(source, entry);
    const times = [], found = [];
    for (const [name, data] of files) {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const started = performance.now();
        const image = await decodeFile(new File([bytes], name), index.meta.decode);
        const vector = queryVector(image, index.meta.kind, index.meta.decode);
        found.push(searchIndex(index, vector, k)[0].id);
        times.push(performance.now() - started);
    }
    return { times, found };
}"""


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    norms = (vectors * vectors).sum(axis=1)
    out = []
    for start in range(0, len(queries), 50):
        block = queries[start:start + 50]
        out.append(np.argsort(norms[None, :] - 2 * block @ vectors.T, axis=1)[:, :k])
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--embedding", default="pixels")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--files", type=int, default=20)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    bundle = Bundle.open(args.bundle)
    data = args.work / "data"
    data.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    size, entries = write_query_indexes(bundle, data)
    seconds = time.perf_counter() - started
    entry = next(e for e in entries if e["embedding"] == args.embedding)
    meta = json.loads((data / entry["url"]).read_text())
    e = meta["index"]["codes"]
    static = args.work / "static"
    if not static.exists():
        static.symlink_to(ROOT / "static")
    (args.work / "index.html").write_text(PAGE)
    embedding = bundle.embedding(args.embedding)
    stored = np.load(bundle.file(embedding.vectors), mmap_mode="r")
    n = len(stored)
    ids = np.linspace(0, n - 1, args.queries).round().astype(int)
    vectors = np.asarray(stored, dtype=np.float32)
    exact = exact_top(vectors, vectors[ids], 10)
    with sqlite3.connect(bundle.path / "metadata.sqlite") as conn:
        sources = dict(conn.execute("SELECT id, source FROM items"))
    file_ids = ids[:: max(1, len(ids) // args.files)][:args.files]
    files = [[Path(sources[int(i)]).name, base64.b64encode(Path(sources[int(i)]).read_bytes())
              .decode()] for i in file_ids]
    with static_host(args.work, "index.html") as root, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(root + "index.html")
        result = page.evaluate(SEARCH, [entry, stored[ids].tolist(), 10])
        by_file = page.evaluate(FILES, [entry, files, 10])
        browser.close()
    found = np.array(result["found"])
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
    report = {
        "bundle": str(args.bundle), "embedding": args.embedding, "items": n,
        "components": meta["index"]["components"], "codes": e,
        "index_bytes": size, "write_seconds": round(seconds, 1),
        "variance_kept": round(meta["index"]["variance_kept"], 3),
        "load_ms": round(result["load"], 1),
        "search_ms_median": round(float(np.median(result["times"])), 1),
        "search_ms_max": round(float(np.max(result["times"])), 1),
        "recall_at_10": round(float(recall), 3),
        "self_first": float(np.mean(found[:, 0] == ids)),
        "file_query_ms_median": round(float(np.median(by_file["times"])), 1),
        "file_self_first": float(np.mean(np.array(by_file["found"]) == file_ids)),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
