"""Reduce stage: PCA, then a 2-D layout with t-SNE or UMAP.

Backends sit behind one function each; a missing optional package raises an
ImportError that says what to install.

A supervised layout (``--label-column``) hands UMAP the items' labels as
integer codes, ``fit(X, y=codes)``: items of one label are drawn together even
where their pixels are not. An item without a label has code -1, which UMAP
treats as unlabelled (semi-supervised: placed by its vector alone). t-SNE has
no supervised mode, so labels need ``reducer="umap"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from mosaic.errors import UsageError

logger = logging.getLogger(__name__)

REDUCERS = ("tsne", "umap")
TSNE_BACKENDS = ("opentsne", "multicore", "sklearn")
# Above this many values PCA reads its rows block by block (streamed_pca).
STREAMED_PCA_VALUES = 100_000_000
PCA_BATCH_ROWS = 20_000
MIN_ITEMS_FOR_MANIFOLD = 10
LABELS_NEED_UMAP = "--label-column needs --reducer umap: t-SNE has no supervised mode"
# The large-collection layout (openTSNE): above LAYOUT_SAMPLE items (--layout-sample),
# t-SNE is fitted on a seeded sample of that many, every other item is placed at the
# median of its nearest fitted neighbours (openTSNE's prepare_partial), and then all
# items are optimised together from there (REFINE_ITER plain iterations on affinities of
# all items), which restores the local order that placement alone loses. The threshold
# is 1M because at 300k a full fit was both faster (484 s against 542 s) and better
# (grid P@10 0.274 against 0.270): docs/scale.md ("Layout at a million").
LAYOUT_SAMPLE = 1_000_000
# Between LAYOUT_FAST and LAYOUT_SAMPLE items (--layout-fast) openTSNE fits all items more
# cheaply: its kNN from the random-projection forest (fast_neighbours; FAST_TREES Annoy
# trees instead of 50 for metrics other than euclidean), and FAST_ITER plain
# iterations after the exaggerated ones instead of 500. At 300k distinct pictures that
# took 0.56x the default fit's time for 0.967x its grid P@10 (docs/scale.md).
LAYOUT_FAST = 200_000
FAST_TREES = 10
FAST_ITER = 250
# openTSNE's own number of Annoy trees (FIt-SNE's), for the default fit.
TSNE_TREES = 50
ANNOY_METRICS = ("euclidean", "cosine", "manhattan", "hamming", "dot")
PLACE_K = 10
PLACE_BATCH = 50_000
REFINE_EXAGGERATION_ITER = 0
REFINE_ITER = 250
# openTSNE's gradient reads, for each item, the positions of the items it has affinity
# with. In the collection's order those are anywhere in memory, and above a few hundred
# thousand items nearly every read misses the CPU caches, which made the fit most of the
# layout stage at 1M. So the fit numbers items in ``graph_order`` (reverse Cuthill-McKee of
# each item's ORDER_K nearest), where neighbours sit near each other, and numbers the
# result back: the same map to float rounding, 3.9x faster per iteration at 1M
# (docs/scale.md, "Items in graph order").
ORDER_K = 10
# Rows relabelled at a time when neighbour ids are renumbered in place.
RELABEL_ROWS = 65_536
# The grid refinement's graph (neighbour_graph): each item's this many nearest items.
GRAPH_K = 30
# 2: the graph is the first GRAPH_K of the openTSNE fit's own search (layout_neighbours),
# not a search of its own.
GRAPH_VERSION = 2


def reduce_pca(vectors: np.ndarray, n_components: int, random_state: int = 0) -> np.ndarray:
    """Project (N, D) vectors onto their first ``n_components`` principal axes.

    Returns float32 (N, min(n_components, D, N)); vectors already small enough
    are returned as float32 unchanged. ``vectors`` may be an array or a row reader
    (``mosaic.bundle.VectorRows``); large inputs are read in blocks of ``PCA_BATCH_ROWS``
    (``streamed_pca``), so only one block is in memory at a time.
    """
    n_items, dim = vectors.shape
    n_components = min(n_components, dim, n_items)
    if n_components <= 0 or dim <= n_components:
        return np.asarray(vectors[:], dtype=np.float32)
    if n_items * dim <= STREAMED_PCA_VALUES:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=n_components, random_state=random_state)
        return pca.fit_transform(np.asarray(vectors[:], dtype=np.float32)).astype(np.float32)
    return streamed_pca(vectors, n_components)


def streamed_pca(vectors, n_components: int) -> np.ndarray:
    """Exact PCA of (N, D) rows read block by block: float32 (N, n_components).

    Three passes over the rows: their mean; their centred covariance, each block's in
    float32 and the sum in float64; the projection on its top eigenvectors (signs as
    scikit-learn's ``svd_flip`` sets them). The same axes as ``PCA`` on all rows, in
    O(D^2) memory; at 1M x 768 about a fifth of ``IncrementalPCA``'s time, which
    takes an SVD per block (docs/scale.md, "Items in graph order").
    """
    n_items, dim = vectors.shape
    blocks = [(start, min(start + PCA_BATCH_ROWS, n_items))
              for start in range(0, n_items, PCA_BATCH_ROWS)]
    total = np.zeros(dim, dtype=np.float64)
    for start, stop in blocks:
        total += np.asarray(vectors[start:stop], dtype=np.float32).sum(axis=0, dtype=np.float64)
    mean = (total / n_items).astype(np.float32)
    covariance = np.zeros((dim, dim), dtype=np.float64)
    for start, stop in blocks:
        block = np.asarray(vectors[start:stop], dtype=np.float32) - mean
        covariance += block.T @ block
    _, axes = np.linalg.eigh(covariance)
    axes = axes[:, ::-1][:, :n_components]
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(n_components)])
    axes = axes.astype(np.float32)
    out = np.empty((n_items, n_components), dtype=np.float32)
    for start, stop in blocks:
        out[start:stop] = (np.asarray(vectors[start:stop], dtype=np.float32) - mean) @ axes
    return out


def layout_2d(
    vectors: np.ndarray,
    reducer: str = "tsne",
    tsne_backend: str = "opentsne",
    perplexity: float = 30.0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
    random_state: int = 0,
    n_jobs: int = 1,
    labels: np.ndarray | None = None,
    sample: int | None = LAYOUT_SAMPLE,
    fast: int | None = LAYOUT_FAST,
    neighbours: Neighbours | None = None,
) -> np.ndarray:
    """Embed (N, D) vectors in 2-D; returns float32 (N, 2) scaled to [0, 1].

    ``sample`` (openTSNE only): above this many items, fit on a seeded sample of
    ``sample`` items, place the rest and refine all (``tsne_sample_place_refine``);
    ``None`` or 0 fits all items whatever their number. ``fast`` (openTSNE only):
    above this many items (and not above ``sample``), fit all items with a cheaper
    kNN (``fast_neighbours``) and fewer iterations (``FAST_ITER``); ``None`` or 0 never.
    ``neighbours``: the openTSNE fit's neighbour search, done already
    (``layout_neighbours``); searched here when None.

    ``labels`` (int (N,), -1 = unlabelled; see ``encode_labels``) makes the
    layout supervised; only ``reducer="umap"`` takes them. Fewer than
    ``MIN_ITEMS_FOR_MANIFOLD`` items are laid out by PCA alone, since t-SNE and
    UMAP are undefined for so few points (labels are then unused).
    """
    if reducer not in REDUCERS:
        raise UsageError(f"--reducer must be one of {', '.join(REDUCERS)}, not {reducer!r}")
    if tsne_backend not in TSNE_BACKENDS:
        raise UsageError(f"--tsne-backend must be one of {', '.join(TSNE_BACKENDS)}")
    if labels is not None:
        if reducer != "umap":
            raise UsageError(LABELS_NEED_UMAP)
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(vectors),):
            raise ValueError(f"labels must have shape ({len(vectors)},), not {labels.shape}")
        if (labels < 0).all():  # nothing to supervise with: UMAP's plain layout
            labels = None
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n_items = len(vectors)
    if n_items < MIN_ITEMS_FOR_MANIFOLD or vectors.shape[1] < 2:
        xy = _small_layout(vectors, random_state)
    elif reducer == "umap":
        xy = _umap(vectors, n_neighbors, min_dist, metric, random_state, n_jobs, labels)
    else:
        perplexity = min(perplexity, (n_items - 1) / 3)
        if tsne_backend == "opentsne" and sample and n_items > sample:
            xy = tsne_sample_place_refine(vectors, sample, perplexity, metric, random_state,
                                          n_jobs, neighbours=neighbours)
        elif tsne_backend == "opentsne" and fast and n_items > fast:
            xy = _opentsne(vectors, perplexity, metric, random_state, n_jobs, fast=True,
                           neighbours=neighbours)
        elif tsne_backend == "opentsne":
            xy = _opentsne(vectors, perplexity, metric, random_state, n_jobs,
                           neighbours=neighbours)
        else:
            xy = _TSNE[tsne_backend](vectors, perplexity, metric, random_state, n_jobs)
    return scale_unit(np.asarray(xy, dtype=np.float64))


def encode_labels(values: Sequence[str | None]) -> np.ndarray:
    """Integer codes for label values, as UMAP's ``y`` wants them: int64 (N,).

    Distinct non-empty values get 0..K-1 in sorted order; ``None`` or ``""``
    (no label) gets -1, which UMAP treats as unlabelled.

    >>> encode_labels(["b", "a", None, "b", ""]).tolist()
    [1, 0, -1, 1, -1]
    """
    classes = sorted({v for v in values if v})
    code = {value: index for index, value in enumerate(classes)}
    return np.array([code[v] if v else -1 for v in values], dtype=np.int64)


def scale_unit(xy: np.ndarray) -> np.ndarray:
    """Scale both axes by the same factor into [0, 1], centred; float32."""
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = float((high - low).max()) or 1.0
    scaled = (xy - low) / span
    scaled += (1.0 - scaled.max(axis=0)) / 2
    return scaled.astype(np.float32)


def _small_layout(vectors: np.ndarray, random_state: int) -> np.ndarray:
    if len(vectors) == 1 or vectors.shape[1] == 0:
        return np.zeros((len(vectors), 2))
    centred = vectors - vectors.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ axes[:2].T
    if xy.shape[1] == 1:
        xy = np.column_stack([xy[:, 0], np.zeros(len(xy))])
    return xy


class Neighbours(NamedTuple):
    """Each item's ``k`` nearest other items, nearest first: ids int32 (N, k) and their
    distances, float64 (openTSNE's search) or float32 (the forest), (N, k)."""

    ids: np.ndarray
    distances: np.ndarray


def tsne_neighbours(vectors: np.ndarray, k: int, metric: str = "euclidean",
                    random_state: int = 0, n_jobs: int = 1,
                    trees: int = TSNE_TREES) -> Neighbours:
    """openTSNE's neighbour search, as its own fit runs it (exact below 1,000 items,
    Annoy with ``trees`` trees above; any other ``trees``, the fast fit's search of
    non-euclidean vectors, is Annoy at any N), with the search index freed before
    returning.

    The t-SNE affinities and the grid refinement's graph both come from one such
    search (``layout_neighbours``): at a million items it is minutes, and the index
    and openTSNE's int64 copies are gigabytes that its own fit keeps to the end.
    """
    from openTSNE import affinity

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if trees == TSNE_TREES:  # openTSNE's own choice, its own number of trees
        index = affinity.get_knn_index(vectors, "auto", k, metric, n_jobs=n_jobs,
                                       random_state=random_state)
    else:
        index = affinity.get_knn_index(vectors, "annoy", k, metric, n_jobs=n_jobs,
                                       random_state=random_state,
                                       knn_kwargs={"n_trees": trees})
    ids, distances = index.build()
    del index
    return Neighbours(np.asarray(ids, dtype=np.int32),
                      np.asarray(distances, dtype=np.float64))


def fast_neighbours(vectors: np.ndarray, k: int, metric: str = "euclidean",
                    random_state: int = 0, n_jobs: int = 1) -> Neighbours:
    """The fast fit's neighbour search (above ``--layout-fast``): for euclidean vectors
    the index stage's random-projection forest (``index.forest_top_neighbors``), faster
    and nearer than Annoy at ``FAST_TREES`` trees (at 300k x 256, 90 neighbours: 52 s
    against 90 s, recall@30 0.990 against 0.980; docs/scale.md), in two arrays and no
    index; Annoy at ``FAST_TREES`` trees for the other metrics."""
    if metric != "euclidean":
        return tsne_neighbours(vectors, k, metric, random_state, n_jobs, FAST_TREES)
    from mosaic.pipeline.index import forest_top_neighbors

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.empty((len(vectors), k), dtype=np.int32)
    distances = np.empty((len(vectors), k), dtype=np.float32)
    forest_top_neighbors(vectors, "euclidean", ids, distances, k, n_jobs=n_jobs,
                         random_state=random_state)
    return Neighbours(ids, distances)


def tsne_k(perplexity: float, n_items: int) -> int:
    """How many neighbours openTSNE's affinities use: three per unit of perplexity."""
    return min(n_items - 1, int(3 * perplexity))


def tsne_affinities(neighbours: Neighbours, perplexity: float, n_jobs: int = 1):
    """openTSNE's symmetric perplexity affinities (``joint_probabilities_nn``) from
    precomputed neighbours, with fewer copies: int32 column indices, symmetrised and
    normalised in place. ``P / sum(P)`` with ``P = (C + C.T) / 2`` is ``(C + C.T) /
    sum(C + C.T)``, so one in-place division does both."""
    from openTSNE import affinity

    k = min(neighbours.ids.shape[1], tsne_k(perplexity, len(neighbours.ids) + 1))
    # A copy of the ids: scipy sorts a CSR matrix's column indices in place, and they
    # would be the caller's array (the grid's graph wants them nearest first).
    conditional = affinity.joint_probabilities_nn(
        np.array(neighbours.ids[:, :k]), neighbours.distances[:, :k], [perplexity],
        symmetrize=False, n_jobs=n_jobs)
    joint = (conditional + conditional.T).tocsr()
    del conditional
    joint.data /= joint.data.sum()
    return affinity.PrecomputedAffinities(joint, normalize=False)


def _opentsne(vectors, perplexity, metric, random_state, n_jobs, fast=False,
              neighbours: Neighbours | None = None):
    """openTSNE's fit (its defaults; ``fast``: FAST_TREES and FAST_ITER), its affinities
    from ``neighbours`` (searched here if None) for metrics Annoy supports."""
    from openTSNE import TSNE, initialization

    cheaper = {"n_iter": FAST_ITER} if fast else {}
    if metric not in ANNOY_METRICS:
        tsne = TSNE(perplexity=perplexity, metric=metric, random_state=random_state,
                    n_jobs=n_jobs, verbose=False, **cheaper)
        return np.asarray(tsne.fit(vectors))
    init = initialization.pca(vectors, random_state=random_state)
    if neighbours is None:
        k = tsne_k(perplexity, len(vectors))
        neighbours = fast_neighbours(vectors, k, metric, random_state, n_jobs) if fast \
            else tsne_neighbours(vectors, k, metric, random_state, n_jobs)
    affinities, order = ordered_affinities(neighbours, perplexity, n_jobs)
    del neighbours
    tsne = TSNE(perplexity=perplexity, metric=metric, random_state=random_state,
                n_jobs=n_jobs, verbose=False, **cheaper)
    moved = np.asarray(tsne.fit(affinities=affinities, initialization=init[order]))
    return numbered_back(moved, order)


def ordered_affinities(neighbours: Neighbours, perplexity: float, n_jobs: int = 1):
    """openTSNE's affinities (``tsne_affinities``) with the items in ``graph_order``,
    and that order; ``neighbours`` are left as they were. Fit from ``start[order]`` and
    number the result back with ``numbered_back``."""
    order = graph_order(neighbours.ids)
    with renumbered(neighbours, order):
        return tsne_affinities(neighbours, perplexity, n_jobs), order


def graph_order(ids: np.ndarray, k: int = ORDER_K) -> np.ndarray:
    """A numbering of the items (int32 (N,): new position -> item id) that puts each
    item near its nearest items: reverse Cuthill-McKee of the symmetrised graph of the
    first ``k`` columns of ``ids`` (int (N, >= k), nearest first; ``-1`` = none)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    n_items = len(ids)
    near = np.asarray(ids[:, :k])
    rows = np.repeat(np.arange(n_items, dtype=np.int32), near.shape[1])
    near = near.ravel()
    found = near >= 0
    graph = csr_matrix((np.ones(int(found.sum()), dtype=np.int8), (rows[found], near[found])),
                       shape=(n_items, n_items))
    return reverse_cuthill_mckee(graph, symmetric_mode=False).astype(np.int32)


@contextmanager
def renumbered(neighbours: Neighbours, order: np.ndarray) -> Iterator[Neighbours]:
    """``neighbours`` renumbered in place by ``order`` (``graph_order``): row ``i`` is
    item ``order[i]``'s and ids are new positions; numbered back on leaving, so the
    caller's arrays are as they were (no copy of them is kept meanwhile)."""
    position = np.empty_like(order)
    position[order] = np.arange(len(order), dtype=order.dtype)
    _permute(neighbours, order, position)
    try:
        yield neighbours
    finally:
        _permute(neighbours, position, order)


def _permute(neighbours: Neighbours, rows: np.ndarray, relabel: np.ndarray) -> None:
    """Rows taken in the order ``rows`` and each id ``j >= 0`` replaced by
    ``relabel[j]``, in place."""
    ids = neighbours.ids
    for array in (ids, neighbours.distances):
        array[:] = array[rows]
    for start in range(0, len(ids), RELABEL_ROWS):
        block = ids[start:start + RELABEL_ROWS]
        block[...] = np.where(block >= 0, relabel[block], block)


def numbered_back(moved: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Rows of ``moved`` (in ``order``'s numbering) back in item order."""
    out = np.empty_like(moved)
    out[order] = moved
    return out


def layout_neighbours(vectors: np.ndarray, reducer: str = "tsne",
                      tsne_backend: str = "opentsne", perplexity: float = 30.0,
                      metric: str = "euclidean", random_state: int = 0, n_jobs: int = 1,
                      sample: int | None = LAYOUT_SAMPLE, fast: int | None = LAYOUT_FAST,
                      k_min: int = GRAPH_K) -> Neighbours | None:
    """The one neighbour search that ``layout_2d`` (its openTSNE fit) and
    ``neighbour_graph`` (the grid refinement's graph) share, with at least ``k_min``
    neighbours; None where the layout searches in its own way (UMAP, the other t-SNE
    backends, a metric Annoy lacks, too few items). Above ``sample`` items it is the
    search of all items that the sampled method's refinement uses."""
    n_items = len(vectors)
    if (reducer != "tsne" or tsne_backend != "opentsne" or metric not in ANNOY_METRICS
            or n_items < MIN_ITEMS_FOR_MANIFOLD or vectors.shape[1] < 2):
        return None
    perplexity = min(perplexity, (n_items - 1) / 3)
    k = min(n_items - 1, max(k_min, tsne_k(perplexity, n_items)))
    sampled = sample and n_items > sample  # its refinement's affinities: openTSNE's own
    if fast and n_items > fast and not sampled:
        return fast_neighbours(vectors, k, metric, random_state, n_jobs)
    return tsne_neighbours(vectors, k, metric, random_state, n_jobs)


def tsne_sample_place_refine(
    vectors: np.ndarray,
    sample: int,
    perplexity: float = 30.0,
    metric: str = "euclidean",
    random_state: int = 0,
    n_jobs: int = 1,
    refine_iter: int = REFINE_ITER,
    refine_exaggeration_iter: int = REFINE_EXAGGERATION_ITER,
    neighbours: Neighbours | None = None,
) -> np.ndarray:
    """The large-collection t-SNE: float64 (N, 2), not yet scaled.

    openTSNE is fitted on a seeded sample of ``sample`` items (the map's regions);
    every other item is placed at the median of its ``PLACE_K`` nearest fitted
    items, in batches of ``PLACE_BATCH``; then affinities are computed on all items
    and the whole map is optimised from the placed start for ``refine_iter``
    iterations (after ``refine_exaggeration_iter`` exaggerated ones), so that the
    placed items are ordered among themselves too. ``refine_iter=0`` stops after
    placement. ``neighbours``: the search of all items for the refinement's
    affinities, done already (``layout_neighbours``); searched here when None.
    """
    from openTSNE import TSNE, TSNEEmbedding, initialization

    tsne = TSNE(perplexity=perplexity, metric=metric, random_state=random_state,
                n_jobs=n_jobs, verbose=False)
    fitted, rest = split_sample(len(vectors), sample, random_state)
    embedding = tsne.fit(vectors[fitted])
    xy = np.empty((len(vectors), 2), dtype=np.float64)
    xy[fitted] = np.asarray(embedding)
    for start in range(0, len(rest), PLACE_BATCH):
        batch = rest[start:start + PLACE_BATCH]
        xy[batch] = np.asarray(embedding.prepare_partial(vectors[batch], k=PLACE_K))
    del embedding
    if refine_iter <= 0:
        return xy
    if neighbours is None:
        neighbours = tsne_neighbours(vectors, tsne_k(perplexity, len(vectors)), metric,
                                     random_state, n_jobs)
    affinities, order = ordered_affinities(neighbours, perplexity, n_jobs)
    del neighbours
    refined = TSNEEmbedding(initialization.rescale(xy)[order], affinities, n_jobs=n_jobs,
                            random_state=random_state)
    if refine_exaggeration_iter > 0:
        refined.optimize(n_iter=refine_exaggeration_iter, exaggeration=12, momentum=0.5,
                         inplace=True)
    refined.optimize(n_iter=refine_iter, momentum=0.8, inplace=True)
    return numbered_back(np.asarray(refined), order)


def neighbour_graph(vectors: np.ndarray, k: int = GRAPH_K, metric: str = "euclidean",
                    random_state: int = 0, n_jobs: int = 1,
                    neighbours: Neighbours | None = None) -> np.ndarray:
    """Each item's ``k`` approximate nearest other items, int32 (N, k), nearest first
    (openTSNE's search, as its affinities use): the graph that the grid
    refinement (``grid.refine_grid``) keeps together. With ``k`` or fewer other items,
    each row holds all of them, repeated. ``neighbours`` with at least ``k`` columns
    (the layout's own search, ``layout_neighbours``) are used instead of a new search."""
    n_items = len(vectors)
    if neighbours is not None and n_items > k + 1 and neighbours.ids.shape[1] >= k:
        return np.ascontiguousarray(neighbours.ids[:, :k])
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if n_items <= k + 1:
        if n_items < 2:
            return np.zeros((n_items, k), dtype=np.int32)
        return np.array([np.resize(np.delete(np.arange(n_items), i), k)
                         for i in range(n_items)], dtype=np.int32)
    from openTSNE.nearest_neighbors import Annoy

    found, _ = Annoy(vectors, k, metric=metric, n_jobs=n_jobs,
                     random_state=random_state).build()
    return found.astype(np.int32)


def split_sample(n_items: int, size: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """(a sorted random sample of ``size`` ids, the other ids), the same for a seed."""
    chosen = np.zeros(n_items, dtype=bool)
    chosen[np.random.default_rng(random_state).choice(n_items, size, replace=False)] = True
    return np.flatnonzero(chosen), np.flatnonzero(~chosen)


def _multicore_tsne(vectors, perplexity, metric, random_state, n_jobs):
    try:
        from MulticoreTSNE import MulticoreTSNE
    except ImportError:
        raise ImportError(
            "--tsne-backend multicore needs MulticoreTSNE; install it with `make venv` "
            "(see the Makefile for the cmake flags it needs)"
        ) from None
    if metric != "euclidean":
        raise UsageError("--tsne-backend multicore supports only --metric euclidean")
    tsne = MulticoreTSNE(n_components=2, perplexity=perplexity,
                         random_state=random_state, n_jobs=n_jobs)
    return tsne.fit_transform(vectors.astype(np.float64))


def _sklearn_tsne(vectors, perplexity, metric, random_state, n_jobs):
    from sklearn.manifold import TSNE

    tsne = TSNE(perplexity=perplexity, metric=metric, random_state=random_state,
                n_jobs=n_jobs, init="pca")
    return tsne.fit_transform(vectors)


def _umap(vectors, n_neighbors, min_dist, metric, random_state, n_jobs, labels=None):
    import umap

    model = umap.UMAP(n_neighbors=min(n_neighbors, len(vectors) - 1), min_dist=min_dist,
                      metric=metric, random_state=random_state)
    return model.fit_transform(vectors, y=labels)


_TSNE = {"opentsne": _opentsne, "multicore": _multicore_tsne, "sklearn": _sklearn_tsne}
