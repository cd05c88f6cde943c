"""Index stage, part 1: annoy nearest-neighbour indexes, one per embedding.

annoy stores neither the dimension nor the metric, so both go in the manifest,
with the ``search_k`` that this module picks by measuring recall.
"""

from __future__ import annotations

import functools
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex
from threadpoolctl import threadpool_limits

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
                random_state: int = 0, skip: np.ndarray | None = None,
                path: Path | None = None) -> AnnoyIndex:
    """An annoy index over the rows of ``vectors`` (an array or a row reader such as
    ``mosaic.bundle.VectorRows``, read a block at a time); annoy id = item id. Rows
    where the boolean ``skip`` is set are left out (annoy never returns an id it was
    not given).

    With ``path`` the index is built in that file (annoy's ``on_disk_build``; the file
    is emptied first) and is ready to query when this returns, with nothing to save:
    the same bytes as ``save`` writes, but its nodes are file pages that the kernel can
    write back and drop, not the process's own memory (3.3 GB at 1M x 768, which an
    in-memory build holds, plus annoy's growth margin, until it is saved)."""
    index = AnnoyIndex(vectors.shape[1], metric)
    index.set_seed(random_state)
    if path is not None:
        index.on_disk_build(str(path))
    for start in range(0, len(vectors), ADD_BLOCK):
        for offset, vector in enumerate(np.asarray(vectors[start:start + ADD_BLOCK])):
            if skip is None or not skip[start + offset]:
                index.add_item(start + offset, vector.tolist())
    index.build(n_trees, n_jobs=1)
    return index


def choose_search_k(index: AnnoyIndex, vectors: np.ndarray, metric: str,
                    random_state: int = 0,
                    truth: tuple[np.ndarray, list[set[int]]] | None = None
                    ) -> tuple[int, float]:
    """The smallest candidate search_k whose recall@20 reaches RECALL_TARGET.

    Recall is measured against brute force on a sample of items (``recall_truth``, or
    ``truth`` when the caller has it already), the item itself left out of both lists
    (it is always found, so counting it would inflate recall by 1/k). Returns
    (search_k, recall); the largest candidate if none reaches the target.
    """
    sample, truth_sets = truth or recall_truth(vectors, metric, random_state)
    if not len(sample):
        return SEARCH_K_CANDIDATES[0], 1.0
    k = len(truth_sets[0])
    recall = 0.0
    for search_k in SEARCH_K_CANDIDATES:
        hits = sum(len(truth_set & (set(index.get_nns_by_item(int(i), k + 1,
                                                              search_k=search_k)) - {int(i)}))
                   for i, truth_set in zip(sample, truth_sets))
        recall = hits / (k * len(sample))
        if recall >= RECALL_TARGET:
            return search_k, recall
    return SEARCH_K_CANDIDATES[-1], recall


def lists_recall(ids_rows, truth: tuple[np.ndarray, list[set[int]]]) -> float:
    """recall@20 of stored top-k lists (``ids_rows``, nearest first), against
    ``recall_truth``, as ``choose_search_k`` measures annoy's."""
    sample, truth_sets = truth
    if not len(sample):
        return 1.0
    k = len(truth_sets[0])
    found = ids_rows.read_rows(sample)[:, :k]
    return sum(len(t & set(row.tolist())) for t, row in zip(truth_sets, found)) \
        / (k * len(sample))


def recall_truth(vectors, metric: str, random_state: int = 0
                 ) -> tuple[np.ndarray, list[set[int]]]:
    """A seeded sample of ``RECALL_SAMPLE`` items and each one's exact ``RECALL_K``
    nearest (fewer in a tiny collection; none with a single item): without the item
    itself (or, where a twin at distance 0 pushed it out, without the farthest)."""
    n_items = len(vectors)
    k = min(RECALL_K, n_items - 1)
    if k < 1:
        return np.empty(0, dtype=np.int64), []
    rng = np.random.default_rng(random_state)
    sample = np.sort(rng.choice(n_items, size=min(RECALL_SAMPLE, n_items), replace=False))
    return sample, [set([j for j in row.tolist() if j != i][:k]) for i, row in
                    zip(sample, exact_knn_of_rows(vectors, sample, k + 1, metric))]


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


# -- every item's top-k list by a random-projection forest ---------------------------
# At 1M x 768 the lists through annoy (1M queries at search_k 5,000) took 936 s of the
# 1,071-s index stage for recall@20 0.981; the forest's matrix products reach about the
# same recall in about a third of the time (docs/scale.md, "The index stage at a
# million"). FOREST_TREES partitions whose leaves are compared whole, then
# FOREST_EXPANSIONS more in which each leaf is compared with its members' current
# FOREST_EXPAND_K nearest too (a neighbour's neighbour is likely a neighbour).
FOREST_TREES = 4
FOREST_EXPANSIONS = 4
FOREST_EXPAND_K = 10
FOREST_LEAF = 1_024
FOREST_BASIS = 64         # split directions: random mixes of the first principal axes
FOREST_PCA_SAMPLE = 20_000
FOREST_METRICS = ("euclidean", "angular")
# what decides the lists besides the vectors: the index stage's cache key holds it
FOREST_SETTINGS = {"trees": FOREST_TREES, "expansions": FOREST_EXPANSIONS,
                   "expand_k": FOREST_EXPAND_K, "leaf": FOREST_LEAF, "basis": FOREST_BASIS,
                   "pca_sample": FOREST_PCA_SAMPLE}


