"""Index stage, part 1: annoy nearest-neighbour indexes, one per embedding.

annoy stores neither the dimension nor the metric, so both go in the manifest,
with the ``search_k`` that this module picks by measuring recall.
"""

from __future__ import annotations

import numpy as np
from annoy import AnnoyIndex

from mosaic.knn import exact_knn_of_rows

RECALL_TARGET = 0.95
RECALL_K = 20
RECALL_SAMPLE = 200
SEARCH_K_CANDIDATES = (-1, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)
ADD_BLOCK = 4_096


def build_annoy(vectors: np.ndarray, metric: str, n_trees: int = 20,
                random_state: int = 0, skip: np.ndarray | None = None) -> AnnoyIndex:
    """An annoy index over the rows of ``vectors`` (an array or a row reader such as
    ``mosaic.bundle.VectorRows``, read a block at a time); annoy id = item id. Rows
    where the boolean ``skip`` is set are left out (annoy never returns an id it was
    not given)."""
    index = AnnoyIndex(vectors.shape[1], metric)
    index.set_seed(random_state)
    for start in range(0, len(vectors), ADD_BLOCK):
        for offset, vector in enumerate(np.asarray(vectors[start:start + ADD_BLOCK])):
            if skip is None or not skip[start + offset]:
                index.add_item(start + offset, vector.tolist())
    index.build(n_trees, n_jobs=1)
    return index


def choose_search_k(index: AnnoyIndex, vectors: np.ndarray, metric: str,
                    random_state: int = 0) -> tuple[int, float]:
    """The smallest candidate search_k whose recall@20 reaches RECALL_TARGET.

    Recall is measured against brute force on a sample of items, the item itself
    left out of both lists (it is always found, so counting it would inflate
    recall by 1/k). Returns (search_k, recall); the largest candidate if none
    reaches the target.
    """
    n_items = len(vectors)
    k = min(RECALL_K, n_items - 1)
    if k < 1:
        return SEARCH_K_CANDIDATES[0], 1.0
    rng = np.random.default_rng(random_state)
    sample = np.sort(rng.choice(n_items, size=min(RECALL_SAMPLE, n_items), replace=False))
    # nearest first; without the item itself (or, where a twin at distance 0 pushed
    # it out, without the farthest), k each
    truth = [set([j for j in row.tolist() if j != i][:k]) for i, row in
             zip(sample, exact_knn_of_rows(vectors, sample, k + 1, metric))]
    recall = 0.0
    for search_k in SEARCH_K_CANDIDATES:
        hits = sum(len(truth_set & (set(index.get_nns_by_item(int(i), k + 1,
                                                              search_k=search_k)) - {int(i)}))
                   for i, truth_set in zip(sample, truth))
        recall = hits / (k * len(sample))
        if recall >= RECALL_TARGET:
            return search_k, recall
    return SEARCH_K_CANDIDATES[-1], recall
