"""Nearest neighbours over one embedding of a bundle.

Small collections are searched exactly over ``embeddings/<name>.npy``
(memory-mapped): for them one matrix-vector product is faster than annoy and
has perfect recall. Larger ones use the annoy index with the manifest's
``metric`` and ``search_k``. Distances are annoy's in both cases:
``angular`` = sqrt(2 - 2 cos), ``euclidean`` = L2, ``manhattan`` = L1,
``dot`` = the dot product (larger is nearer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

METRICS = ("angular", "euclidean", "manhattan", "dot")


class NeighborIndex:
    """k-nearest-neighbour lookups for one embedding; safe to share between threads."""

    def __init__(self, bundle_path: Path, spec: dict, exact: bool) -> None:
        self.name = spec["name"]
        self.metric = spec.get("metric", "angular")
        if self.metric not in METRICS:
            raise ValueError(f"embedding {self.name!r} has unknown metric {self.metric!r}")
        self.dim = int(spec["dim"])
        self.search_k = int(spec.get("search_k") or -1)
        vectors = spec.get("vectors")
        index = spec.get("index")
        has_vectors = bool(vectors) and (bundle_path / vectors).is_file()
        has_index = bool(index) and (bundle_path / index).is_file()
        if not (has_vectors or has_index):
            raise FileNotFoundError(f"embedding {self.name!r} has neither vectors nor index")
        self.method = "exact" if (exact and has_vectors) or not has_index else "annoy"
        if self.method == "exact":
            self._vectors = np.load(bundle_path / vectors, mmap_mode="r")
            self._norms = _row_norms(self._vectors) if self.metric in ("angular", "euclidean") \
                else None
        else:
            from annoy import AnnoyIndex

            self._annoy = AnnoyIndex(self.dim, self.metric)
            self._annoy.load(str(bundle_path / index))  # memory-mapped, shared page cache

    def query(self, item_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items to ``item_id``, itself excluded: ``(ids, distances)``."""
        if self.method == "exact":
            return self._exact(item_id, k)
        ids, distances = self._annoy.get_nns_by_item(
            item_id, k + 1, search_k=self.search_k, include_distances=True)
        pairs = [(i, d) for i, d in zip(ids, distances, strict=True) if i != item_id][:k]
        return (np.array([p[0] for p in pairs], dtype=np.int64),
                np.array([p[1] for p in pairs], dtype=np.float64))

    def _exact(self, item_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        distances = exact_distances(self._vectors, self._vectors[item_id], self.metric,
                                    self._norms)
        order_key = -distances if self.metric == "dot" else distances
        order_key[item_id] = np.inf
        k = min(k, len(distances) - 1)
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        candidates = np.argpartition(order_key, k - 1)[:k]  # self is inf, never chosen
        ranked = candidates[np.lexsort((candidates, order_key[candidates]))][:k]
        final = distances[ranked].astype(np.float64)
        if self.metric in ("euclidean", "angular"):
            # The norm expansion ranks fast but loses ~1e-4 to cancellation in float32;
            # the k distances returned are recomputed directly, in float64.
            final = _direct_distances(self._vectors[ranked], self._vectors[item_id],
                                      self.metric)
            order = np.lexsort((ranked, final))
            ranked, final = ranked[order], final[order]
        return ranked.astype(np.int64), final


def exact_distances(vectors: np.ndarray, query: np.ndarray, metric: str,
                    norms: np.ndarray | None = None) -> np.ndarray:
    """Annoy-compatible distances from ``query`` (dim,) to every row of ``vectors`` (N, dim)."""
    query = np.asarray(query, dtype=np.float32)
    if metric == "manhattan":
        return np.abs(np.asarray(vectors, np.float32) - query).sum(axis=1).astype(np.float64)
    dots = (vectors @ query).astype(np.float64)
    if metric == "dot":
        return dots
    if norms is None:
        norms = _row_norms(vectors)
    query_norm = float(np.linalg.norm(query.astype(np.float64)))
    if metric == "euclidean":
        return np.sqrt(np.maximum(norms ** 2 - 2 * dots + query_norm ** 2, 0.0))
    denominator = norms * query_norm
    cosine = np.divide(dots, denominator, out=np.zeros_like(dots), where=denominator > 0)
    return np.sqrt(np.maximum(2.0 - 2.0 * cosine, 0.0))


def _direct_distances(rows: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """Euclidean or angular distances of a few ``rows`` to ``query``, in float64."""
    rows, query = np.asarray(rows, np.float64), np.asarray(query, np.float64)
    if metric == "angular":
        rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-300)
        query = query / max(float(np.linalg.norm(query)), 1e-300)
    return np.linalg.norm(rows - query, axis=1)


def _row_norms(vectors: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    norms = np.empty(len(vectors), dtype=np.float64)
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start:start + chunk], dtype=np.float64)
        norms[start:start + chunk] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return norms