def forest_top_neighbors(vectors, metric: str, ids_rows, distance_rows, k: int,
                         n_jobs: int = 1, random_state: int = 0,
                         trees: int = FOREST_TREES, expansions: int = FOREST_EXPANSIONS,
                         leaf: int = FOREST_LEAF, expand_k: int = FOREST_EXPAND_K) -> None:
    """Every item's ``k`` nearest (the item itself excluded, nearest first, ``-1`` and
    ``inf`` past the others), written into the row files ``ids_rows`` (int32 (N, k))
    and ``distance_rows`` (float32 (N, k)), as ``mosaic.knn.iter_top_neighbors``
    yields them; euclidean or angular distances as annoy defines them.

    Each pass splits the items at the median of a random direction, level by level,
    into leaves of at most ``leaf``, and compares every leaf's members with each other
    by one matrix product (plus, in the ``expansions`` passes, with their current
    ``expand_k`` nearest); each item keeps the ``k`` nearest it has seen. ``vectors``
    (an array, or a row file such as ``mosaic.bundle.VectorRows``) and the two row
    files are memory-mapped: their pages are the page cache's, which the kernel can
    drop, and the process's own memory holds one leaf per thread and a few numbers per
    item. Leaves of a pass share no item and a leaf reads only its own members' lists,
    so the result does not depend on the order the ``n_jobs`` threads finish in."""
    if metric not in FOREST_METRICS:
        raise ValueError(f"the forest compares euclidean or angular vectors, not {metric!r}")
    matrix, scale = _mapped(vectors, "r"), getattr(vectors, "scale", None)
    ids_map, distance_map = _mapped(ids_rows, "r+"), _mapped(distance_rows, "r+")
    n_items = len(matrix)
    ids_map[:] = -1
    distance_map[:] = np.inf
    rng = np.random.default_rng(random_state)
    centre = np.zeros(matrix.shape[1], dtype=np.float32)

    def rows_of(members: np.ndarray) -> np.ndarray:
        rows = np.asarray(matrix[members], dtype=np.float32)
        if scale is not None:
            rows *= np.float32(scale)
        if metric == "angular":  # annoy's angular distance is the L2 of unit vectors
            rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        # centred (distances do not move): smaller norms, less float32 cancellation in
        # |a|^2 + |b|^2 - 2ab
        return rows - centre

    def compare(members: np.ndarray, expand: bool) -> None:
        rows = rows_of(members)
        ids, distances = ids_map[members], distance_map[members]
        if expand:
            nearest = np.take_along_axis(ids, np.argsort(distances, axis=1)[:, :expand_k], 1)
            others = np.union1d(members, nearest[nearest >= 0])
            columns = rows_of(others)
        else:
            others, columns = members, rows
        take = min(k, len(others) - 1)
        if take < 1:
            return
        squared = (np.einsum("ij,ij->i", rows, rows)[:, None]
                   + np.einsum("ij,ij->i", columns, columns)[None, :] - 2 * (rows @ columns.T))
        squared[np.arange(len(members)), np.searchsorted(others, members)] = np.inf
        found = np.argpartition(squared, take - 1, axis=1)[:, :take]
        ids_map[members], distance_map[members] = _merge(
            ids, distances, others[found].astype(np.int32),
            np.take_along_axis(squared, found, axis=1), k)

    basis, centre[:] = _split_basis(rows_of, n_items, rng)
    depth = max(0, int(np.ceil(np.log2(max(1, n_items) / leaf))))
    with ThreadPoolExecutor(max(1, n_jobs)) as pool, threadpool_limits(1, user_api="blas"):
        for number in range(trees + expansions):
            leaves = _leaves(_projections(rows_of, n_items, basis, rng, depth), leaf)
            list(pool.map(compare, leaves, [number >= trees] * len(leaves)))
    # squared distances, in no order -> distances, nearest first
    for start in range(0, n_items, 65_536):
        part = slice(start, min(start + 65_536, n_items))
        order = np.argsort(distance_map[part], axis=1, kind="stable")
        ids_map[part] = np.take_along_axis(ids_map[part], order, 1)
        distance_map[part] = np.sqrt(np.maximum(
            np.take_along_axis(distance_map[part], order, 1), 0))
    for mapped in (ids_map, distance_map):
        if isinstance(mapped, np.memmap):
            mapped.flush()


def _mapped(rows, mode: str) -> np.ndarray:
    """A row file (``mosaic.bundle.RowFile``: path, offset, shape, dtype) as a memmap;
    an array as it is."""
    if not hasattr(rows, "path"):
        return rows
    return np.memmap(rows.path, dtype=rows.dtype, mode=mode, offset=rows.offset,
                     shape=rows.shape)


