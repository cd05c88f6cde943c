"""Layout at scale: a full openTSNE fit against fit-on-a-sample plus placement.

Above ``reduce.TSNE_FIT_MAX`` items the pipeline fits openTSNE on a seeded
sample and places every other item with ``prepare_partial`` (at the median of
its nearest fitted neighbours). This measures what that costs, on the PCA
vectors of a real bundle (``scale_bench.py``'s images, raw embedding), at the
same sample fraction as 100k of 1M (default 10%):

- seconds of each variant;
- kNN preservation: for 2,000 query items, the share of their 10 nearest
  neighbours in PCA space that are among their 10 nearest on the 2-D layout;
- the same on a random layout (the negative control: about 10 / N).

    python bench/layout_sample_bench.py --bundle /work/scale/out/scale-100000 --n 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosaic.bundle import open_vectors, read_manifest  # noqa: E402
from mosaic.pipeline import reduce  # noqa: E402

K = 10
QUERIES = 2_000


def knn_preservation(high: np.ndarray, xy: np.ndarray, queries: np.ndarray) -> float:
    """Mean share of each query's K nearest neighbours in ``high`` kept among its K on ``xy``."""
    from sklearn.neighbors import NearestNeighbors

    def neighbours(points: np.ndarray) -> np.ndarray:
        index = NearestNeighbors(n_neighbors=K + 1).fit(points)
        return index.kneighbors(points[queries], return_distance=False)[:, 1:]

    a, b = neighbours(high), neighbours(xy)
    return float(np.mean([len(set(x) & set(y)) / K for x, y in zip(a, b)]))


def refine(high: np.ndarray, jobs: int) -> np.ndarray:
    """Sample + place (as the pipeline does, at ``reduce.TSNE_FIT_MAX``), then all items
    optimised from that start."""
    from openTSNE import TSNEEmbedding, affinity, initialization

    placed = reduce._opentsne(high, 30.0, "euclidean", 0, jobs)
    affinities = affinity.PerplexityBasedNN(high, perplexity=30, n_jobs=jobs, random_state=0)
    embedding = TSNEEmbedding(initialization.rescale(placed), affinities, n_jobs=jobs,
                              random_state=0)
    embedding.optimize(n_iter=125, exaggeration=12, momentum=0.5, inplace=True)
    embedding.optimize(n_iter=250, momentum=0.8, inplace=True)
    return np.asarray(embedding)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--n", type=int, default=100_000, help="items to use (the first N)")
    parser.add_argument("--fraction", type=float, default=0.1, help="sample share to fit")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--refine", action="store_true",
                        help="instead: sample + place, then optimise all items from there "
                             "(openTSNE's large-data recipe: affinities on all, "
                             "125 exaggerated + 250 plain iterations)")
    args = parser.parse_args()

    manifest = read_manifest(args.bundle)
    entry = next(e for e in manifest["embeddings"] if e["name"] == manifest["layout"]["embedding"])
    vectors = open_vectors(args.bundle, entry)
    n = min(args.n, vectors.shape[0])
    started = time.perf_counter()
    high = reduce.reduce_pca(vectors[:n], manifest["layout"]["pca"] or vectors.shape[1])
    pca_s = time.perf_counter() - started
    queries = np.random.default_rng(1).choice(n, QUERIES, replace=False)
    results = {"bundle": str(args.bundle), "n": n, "dims": high.shape[1],
               "pca_s": round(pca_s, 1), "variants": {}}

    def record(label: str, fit_max: int, layout) -> None:
        reduce.TSNE_FIT_MAX = fit_max
        started = time.perf_counter()
        xy = layout()
        seconds = time.perf_counter() - started
        results["variants"][label] = {"fit_items": min(n, fit_max), "seconds": round(seconds, 1),
                                      "knn_preservation": round(knn_preservation(high, xy,
                                                                                 queries), 3)}
        print(label, results["variants"][label], flush=True)

    sample = int(n * args.fraction)
    if args.refine:
        record(f"sample {args.fraction:.0%} + place + refine all", sample,
               lambda: refine(high, args.jobs))
    else:
        pipeline_layout = lambda: reduce.layout_2d(high, n_jobs=args.jobs)  # noqa: E731
        record(f"sample {args.fraction:.0%} + place", sample, pipeline_layout)
        record("full fit", n, pipeline_layout)
    random_xy = np.random.default_rng(2).random((n, 2))
    results["variants"]["random layout (control)"] = {
        "knn_preservation": round(knn_preservation(high, random_xy, queries), 3)}
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
