"""Index stage, part 1: annoy nearest-neighbour indexes, one per embedding.

annoy stores neither the dimension nor the metric, so both go in the manifest,
with the ``search_k`` that this module picks by measuring recall.
"""

from __future__ import annotations

import numpy as np
from annoy import AnnoyIndex

RECALL_TARGET = 0.95
RECALL_K = 20
RECALL_SAMPLE = 200
SEARCH_K_CANDIDATES = (-1, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)


def build_annoy(vectors: np.ndarray, metric: str, n_trees: int = 20,
                random_state: int = 0) -> AnnoyIndex:
    """An annoy index over the rows of ``vectors``; annoy id = item id."""
    index = AnnoyIndex(vectors.shape[1], metric)
    index.set_seed(random_state)
    for item, vector in enumerate(vectors):
        index.add_item(item, vector.tolist())
    index.build(n_trees, n_jobs=1)
    return index


def exact_neighbors(vectors: np.ndarray, query: np.ndarray, k: int,
                    metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force k nearest rows of ``vectors`` to ``query``: (ids, distances).

    Distances follow annoy's definitions: euclidean, or for ``angular``
    sqrt(2 - 2 cos).
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    query = np.asarray(query, dtype=np.float32)
    if metric == "angular":
        norms = np.linalg.norm(vectors, axis=1) * (np.linalg.norm(query) or 1.0)
        cosine = vectors @ query / np.where(norms > 0, norms, 1.0)
        distances = np.sqrt(np.maximum(2.0 - 2.0 * cosine, 0.0))
    else:
        distances = np.linalg.norm(vectors - query, axis=1)
    k = min(k, len(vectors))
    nearest = np.argpartition(distances, k - 1)[:k]
    nearest = nearest[np.argsort(distances[nearest], kind="stable")]
    return nearest, distances[nearest]


def choose_search_k(index: AnnoyIndex, vectors: np.ndarray, metric: str,
                    random_state: int = 0) -> tuple[int, float]:
    """The smallest candidate search_k whose recall@20 reaches RECALL_TARGET.

    Recall is measured against brute force on a sample of items. Returns
    (search_k, recall); the largest candidate if none reaches the target.
    """
    n_items = len(vectors)
    k = min(RECALL_K, n_items)
    rng = np.random.default_rng(random_state)
    sample = np.sort(rng.choice(n_items, size=min(RECALL_SAMPLE, n_items), replace=False))
    truth = [set(row.tolist()) for row in _exact_knn_of_rows(vectors, sample, k, metric)]
    recall = 0.0
    for search_k in SEARCH_K_CANDIDATES:
        hits = sum(len(truth_set & set(index.get_nns_by_item(int(i), k, search_k=search_k)))
                   for i, truth_set in zip(sample, truth))
        recall = hits / (k * len(sample))
        if recall >= RECALL_TARGET:
            return search_k, recall
    return SEARCH_K_CANDIDATES[-1], recall


def _exact_knn_of_rows(vectors: np.ndarray, rows: np.ndarray, k: int, metric: str,
                       chunk: int = 4_096) -> np.ndarray:
    """Brute-force k nearest ids of ``vectors[rows]``, scanning ``vectors`` in chunks.

    Each chunk's own top k is merged into the running top k, so memory is
    (len(rows) x chunk) whatever N is; ``vectors`` may be a memmap.
    """
    queries = np.asarray(vectors[rows], dtype=np.float32)
    if metric == "angular":
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    best_ids = np.empty((len(rows), 0), dtype=np.int64)
    best_distances = np.empty((len(rows), 0), dtype=np.float32)
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start:start + chunk], dtype=np.float32)
        if metric == "angular":
            block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
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
