"""Nearest neighbours over one embedding of a bundle.

Small collections are searched exactly over ``embeddings/<name>.npy``
(read once as float32): for them one matrix-vector product is faster than
annoy and has perfect recall. Larger ones use the annoy index with the manifest's
``metric`` and ``search_k``. Distances are annoy's in both cases:
``angular`` = sqrt(2 - 2 cos), ``euclidean`` = L2, ``manhattan`` = L1,
``dot`` = the dot product (larger is nearer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mosaic.bundle import Embedding
from mosaic.knn import METRICS, exact_neighbors, row_norms


class NeighborIndex:
    """k-nearest-neighbour lookups for one embedding; safe to share between threads."""

    def __init__(self, bundle_path: Path, spec: Embedding, exact: bool,
                 removed: np.ndarray | None = None) -> None:
        self.name = spec.name
        self.metric = spec.metric
        if self.metric not in METRICS:
            raise ValueError(f"embedding {self.name!r} has unknown metric {self.metric!r}")
        self.dim = spec.dim
        self.search_k = spec.search_k
        vectors, index = spec.vectors, spec.index
        has_vectors = bool(vectors) and (bundle_path / vectors).is_file()
        has_index = bool(index) and (bundle_path / index).is_file()
        if not (has_vectors or has_index):
            raise FileNotFoundError(f"embedding {self.name!r} has neither vectors nor index")
        self.method = "exact" if (exact and has_vectors) or not has_index else "annoy"
        # removed items' vectors are zeros (the annoy index was rebuilt without them)
        self._removed = np.zeros(0, np.int64) if removed is None else removed
        if self.method == "exact":
            self._vectors = spec.open_vectors(bundle_path)[:]
            self._norms = row_norms(self._vectors) if self.metric in ("angular", "euclidean") \
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

    def query_vector(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items to a vector of this embedding (a query image's, from
        ``mosaic.pipeline.decode.embed_query``), nearest first: ``(ids, distances)``.
        Nothing is excluded: an image of the collection finds itself at distance 0."""
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape != (self.dim,):
            raise ValueError(f"embedding {self.name!r} has {self.dim} dimensions, "
                             f"not {vector.shape}")
        if self.method == "exact":
            return exact_neighbors(self._vectors, vector, k, self.metric, norms=self._norms,
                                   exclude=self._removed)
        ids, distances = self._annoy.get_nns_by_vector(
            vector.tolist(), k, search_k=self.search_k, include_distances=True)
        return np.array(ids, dtype=np.int64), np.array(distances, dtype=np.float64)

    def _exact(self, item_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_neighbors(self._vectors, self._vectors[item_id], k, self.metric,
                               exclude=np.append(self._removed, item_id), norms=self._norms)
