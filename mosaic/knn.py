"""Nearest neighbours with annoy's distance definitions: exact (numpy), and every
item's top-k list (exact or through an annoy index).

One implementation for both sides: the server answers small collections
exactly, the pipeline measures annoy's recall against it and stores every
item's ``TOP_K`` nearest in the bundle (``iter_top_neighbors``), which the
static site and ``add`` reuse. Distances: ``angular`` = sqrt(2 - 2 cos),
``euclidean`` = L2, ``manhattan`` = L1, ``dot`` = the dot product (larger is
nearer).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

METRICS = ("angular", "euclidean", "manhattan", "dot")
TOP_K = 50            # neighbours stored per item and embedding
TOP_BLOCK = 1_024     # items per block of iter_top_neighbors
# Exact top-k lists while N^2 * dim stays under this (a minute on two cores); annoy beyond.
EXACT_WORK = 5e10


def exact_is_cheap(n_items: int, dim: int, metric: str) -> bool:
    """Whether every item's exact top-k costs at most ``EXACT_WORK`` (and the metric has
    an exact implementation here)."""
    return metric in ("euclidean", "angular") and float(n_items) * n_items * dim <= EXACT_WORK


def iter_top_neighbors(vectors, index, metric: str, search_k: int = -1, k: int = TOP_K,
                       n_jobs: int = 1, block: int = TOP_BLOCK
                       ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Every item's ``k`` nearest, the item itself excluded, nearest first, as
    ``(start, ids int32 (b, k), distances float32 (b, k))`` for consecutive blocks of
    items from 0; ids -1 (distance inf) past the collection's other items.

    Exact (``exact_neighbors``, ``vectors`` read whole) where ``exact_is_cheap``;
    otherwise each item's list comes from the annoy ``index`` (``search_k`` as the
    manifest has it). Blocks run on ``n_jobs`` threads (numpy and annoy release the
    GIL), at most ``2 * n_jobs`` ahead of the consumer, so memory stays flat.
    """
    n_items, dim = vectors.shape
    k_found = min(k, n_items - 1)
    if exact_is_cheap(n_items, dim, metric):
        vectors = np.asarray(vectors[:], dtype=np.float32)
        norms = row_norms(vectors)

        def one(item: int) -> tuple[np.ndarray, np.ndarray]:
            return exact_neighbors(vectors, vectors[item], k_found, metric, exclude=item,
                                   norms=norms)
    else:
        def one(item: int) -> tuple[np.ndarray, np.ndarray]:
            found, dist = index.get_nns_by_item(item, k_found + 1, search_k=search_k,
                                                include_distances=True)
            pairs = [(i, d) for i, d in zip(found, dist, strict=True) if i != item][:k_found]
            return (np.array([p[0] for p in pairs], np.int64),
                    np.array([p[1] for p in pairs], np.float64))

    def run(start: int) -> tuple[int, np.ndarray, np.ndarray]:
        stop = min(start + block, n_items)
        ids = np.full((stop - start, k), -1, dtype=np.int32)
        distances = np.full((stop - start, k), np.inf, dtype=np.float32)
        for row, item in enumerate(range(start, stop)):
            found, dist = one(item)
            ids[row, :len(found)] = found
            distances[row, :len(found)] = dist
        return start, ids, distances

    # the blocks run on our own threads: BLAS's threads on top of them (OpenBLAS starts
    # one per core for each matrix-vector product) made the exact lists 5x slower in CPU
    # on 2 cores (docs/benchmarks.md, "The pipeline's duplicates stage")
    with ThreadPoolExecutor(max(1, n_jobs)) as pool, threadpool_limits(1, user_api="blas"):
        pending: deque = deque()
        for start in range(0, n_items, block):
            pending.append(pool.submit(run, start))
            if len(pending) >= 2 * max(1, n_jobs):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def drop_neighbors(ids: np.ndarray, distances: np.ndarray, gone: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Stored neighbour lists (int32 ids, -1 past the end; float32 distances) without
    the items where the boolean ``gone`` is set: the others move up in order, and each
    row ends with as many more -1 (distance inf) as it lost."""
    drop = (ids >= 0) & gone[np.clip(ids, 0, None)]
    keep = ~drop & (ids >= 0)
    order = np.argsort(~keep, axis=1, kind="stable")  # kept entries first, in order
    ids = np.take_along_axis(np.where(keep, ids, -1), order, axis=1).astype(np.int32)
    distances = np.take_along_axis(np.where(keep, distances, np.inf), order,
                                   axis=1).astype(np.float32)
    return ids, distances


def row_norms(vectors: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """float64 L2 norm of every row of ``vectors`` (N, dim), read ``chunk`` rows at a time."""
    norms = np.empty(len(vectors), dtype=np.float64)
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start:start + chunk], dtype=np.float64)
        norms[start:start + chunk] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return norms


def exact_distances(vectors: np.ndarray, query: np.ndarray, metric: str,
                    norms: np.ndarray | None = None) -> np.ndarray:
    """Distances from ``query`` (dim,) to every row of ``vectors`` (N, dim), float64 (N,).

    Euclidean and angular use the norm expansion (one matrix-vector product);
    pass ``norms`` (``row_norms(vectors)``) to reuse them across queries.
    """
    query = np.asarray(query, dtype=np.float32)
    if metric == "manhattan":
        return np.abs(np.asarray(vectors, np.float32) - query).sum(axis=1).astype(np.float64)
    dots = (vectors @ query).astype(np.float64)
    if metric == "dot":
        return dots
    if norms is None:
        norms = row_norms(vectors)
    query_norm = float(np.linalg.norm(query.astype(np.float64)))
    if metric == "euclidean":
        return np.sqrt(np.maximum(norms ** 2 - 2 * dots + query_norm ** 2, 0.0))
    denominator = norms * query_norm
    cosine = np.divide(dots, denominator, out=np.zeros_like(dots), where=denominator > 0)
    return np.sqrt(np.maximum(2.0 - 2.0 * cosine, 0.0))


def exact_neighbors(vectors: np.ndarray, query: np.ndarray, k: int, metric: str, *,
                    exclude: int | np.ndarray | None = None, norms: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``vectors`` nearest to ``query``: ``(ids int64, distances float64)``.

    Nearest first, ties by id. ``exclude`` (the query's own row, or an array
    of rows: removed items too) is never returned. The returned euclidean and
    angular distances are recomputed directly in float64: the norm expansion
    ranks fast but loses ~1e-4 to cancellation in float32.
    """
    distances = exact_distances(vectors, query, metric, norms)
    order_key = -distances if metric == "dot" else distances.copy()
    available = len(distances)
    if exclude is not None:
        excluded = np.unique(np.asarray(exclude, dtype=np.int64).reshape(-1))
        order_key[excluded] = np.inf
        available -= len(excluded)
    k = min(k, available)
    if k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    candidates = np.argpartition(order_key, k - 1)[:k]
    ranked = candidates[np.lexsort((candidates, order_key[candidates]))][:k]
    final = distances[ranked].astype(np.float64)
    if metric in ("euclidean", "angular"):
        final = _direct_distances(np.asarray(vectors[ranked]), query, metric)
        order = np.lexsort((ranked, final))
        ranked, final = ranked[order], final[order]
    return ranked.astype(np.int64), final


def exact_knn_of_rows(vectors: np.ndarray, rows: np.ndarray, k: int, metric: str,
                      chunk: int = 4_096) -> np.ndarray:
    """The ``k`` nearest ids (unordered, self included) of each of ``vectors[rows]``.

    Euclidean or angular. ``vectors`` is scanned ``chunk`` rows at a time and
    each chunk's top k merged into the running top k, so memory is
    ``len(rows) x chunk`` whatever N is; ``vectors`` may be a memmap.
    """
    if metric not in ("euclidean", "angular"):
        raise ValueError(f"exact_knn_of_rows supports euclidean and angular, not {metric!r}")
    queries = np.asarray(vectors[rows], dtype=np.float32)
    if metric == "angular":
        queries = _unit_rows(queries)
    best_ids = np.empty((len(rows), 0), dtype=np.int64)
    best_distances = np.empty((len(rows), 0), dtype=np.float32)
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start:start + chunk], dtype=np.float32)
        if metric == "angular":
            block = _unit_rows(block)
        distances = ((block ** 2).sum(axis=1)[None, :] - 2 * queries @ block.T
                     + (queries ** 2).sum(axis=1)[:, None])
        nearest = np.argpartition(distances, min(k, len(block)) - 1, axis=1)[:, :k]
        best_ids = np.concatenate([best_ids, nearest + start], axis=1)
        best_distances = np.concatenate(
            [best_distances, np.take_along_axis(distances, nearest, axis=1)], axis=1)
        keep = np.argpartition(best_distances, min(k, best_distances.shape[1]) - 1,
                               axis=1)[:, :k]
        best_ids = np.take_along_axis(best_ids, keep, axis=1)
        best_distances = np.take_along_axis(best_distances, keep, axis=1)
    return best_ids


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _direct_distances(rows: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """Euclidean or angular distances of a few ``rows`` to ``query``, in float64."""
    rows, query = np.asarray(rows, np.float64), np.asarray(query, np.float64)
    if metric == "angular":
        rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-300)
        query = query / max(float(np.linalg.norm(query)), 1e-300)
    return np.linalg.norm(rows - query, axis=1)


