"""How well a grid keeps similar pictures side by side: the map-quality metrics.

One metric is the project's yardstick for every layout and grid figure:

- **grid P@10** (``grid_precision``): for a seeded sample of query items, the
  share of their 10 nearest neighbours in the layout embedding (exact, in
  PCA-50 space, the item itself excluded) that are among their 10 nearest
  cells on the final grid (Euclidean distance in cell units, ties broken by a
  seeded jitter). A random grid scores about 10 / N (the negative control).

With labels, ``label_agreement`` is the share of an item's 10 nearest cells
that hold an item of its own label.

Both are pure functions of arrays: the pipeline reports grid P@10 in the
manifest (``grid.quality``, ``grid_report``) and bench/ compares methods on the same items.
"""

from __future__ import annotations

import numpy as np

K = 10
N_QUERIES = 2_000
FEATURE_DIMS = 50  # "in PCA-50 space"
_JITTER = 1e-3  # cell units: breaks ties between equidistant cells, never reorders others


def query_ids(n_items: int, n_queries: int = N_QUERIES, random_state: int = 0) -> np.ndarray:
    """A sorted seeded sample of ``min(n_queries, n_items)`` item ids."""
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n_items, min(n_queries, n_items), replace=False))


def feature_neighbours(features: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Exact k nearest items (int64 (Q, k)) of each query in ``features`` (N, D), itself
    excluded; computed in blocks so memory stays O(Q x block)."""
    from mosaic.knn import exact_knn_of_rows

    found = exact_knn_of_rows(features, queries, k + 1, "euclidean")
    return _drop_self(found, queries, k)


def grid_neighbours(positions: np.ndarray, queries: np.ndarray, k: int = K,
                    random_state: int = 0) -> np.ndarray:
    """The k items (int64 (Q, k)) in the nearest cells to each query's cell on the grid
    (Euclidean in cell units, ties broken by a seeded jitter), itself excluded."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(random_state)
    points = np.asarray(positions, dtype=np.float64) + rng.uniform(-_JITTER, _JITTER,
                                                                   size=positions.shape)
    _, found = cKDTree(points).query(points[queries], k=k + 1)
    return _drop_self(found, queries, k)


def grid_precision(features: np.ndarray, positions: np.ndarray, k: int = K,
                   n_queries: int = N_QUERIES, random_state: int = 0) -> float:
    """Grid P@k: mean share of each query's k nearest items in ``features`` that are
    among its k nearest cells on ``positions`` (N, 2) (row, col).

    ``features`` should be the layout embedding in PCA-50 space (the first 50 PCA components).

    >>> rng = np.random.default_rng(0)
    >>> rows, cols = np.divmod(np.arange(400), 20)
    >>> positions = np.column_stack([rows, cols])
    >>> grid_precision(positions.astype(float), positions) > 0.9
    True
    >>> grid_precision(positions.astype(float), rng.permutation(positions)) < 0.1
    True
    """
    queries = query_ids(len(positions), n_queries, random_state)
    near = feature_neighbours(features, queries, k)
    return neighbour_precision(near, positions, queries, random_state)


def neighbour_precision(near: np.ndarray, positions: np.ndarray, queries: np.ndarray,
                        random_state: int = 0) -> float:
    """Grid P@k from precomputed feature neighbours ``near`` (Q, k) of ``queries``: the
    second half of ``grid_precision``, for callers that keep ``near`` between runs (the
    pipeline computes it with the layout and scores the grid after)."""
    k = near.shape[1]
    cells = grid_neighbours(positions, queries, k, random_state)
    return _overlap(near, cells, k)


def grid_report(near: np.ndarray, positions: np.ndarray, queries: np.ndarray,
                random_state: int = 0) -> dict:
    """The pipeline's quality record of a grid: its P@k and the same for a seeded random
    permutation of its cells (the negative control), rounded to 4 places."""
    shuffled = np.random.default_rng(random_state).permutation(positions)
    return {"grid_p10": round(neighbour_precision(near, positions, queries, random_state), 4),
            "random_p10": round(neighbour_precision(near, shuffled, queries, random_state), 4),
            "queries": int(len(queries)), "k": int(near.shape[1]),
            "feature_dims": int(FEATURE_DIMS)}


def label_agreement(labels: np.ndarray, positions: np.ndarray, k: int = K,
                    n_queries: int = N_QUERIES, random_state: int = 0) -> float:
    """Mean share of each query's k nearest cells holding an item of the query's label
    (queries without a label, code < 0, are left out)."""
    labels = np.asarray(labels)
    queries = query_ids(len(positions), n_queries, random_state)
    queries = queries[labels[queries] >= 0]
    cells = grid_neighbours(positions, queries, k, random_state)
    return float((labels[cells] == labels[queries][:, None]).mean())


def _drop_self(found: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Each row without the query itself (or without its last entry when absent)."""
    keep = found != queries[:, None]
    keep[keep.sum(axis=1) > k, -1] = False
    return found[keep].reshape(len(queries), k)


def _overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    hits = (np.sort(a, axis=1)[:, :, None] == np.sort(b, axis=1)[:, None, :]).any(axis=2)
    return float(hits.sum() / (len(a) * k))
