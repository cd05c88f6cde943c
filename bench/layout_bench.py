"""Layout and grid benchmark: which t-SNE backend, and where lap stops paying.

For each N, on clustered 256-d data: seconds and 10-NN label accuracy of each
reducer/backend; then the grid methods' seconds and mean displacement (cells).

    python bench/layout_bench.py --sizes 2000,5000 --grid-sizes 500,1000,2000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosaic.pipeline import reduce  # noqa: E402
from mosaic.pipeline.grid import assign_grid, grid_shape  # noqa: E402


def clustered(n: int, dim: int = 256, n_clusters: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(n_clusters, dim))
    labels = rng.integers(0, n_clusters, n)
    return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def knn_accuracy(xy: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    from sklearn.neighbors import NearestNeighbors

    _, nearest = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy)
    return float((labels[nearest[:, 1:]] == labels[:, None]).mean())


def displacement(xy: np.ndarray, positions: np.ndarray) -> float:
    n_rows, n_cols = grid_shape(len(xy))
    scaled = (xy - xy.min(0)) / np.ptp(xy, 0) * [n_cols, n_rows]
    return float(np.sqrt(((scaled - (positions[:, ::-1] + 0.5)) ** 2).sum(1)).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,5000")
    parser.add_argument("--grid-sizes", default="500,1000,2000")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        vectors, labels = clustered(n)
        for reducer, backend in (("tsne", "opentsne"), ("tsne", "multicore"),
                                 ("tsne", "sklearn"), ("umap", "-")):
            start = time.perf_counter()
            xy = reduce.layout_2d(vectors, reducer, backend if backend != "-" else "opentsne",
                                  n_jobs=args.jobs, random_state=0)
            seconds = time.perf_counter() - start
            print(json.dumps({"n": n, "reducer": reducer, "backend": backend,
                              "seconds": round(seconds, 1),
                              "knn_accuracy": round(knn_accuracy(xy, labels), 3)}), flush=True)
    for n in (int(s) for s in args.grid_sizes.split(",")):
        vectors, labels = clustered(n, dim=2, n_clusters=8)
        for method in ("lap", "rasterfairy"):
            start = time.perf_counter()
            positions, _ = assign_grid(vectors, method)
            print(json.dumps({"n": n, "grid": method,
                              "seconds": round(time.perf_counter() - start, 2),
                              "mean_displacement_cells": round(displacement(vectors, positions),
                                                               2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
