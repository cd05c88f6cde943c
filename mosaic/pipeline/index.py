"""Index stage, part 1: annoy nearest-neighbour indexes, one per embedding.

annoy stores neither the dimension nor the metric, so both go in the manifest,
with the ``search_k`` that this module picks by measuring recall.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from mosaic.knn import exact_knn_of_rows

RECALL_TARGET = 0.95
RECALL_K = 20
RECALL_SAMPLE = 200
SEARCH_K_CANDIDATES = (-1, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)
ADD_BLOCK = 4_096
# Where an item's vector starts in its node of an annoy file (annoy 1.17: int32
# n_descendants, then int32 children[2], then for euclidean and manhattan a float offset;
# then the float32 vector). Nodes 0..n_items-1 are the items, in id order.
_VECTOR_OFFSET = {"angular": 12, "euclidean": 16, "manhattan": 16}


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


def drop_items(source: Path, target: Path, ids: np.ndarray, vectors: np.ndarray,
               metric: str) -> bool:
    """Write ``target``: the annoy index ``source`` with the items ``ids`` taken out,
    without building it again (seconds at 1M instead of minutes).

    Each item's node is zeroed, vector and all, as annoy leaves an id it was never
    given: a zeroed node has no descendants, so annoy never returns it (its search
    keeps only nodes with exactly one), and nothing of its vector stays in the file.
    The trees' split planes are left as they were; they are means over more than a
    leaf's worth of items. ``vectors`` (len(ids), dim) are the items' stored vectors:
    each node must hold them before it is zeroed, or nothing is written and False is
    returned (a file layout this function does not know: build the index again).
    """
    ids = np.asarray(ids, dtype=np.int64)
    vectors = np.asarray(vectors, dtype=np.float32)
    offset = _VECTOR_OFFSET.get(metric)
    if offset is None or not len(ids):
        return offset is not None
    dim = vectors.shape[1]
    node = offset + 4 * dim
    index = AnnoyIndex(dim, metric)
    index.load(str(source))
    n_items = index.get_n_items()
    index.unload()
    if source.stat().st_size % node:
        return False
    inside = ids < n_items  # ids above the last one annoy was given have no node
    ids, vectors = ids[inside], vectors[inside]
    with open(source, "rb") as handle:
        for item, vector in zip(ids.tolist(), vectors):
            stored = os.pread(handle.fileno(), node, item * node)
            held = int.from_bytes(stored[:4], "little") == 1 \
                and stored[offset:] == vector.tobytes()
            if not (held or not any(stored)):  # an item's node, or one zeroed before
                return False
    temporary = target.with_name(f".drop.{target.name}")
    shutil.copyfile(source, temporary)
    with open(temporary, "r+b") as handle:
        for item in ids.tolist():
            os.pwrite(handle.fileno(), bytes(node), item * node)
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    return True