def pairwise_distances(rows: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """float32 (len(rows), len(queries)): euclidean or angular distances as annoy defines
    them (angular: the euclidean distance of the unit vectors, sqrt(2 - 2 cos))."""
    if metric not in ("euclidean", "angular"):
        raise ValueError(f"pairwise_distances supports euclidean and angular, not {metric!r}")
    rows = np.asarray(rows, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    if metric == "angular":
        rows, queries = _unit_rows(rows), _unit_rows(queries)
    squared = ((rows ** 2).sum(axis=1)[:, None] - 2 * rows @ queries.T
               + (queries ** 2).sum(axis=1)[None, :])
    return np.sqrt(np.maximum(squared, 0)).astype(np.float32)


def merge_neighbors(ids: np.ndarray, distances: np.ndarray, more_ids: np.ndarray,
                    more_distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored neighbour lists (int32 (b, k), -1 past the end; float32) with candidates
    ``more_ids`` (m,) at ``more_distances`` (b, m) taken in where nearer: each row's k
    nearest of both, nearest first (a stored entry before an equally near candidate)."""
    k = ids.shape[1]
    if more_distances.shape[1] > k:
        best = np.argpartition(more_distances, k - 1, axis=1)[:, :k]
    else:
        best = np.broadcast_to(np.arange(more_distances.shape[1]), more_distances.shape)
    all_ids = np.concatenate([ids, np.asarray(more_ids, np.int32)[best]], axis=1)
    all_distances = np.concatenate(
        [distances, np.take_along_axis(more_distances, best, axis=1).astype(np.float32)],
        axis=1)
    order = np.argsort(all_distances, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(all_ids, order, axis=1),
            np.take_along_axis(all_distances, order, axis=1))


def neighbors_of(vectors, index, items: np.ndarray, metric: str, search_k: int, k: int,
                 gone: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stored-list rows (int32 (len(items), k), -1 past the end; float32) of some
    ``items``: exact where ``exact_is_cheap``, else from the annoy ``index`` (built
    without the ``gone`` items) with ``search_k``; the item itself and the gone left out."""
    ids = np.full((len(items), k), -1, dtype=np.int32)
    distances = np.full((len(items), k), np.inf, dtype=np.float32)
    exact = exact_is_cheap(*vectors.shape, metric)
    if exact:
        matrix = np.asarray(vectors[:], dtype=np.float32)
        norms = row_norms(matrix)
        excluded = np.flatnonzero(gone)
    for row, item in enumerate(np.asarray(items).tolist()):
        if exact:
            found, dist = exact_neighbors(matrix, matrix[item], k, metric,
                                          exclude=np.append(excluded, item), norms=norms)
        else:
            found, dist = index.get_nns_by_item(item, k + 1, search_k=search_k,
                                                include_distances=True)
            pairs = [(i, d) for i, d in zip(found, dist, strict=True) if i != item][:k]
            found, dist = [p[0] for p in pairs], [p[1] for p in pairs]
        ids[row, :len(found)] = found
        distances[row, :len(found)] = dist
    return ids, distances
