"""Query by example on a warm server (issue 20, part 3): ``POST .../similar`` end to end
on a real bundle, and the neighbour-index query it makes, at 1M items.

- ``route``: the app (``server.create_app``, in process, warm: the first query is not
  counted) answers ``POST /api/collections/<id>/similar`` for each image of ``--images``
  (a list file of pictures that are not in the bundle), ``k`` = 20; the median and p95
  of the whole request, and of its two parts measured alone on the same images: the
  query's decode and vector (``decode.embed_query``) and the index query
  (``NeighborIndex.query_vector``).
- ``index``: an annoy index as the pipeline builds one for ``pixels`` (euclidean, 20
  trees) over ``--items`` SYNTHETIC 768-d vectors (drawn around 2,000 random centres,
  in [0, 1]: real pictures are clustered too), and one query's time at a few
  ``search_k`` (the pipeline picks the bundle's own; 2,000 at 100k and 300k).

    python bench/similar_bench.py route --out /work/bench-living100k/out --id full \\
        --images /work/bench-living100k/new.txt --n 200
    python bench/similar_bench.py index --items 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _stats(seconds: list[float]) -> dict:
    ms = sorted(1000 * s for s in seconds)
    return {"median_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1), "n": len(ms)}


def route(args) -> dict:
    from mosaic.bundle import Bundle, bundle_dir
    from mosaic.pipeline.decode import embed_query
    from server import EXACT_MAX, create_app

    paths = [line.strip() for line in Path(args.images).read_text().splitlines()
             if line.strip()][:args.n + 1]
    client = create_app({"TESTING": True}, out_dir=args.out).test_client()
    url = f"/api/collections/{args.id}/similar"
    whole = []
    for number, path in enumerate(paths):
        with open(path, "rb") as handle:
            begin = time.perf_counter()
            response = client.post(url, data={"image": (handle, Path(path).name), "k": "20"},
                                   content_type="multipart/form-data")
            elapsed = time.perf_counter() - begin
        assert response.status_code == 200, response.get_json()
        if number:  # the first loads the index and warms the worker
            whole.append(elapsed)
    bundle = Bundle.open(bundle_dir(args.out, args.id))
    embedding = bundle.embeddings[0]
    vectors, embed = [], []
    for path in paths[1:]:
        begin = time.perf_counter()
        vectors.append(embed_query(path, bundle, embedding))
        embed.append(time.perf_counter() - begin)
    from server.bundles import ServedBundle

    served = ServedBundle(cid=args.id, model=bundle, exact_max=EXACT_MAX)
    index = served.neighbor_index(embedding.name)
    index.query_vector(vectors[0], 20)  # loads the index
    query = []
    for vector in vectors:
        begin = time.perf_counter()
        index.query_vector(vector, 20)
        query.append(time.perf_counter() - begin)
    return {"what": "route", "bundle": args.id, "items": bundle.counts.items,
            "embedding": embedding.name, "search_k": embedding.search_k,
            "request": _stats(whole), "embed_query": _stats(embed),
            "index_query": _stats(query), "index_method": index.method}


def index(args) -> dict:
    from annoy import AnnoyIndex

    rng = np.random.default_rng(0)
    dim = 768
    centres = rng.random((2000, dim), dtype=np.float32)
    result = {"what": "index", "items": args.items, "dim": dim, "synthetic": True}
    start = time.perf_counter()
    built = AnnoyIndex(dim, "euclidean")
    built.set_seed(0)
    for first in range(0, args.items, 100_000):
        count = min(100_000, args.items - first)
        block = np.clip(centres[rng.integers(0, len(centres), count)]
                        + 0.08 * rng.standard_normal((count, dim)).astype(np.float32), 0, 1)
        for offset, row in enumerate(block):
            built.add_item(first + offset, row)
    built.build(20, n_jobs=-1)
    with tempfile.TemporaryDirectory() as folder:  # memory-mapped, as the server has it
        path = os.path.join(folder, "pixels.ann")
        built.save(path)
        built.unload()
        result["build_s"] = round(time.perf_counter() - start, 1)
        loaded = AnnoyIndex(dim, "euclidean")
        loaded.load(path)
        queries = np.clip(centres[rng.integers(0, len(centres), 50)]
                          + 0.1 * rng.standard_normal((50, dim)).astype(np.float32), 0, 1)
        for search_k in args.search_k:
            times = []
            for query in queries:
                begin = time.perf_counter()
                loaded.get_nns_by_vector(query.tolist(), 20, search_k=search_k)
                times.append(time.perf_counter() - begin)
            result[f"search_k_{search_k}"] = _stats(times[1:])
        loaded.unload()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("route")
    one.add_argument("--out", required=True)
    one.add_argument("--id", required=True)
    one.add_argument("--images", required=True, help="a list file of query pictures")
    one.add_argument("--n", type=int, default=200)
    two = sub.add_parser("index")
    two.add_argument("--items", type=int, default=1_000_000)
    two.add_argument("--search-k", type=int, nargs="*", default=[2_000, 20_000])
    args = parser.parse_args()
    result = {"route": route, "index": index}[args.command](args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
