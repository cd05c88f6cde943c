import numpy as np
import pytest

from mosaic.errors import UsageError
from mosaic.pipeline import reduce


def blobs(n_per_blob: int = 60, dim: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, size=(4, dim))
    vectors = np.concatenate([c + rng.normal(size=(n_per_blob, dim)) for c in centres])
    return vectors.astype(np.float32), np.repeat(np.arange(4), n_per_blob)


def knn_accuracy(xy: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    distances = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


@pytest.mark.parametrize("reducer,backend", [("tsne", "opentsne"), ("tsne", "multicore"),
                                             ("tsne", "sklearn"), ("umap", "opentsne")])
def test_clusters_stay_apart_in_the_layout(reducer, backend):
    vectors, labels = blobs()
    xy = reduce.layout_2d(vectors, reducer, backend, perplexity=20, random_state=1)
    assert xy.shape == (len(vectors), 2) and xy.dtype == np.float32
    assert xy.min() >= 0 and xy.max() <= 1
    assert knn_accuracy(xy, labels) > 0.95


@pytest.mark.parametrize("backend", ["opentsne", "sklearn"])
def test_fixed_seed_repeats(backend):
    vectors, _ = blobs(30)
    first = reduce.layout_2d(vectors, "tsne", backend, perplexity=10, random_state=4)
    again = reduce.layout_2d(vectors, "tsne", backend, perplexity=10, random_state=4)
    assert np.array_equal(first, again)


def test_pca_reduces_and_streamed_pca_is_the_same_pca(monkeypatch):
    """Large inputs are projected by ``streamed_pca`` (read block by block): the same
    projection as scikit-learn's PCA of all rows, signs included."""
    vectors, labels = blobs(100, dim=64)
    vectors = vectors * np.linspace(3, 0.5, 64, dtype=np.float32)  # distinct variances
    full = reduce.reduce_pca(vectors, 8)
    monkeypatch.setattr(reduce, "STREAMED_PCA_VALUES", 0)
    monkeypatch.setattr(reduce, "PCA_BATCH_ROWS", 64)
    streamed = reduce.reduce_pca(vectors, 8)
    assert full.shape == streamed.shape == (400, 8) and streamed.dtype == np.float32
    assert knn_accuracy(streamed[:, :2], labels) > 0.9
    assert np.abs(streamed - full).max() < 1e-3 * np.abs(full).max()


def test_pca_leaves_small_vectors_alone():
    vectors = np.ones((10, 4), dtype=np.float64)
    assert reduce.reduce_pca(vectors, 256).shape == (10, 4)


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_tiny_collections_get_a_layout(n):
    xy = reduce.layout_2d(np.random.default_rng(0).normal(size=(n, 6)))
    assert xy.shape == (n, 2) and np.isfinite(xy).all()


def test_unknown_reducer_or_backend_is_refused():
    with pytest.raises(UsageError, match="--reducer"):
        reduce.layout_2d(np.zeros((20, 3)), reducer="pca")
    with pytest.raises(UsageError, match="--tsne-backend"):
        reduce.layout_2d(np.zeros((20, 3)), tsne_backend="cuda")


@pytest.mark.parametrize("n", [1, 5, 400])
def test_neighbour_graph_finds_near_items_never_itself(n):
    from mosaic.knn import exact_knn_of_rows

    vectors = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    graph = reduce.neighbour_graph(vectors, k=10)
    assert graph.shape == (n, 10) and graph.dtype == np.int32
    if n == 1:
        return
    assert not (graph == np.arange(n)[:, None]).any()
    if n > 11:
        exact = exact_knn_of_rows(vectors, np.arange(n), 11, "euclidean")[:, 1:]
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(graph, exact)])
        assert recall > 0.9


def test_shared_search_gives_opentsnes_own_affinities_and_stays_nearest_first():
    """The layout stage's one neighbour search (``layout_neighbours``) feeds openTSNE's
    affinities, equal to those openTSNE computes itself, and then the grid's graph, whose
    rows must still be nearest first afterwards (scipy sorts CSR indices in place)."""
    from openTSNE import affinity

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(8, 16)) * 5
    vectors = (centres[rng.integers(0, 8, 1200)] + rng.normal(size=(1200, 16))).astype(
        np.float32)
    shared = reduce.layout_neighbours(vectors, random_state=2)
    assert shared.ids.shape == (1200, 90) and shared.ids.dtype == np.int32
    before = shared.ids.copy()
    ours = reduce.tsne_affinities(shared, 30.0).P
    theirs = affinity.MultiscaleMixture(vectors, [30.0], random_state=2).P
    assert ours.shape == theirs.shape and ours.nnz == theirs.nnz
    assert abs(ours - theirs).max() < 1e-9 * theirs.max()
    assert np.array_equal(shared.ids, before)
    graph = reduce.neighbour_graph(vectors, k=30, neighbours=shared)
    assert np.array_equal(graph, before[:, :30])
    gaps = np.linalg.norm(vectors[graph] - vectors[:, None], axis=2)
    assert (np.diff(gaps, axis=1) >= -1e-4).all()  # nearest first
    shuffled = np.random.default_rng(0).permuted(graph, axis=1)  # the negative control
    gaps = np.linalg.norm(vectors[shuffled] - vectors[:, None], axis=2)
    assert not (np.diff(gaps, axis=1) >= -1e-4).all()


