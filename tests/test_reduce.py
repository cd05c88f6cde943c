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


def test_pca_reduces_and_incremental_pca_agrees(monkeypatch):
    vectors, labels = blobs(100, dim=64)
    full = reduce.reduce_pca(vectors, 8)
    monkeypatch.setattr(reduce, "INCREMENTAL_PCA_VALUES", 0)
    monkeypatch.setattr(reduce, "PCA_BATCH_ROWS", 64)
    incremental = reduce.reduce_pca(vectors, 8)
    assert full.shape == incremental.shape == (400, 8)
    assert knn_accuracy(incremental[:, :2], labels) > 0.9
    # Same subspace up to sign: the leading component correlates perfectly.
    assert abs(np.corrcoef(full[:, 0], incremental[:, 0])[0, 1]) > 0.99


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
