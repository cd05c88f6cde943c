import numpy as np
import pytest

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
