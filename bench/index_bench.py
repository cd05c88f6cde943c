"""Neighbour index at scale: annoy over the full vectors or over PCA-reduced ones.

On a finished bundle's embedding (e.g. ``scale_bench.py``'s 100k run), for each
dimension: IncrementalPCA fit + transform time, annoy build time and file
size, and recall@20 at each ``search_k`` candidate, measured against exact
neighbours in the FULL vector space (what the user asks for), on 200 items.

    python bench/index_bench.py /work/scale/out/scale-100000 --dims 0,128,64,32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosaic.bundle import open_vectors, read_manifest  # noqa: E402
from mosaic.knn import exact_knn_of_rows  # noqa: E402
from mosaic.pipeline.index import SEARCH_K_CANDIDATES, build_annoy  # noqa: E402
from mosaic.pipeline.reduce import reduce_pca  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--dims", default="0,128,64,32", help="0 = the full vectors")
    parser.add_argument("--n-trees", type=int, default=20)
    args = parser.parse_args()
    manifest = read_manifest(args.bundle)
    entry = manifest["embeddings"][0]
    vectors = open_vectors(args.bundle, entry)
    n = len(vectors)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(n, 200, replace=False))
    truth = [set(r.tolist()) for r in exact_knn_of_rows(vectors, sample, 20, entry["metric"])]
    for dim in (int(d) for d in args.dims.split(",")):
        started = time.perf_counter()
        data = vectors if dim == 0 else reduce_pca(vectors, dim)
        pca_s = time.perf_counter() - started
        started = time.perf_counter()
        index = build_annoy(data, entry["metric"], args.n_trees)
        build_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            index.save(os.path.join(tmp, "i.ann"))
            size = os.path.getsize(os.path.join(tmp, "i.ann"))
        recalls = {}
        for search_k in SEARCH_K_CANDIDATES:
            hits = sum(len(t & set(index.get_nns_by_item(int(i), 20, search_k=search_k)))
                       for i, t in zip(sample, truth))
            recalls[search_k] = round(hits / (20 * len(sample)), 3)
        print(json.dumps({"n": n, "dim": dim or int(vectors.shape[1]), "pca_s": round(pca_s, 1),
                          "build_s": round(build_s, 1), "bytes_per_item": round(size / n),
                          "recall_at_20": recalls}), flush=True)
        index.unload()
    return 0


if __name__ == "__main__":
    sys.exit(main())