def _split_basis(rows_of, n_items: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(basis (dim, FOREST_BASIS), mean (dim,))`` of a sample: its first principal
    axes, each times its singular value over the first's, so random mixes of them
    split along the directions the items spread in; and its mean."""
    sample = np.sort(rng.choice(n_items, min(FOREST_PCA_SAMPLE, n_items), replace=False))
    rows = rows_of(sample)
    mean = rows.mean(axis=0)
    _, values, axes = np.linalg.svd(rows - mean, full_matrices=False)
    width = min(FOREST_BASIS, len(values))
    basis = axes[:width].T * (values[:width] / max(values[0], 1e-12))
    return basis.astype(np.float32), mean.astype(np.float32)


def _projections(rows_of, n_items: int, basis: np.ndarray, rng: np.random.Generator,
                 depth: int) -> np.ndarray:
    """float32 (N, depth): every item on one random direction per level."""
    directions = (basis @ rng.standard_normal((basis.shape[1], depth))).astype(np.float32)
    out = np.empty((n_items, depth), dtype=np.float32)
    for start in range(0, n_items, 65_536):
        members = np.arange(start, min(start + 65_536, n_items))
        out[start:start + len(members)] = rows_of(members) @ directions
    return out


def _leaves(projections: np.ndarray, leaf: int) -> list[np.ndarray]:
    """Sorted id arrays: the items halved at the median of level l's projection, level
    by level, until no part holds more than ``leaf``."""
    parts = [np.arange(len(projections))]
    for level in range(projections.shape[1]):
        split = []
        for part in parts:
            if len(part) <= leaf:
                split.append(part)
                continue
            order = np.argsort(projections[part, level], kind="stable")
            half = len(part) // 2
            split += [np.sort(part[order[:half]]), np.sort(part[order[half:]])]
        parts = split
    return parts


def _merge(ids: np.ndarray, distances: np.ndarray, new_ids: np.ndarray,
           new_distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` smallest of its current and new candidates, each id once
    (compiled: a third of the forest's CPU at k = 90 was this merge in numpy). The
    k kept are the smallest by (distance, id), in that order: what two stable numpy
    argsorts, by id and then by distance, keep (tests/test_neighbors.py)."""
    out_ids = np.empty((len(ids), k), dtype=np.int32)
    out_distances = np.empty((len(ids), k), dtype=np.float32)
    _merge_kernel()(np.ascontiguousarray(ids, dtype=np.int32),
                    np.ascontiguousarray(distances, dtype=np.float32),
                    np.ascontiguousarray(new_ids, dtype=np.int32),
                    np.ascontiguousarray(new_distances, dtype=np.float32),
                    out_ids, out_distances)
    return out_ids, out_distances


@functools.cache
def _merge_kernel():
    """The numba-compiled ``_merge`` (compiled on first use; it releases the GIL, so the
    forest's threads merge at once)."""
    from numba import njit

    @njit(inline="always")
    def before(distance_a, id_a, distance_b, id_b):  # (distance, id) order
        return distance_a < distance_b or (distance_a == distance_b and id_a < id_b)

    @njit(inline="always")
    def insert(ids, distances, count, item, distance):  # into the sorted first count
        at = count
        while at > 0 and before(distance, item, distances[at - 1], ids[at - 1]):
            ids[at], distances[at] = ids[at - 1], distances[at - 1]
            at -= 1
        ids[at], distances[at] = item, distance
        return count + 1

    @njit(nogil=True)
    def merge(ids, distances, new_ids, new_distances, out_ids, out_distances):
        k = out_ids.shape[1]
        old_ids = np.empty(ids.shape[1], dtype=np.int32)
        old_distances = np.empty(ids.shape[1], dtype=np.float32)
        add_ids = np.empty(new_ids.shape[1], dtype=np.int32)
        add_distances = np.empty(new_ids.shape[1], dtype=np.float32)
        for row in range(ids.shape[0]):
            # the listed ones by (distance, id), by insertion: they come in that order
            listed = 0
            for j in range(ids.shape[1]):
                item, distance = ids[row, j], distances[row, j]
                if item >= 0:
                    listed = insert(old_ids, old_distances, listed, item, distance)
            # the new ones not listed yet, likewise
            added = 0
            for j in range(new_ids.shape[1]):
                item, distance = new_ids[row, j], new_distances[row, j]
                if listed >= k and not before(distance, item, old_distances[k - 1],
                                              old_ids[k - 1]):
                    continue  # k listed ones come first: it would not be kept
                seen = False
                for i in range(listed):
                    if old_ids[i] == item:
                        seen = True
                        break
                if not seen:
                    added = insert(add_ids, add_distances, added, item, distance)
            # the first k of both, merged; -1 (inf) past them
            a = b = 0
            for j in range(k):
                if a < listed and (b >= added or before(old_distances[a], old_ids[a],
                                                        add_distances[b], add_ids[b])):
                    out_ids[row, j], out_distances[row, j] = old_ids[a], old_distances[a]
                    a += 1
                elif b < added:
                    out_ids[row, j], out_distances[row, j] = add_ids[b], add_distances[b]
                    b += 1
                else:
                    out_ids[row, j], out_distances[row, j] = -1, np.inf

    return merge