@pytest.mark.parametrize("flags", [{"reducer": "umap"}, {"tsne_backend": "sklearn"},
                                   {"metric": "correlation"}])
def test_layouts_that_search_their_own_way_share_nothing(flags):
    vectors = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    assert reduce.layout_neighbours(vectors, **flags) is None


def test_fast_fit_search_is_the_forest_and_finds_the_nearest():
    """Above --layout-fast the shared search is the index stage's forest: nearest first,
    never the item itself, and (at this size, one leaf) exactly the nearest."""
    from mosaic.knn import exact_knn_of_rows

    vectors = np.random.default_rng(1).normal(size=(500, 12)).astype(np.float32)
    shared = reduce.layout_neighbours(vectors, fast=100)
    exact = exact_knn_of_rows(vectors, np.arange(500), 91, "euclidean")[:, 1:]
    assert shared.ids.shape == (500, 90) and not (shared.ids == np.arange(500)[:, None]).any()
    assert np.mean([len(set(a) & set(b)) / 90 for a, b in zip(shared.ids, exact)]) > 0.99
    assert (np.diff(shared.distances, axis=1) >= 0).all()


def clustered(n: int = 3000, seed: int = 7) -> np.ndarray:
    """Items of 30 clusters in a shuffled order, as a collection's ids are."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, 16)) * 6
    return (centres[rng.integers(0, 30, n)] + rng.normal(size=(n, 16))).astype(np.float32)


def test_graph_order_puts_neighbours_near_each_other():
    """In ``graph_order``'s numbering an item's nearest items are a few positions away;
    in the collection's own (shuffled) order they are anywhere (the negative control)."""
    vectors = clustered()
    shared = reduce.layout_neighbours(vectors, random_state=0)
    order = reduce.graph_order(shared.ids)
    assert order.dtype == np.int32 and np.array_equal(np.sort(order), np.arange(len(order)))
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    near = shared.ids[:, :reduce.ORDER_K]
    in_order = np.median(np.abs(position[near] - position[:, None]))
    as_stored = np.median(np.abs(near - np.arange(len(near))[:, None]))
    assert in_order < 0.05 * as_stored
    assert as_stored > 0.25 * len(vectors)


def test_renumbered_neighbours_are_the_same_graph_and_come_back_unchanged():
    vectors = clustered(800)
    shared = reduce.layout_neighbours(vectors, random_state=0)
    shared.ids[5, -1] = -1  # a missing neighbour stays missing
    ids, distances = shared.ids.copy(), shared.distances.copy()
    order = reduce.graph_order(ids)
    with reduce.renumbered(shared, order) as moved:
        assert moved.ids[np.argsort(order)[5], -1] == -1
        # row i is item order[i]'s; its ids are positions: order[] maps them back
        found = np.where(moved.ids >= 0, order[moved.ids], -1)
        assert np.array_equal(found, ids[order])
        assert np.array_equal(moved.distances, distances[order])
        assert not np.array_equal(moved.ids, ids)
    assert np.array_equal(shared.ids, ids) and np.array_equal(shared.distances, distances)
    with pytest.raises(RuntimeError), reduce.renumbered(shared, order):
        raise RuntimeError("the fit failed")
    assert np.array_equal(shared.ids, ids)


def test_fit_in_graph_order_is_the_fit_in_item_order():
    """The openTSNE fit in ``graph_order``'s numbering, numbered back, is the fit of the
    same affinities and start in the collection's order: the same map, up to the float
    rounding that 750 iterations amplify (the sums run in another order). Each item's
    10 nearest in 2-D are mostly the same items; numbered back wrongly, they are not."""
    from openTSNE import TSNE, initialization
    from scipy.spatial import cKDTree

    vectors = clustered(2000)
    shared = reduce.layout_neighbours(vectors, random_state=0)
    ids = shared.ids.copy()
    ours = reduce._opentsne(vectors, 30.0, "euclidean", 0, 1, neighbours=shared)
    assert np.array_equal(shared.ids, ids)
    theirs = np.asarray(TSNE(random_state=0, n_jobs=1).fit(
        affinities=reduce.tsne_affinities(shared, 30.0),
        initialization=initialization.pca(vectors, random_state=0)))

    def nearest(xy):
        return cKDTree(xy).query(xy, k=11)[1][:, 1:]

    def shared_share(a, b):
        return np.mean([len(set(x) & set(y)) / 10 for x, y in zip(nearest(a), nearest(b))])

    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99
    assert shared_share(ours, theirs) > 0.7
    wrong = reduce.numbered_back(ours, np.random.default_rng(0).permutation(len(ours)))
    assert shared_share(wrong, theirs) < 0.05  # the negative control
