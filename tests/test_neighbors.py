import numpy as np
import pytest

from mosaic import knn
from mosaic.knn import exact_knn_of_rows, exact_neighbors
from mosaic.pipeline.index import RECALL_TARGET, build_annoy, choose_search_k


def structured_vectors(n: int = 3000, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(30, dim))
    return (centres[rng.integers(0, 30, n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize("metric", ["euclidean", "angular"])
def test_chunked_brute_force_equals_the_direct_one(metric):
    vectors = structured_vectors(500)
    rows = np.array([0, 7, 123, 499])
    chunked = exact_knn_of_rows(vectors, rows, 10, metric, chunk=64)
    for row, ids in zip(rows, chunked):
        direct, _ = exact_neighbors(vectors, vectors[row], 10, metric)
        assert set(ids.tolist()) == set(direct.tolist())


@pytest.mark.parametrize("metric", ["euclidean", "angular"])
def test_chosen_search_k_reaches_the_recall_target(metric):
    vectors = structured_vectors()
    index = build_annoy(vectors, metric, n_trees=5)
    search_k, recall = choose_search_k(index, vectors, metric)
    assert recall >= RECALL_TARGET
    # Check on items the choice never saw: recall@20 against brute force.
    rng = np.random.default_rng(99)
    hits = 0
    queries = rng.choice(len(vectors), 50, replace=False)
    for item in queries:
        truth, _ = exact_neighbors(vectors, vectors[item], 20, metric)
        found = index.get_nns_by_item(int(item), 20, search_k=search_k)
        hits += len(set(truth.tolist()) & set(found))
    assert hits / (20 * len(queries)) >= RECALL_TARGET - 0.05


def test_angular_distance_matches_annoy():
    vectors = structured_vectors(200)
    index = build_annoy(vectors, "angular", n_trees=10)
    ids, distances = exact_neighbors(vectors, vectors[5], 5, "angular")
    annoy_ids, annoy_distances = index.get_nns_by_item(5, 5, search_k=100000,
                                                       include_distances=True)
    assert list(ids) == annoy_ids
    assert np.allclose(distances, annoy_distances, atol=1e-3)


def collect_blocks(blocks) -> tuple[np.ndarray, np.ndarray]:
    starts, ids, distances = zip(*blocks)
    assert list(starts) == sorted(starts) and starts[0] == 0  # consecutive, from 0
    return np.concatenate(ids), np.concatenate(distances)


@pytest.mark.parametrize("metric", ["euclidean", "angular"])
def test_stored_top_lists_are_the_exact_neighbours_for_a_small_collection(metric):
    vectors = structured_vectors(700)
    assert knn.exact_is_cheap(*vectors.shape, metric)
    ids, distances = collect_blocks(knn.iter_top_neighbors(
        vectors, None, metric, k=knn.TOP_K, n_jobs=2, block=128))
    assert ids.shape == distances.shape == (700, knn.TOP_K)
    assert ids.dtype == np.int32 and distances.dtype == np.float32
    assert not (ids == np.arange(700)[:, None]).any()  # never the item itself
    assert (np.diff(distances, axis=1) >= 0).all()  # nearest first
    for item in (0, 333, 699):
        truth, truth_distances = exact_neighbors(vectors, vectors[item], knn.TOP_K, metric,
                                                 exclude=item)
        assert ids[item].tolist() == truth.tolist()
        assert np.allclose(distances[item], truth_distances, atol=1e-5)


def test_top_lists_of_a_tiny_collection_end_in_minus_one():
    vectors = structured_vectors(5)
    ids, distances = collect_blocks(knn.iter_top_neighbors(vectors, None, "euclidean", k=8))
    assert (ids[:, :4] >= 0).all() and (ids[:, 4:] == -1).all()
    assert np.isinf(distances[:, 4:]).all()


def test_top_lists_through_annoy_find_the_true_neighbours(monkeypatch):
    """Above the exact budget the lists come from the annoy index, in parallel blocks;
    they must agree with brute force as the index's search_k promises, and not at all
    for a control index built on shuffled rows."""
    vectors = structured_vectors(3000)
    monkeypatch.setattr(knn, "EXACT_WORK", 0)
    index = build_annoy(vectors, "euclidean", n_trees=10)
    search_k, _ = choose_search_k(index, vectors, "euclidean")
    ids, _ = collect_blocks(knn.iter_top_neighbors(vectors, index, "euclidean", search_k,
                                                   k=20, n_jobs=2, block=256))
    control = build_annoy(np.random.default_rng(1).permutation(vectors), "euclidean", 10)
    control_ids, _ = collect_blocks(knn.iter_top_neighbors(vectors, control, "euclidean",
                                                           search_k, k=20, n_jobs=2))
    queries = np.random.default_rng(3).choice(3000, 100, replace=False)
    recall = control_recall = 0
    for item in queries:
        truth = set(exact_neighbors(vectors, vectors[item], 20, "euclidean",
                                    exclude=int(item))[0].tolist())
        recall += len(truth & set(ids[item].tolist()))
        control_recall += len(truth & set(control_ids[item].tolist()))
    assert recall / 2000 >= RECALL_TARGET - 0.05
    assert control_recall / 2000 < 0.1
    assert not (ids == np.arange(3000)[:, None]).any()
