import numpy as np
import pytest
from sample_collection import build_bundle

from mosaic import knn
from mosaic.bundle import Bundle, RowFile, read_manifest
from mosaic.knn import exact_knn_of_rows, exact_neighbors
from mosaic.pipeline.index import (
    RECALL_TARGET,
    _merge,
    build_annoy,
    choose_search_k,
    forest_top_neighbors,
)


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


@pytest.mark.parametrize("metric", ["euclidean", "angular"])
def test_an_index_built_on_disk_is_the_file_an_in_memory_build_saves(metric, tmp_path):
    """The pipeline builds its index in the file (annoy's on_disk_build) to keep it out
    of the process's memory; a resumed run must still write the same bytes."""
    vectors = structured_vectors(2000)
    in_memory = build_annoy(vectors, metric, n_trees=5, random_state=3)
    in_memory.save(str(tmp_path / "saved.ann"))
    on_disk = build_annoy(vectors, metric, n_trees=5, random_state=3,
                          path=tmp_path / "built.ann")
    assert on_disk.get_nns_by_item(7, 10) == in_memory.get_nns_by_item(7, 10)
    on_disk.unload()
    assert (tmp_path / "built.ann").read_bytes() == (tmp_path / "saved.ann").read_bytes()
    # negative control: another seed builds other trees, so other bytes
    other = build_annoy(vectors, metric, n_trees=5, random_state=4, path=tmp_path / "o.ann")
    other.unload()
    assert (tmp_path / "o.ann").read_bytes() != (tmp_path / "saved.ann").read_bytes()


def forest_lists(vectors: np.ndarray, metric: str, tmp_path, n_jobs: int = 2, k: int = 20,
                 **settings) -> tuple[np.ndarray, np.ndarray]:
    shape = (len(vectors), k)
    ids_rows = RowFile(tmp_path / f"ids-{n_jobs}", shape, np.int32, writable=True)
    distance_rows = RowFile(tmp_path / f"distances-{n_jobs}", shape, np.float32,
                            writable=True)
    forest_top_neighbors(vectors, metric, ids_rows, distance_rows, k, n_jobs=n_jobs,
                         **settings)
    rows = np.arange(len(vectors))
    return ids_rows.read_rows(rows), distance_rows.read_rows(rows)


@pytest.mark.parametrize("metric", ["euclidean", "angular"])
def test_forest_lists_find_the_true_neighbours_in_many_leaves(metric, tmp_path):
    """Above the exact budget the pipeline's lists come from a random-projection forest
    (leaves compared by matrix products, then expanded through the lists): nearest
    first, never the item itself, annoy's distances, recall near the exact lists, the
    same on 1 thread as on 2; one small partition and no expansion is the control."""
    vectors = structured_vectors(4000)
    settings = {"leaf": 200, "random_state": 5}
    ids, distances = forest_lists(vectors, metric, tmp_path, **settings)
    assert not (ids == np.arange(4000)[:, None]).any() and (ids >= 0).all()
    assert (np.diff(distances, axis=1) >= 0).all()
    recall = 0
    queries = np.random.default_rng(3).choice(4000, 100, replace=False)
    for item in queries:
        truth, _ = exact_neighbors(vectors, vectors[item], 20, metric, exclude=int(item))
        recall += len(set(truth.tolist()) & set(ids[item].tolist()))
        assert np.allclose(distances[item], knn.exact_distances(
            vectors, vectors[item], metric)[ids[item]], atol=1e-3)
    assert recall / 2000 >= 0.95
    one_thread = forest_lists(vectors, metric, tmp_path, n_jobs=1, **settings)
    assert np.array_equal(one_thread[0], ids) and np.array_equal(one_thread[1], distances)
    # negative control: one partition into leaves of 20 and no expansion misses most
    poor, _ = forest_lists(vectors, metric, tmp_path, trees=1, expansions=0, leaf=20,
                           random_state=5)
    poor_recall = sum(len(set(exact_neighbors(vectors, vectors[i], 20, metric,
                                              exclude=int(i))[0].tolist())
                          & set(poor[i].tolist())) for i in queries)
    assert poor_recall / 2000 < 0.8


def test_forest_lists_of_a_tiny_collection_end_in_minus_one(tmp_path):
    ids, distances = forest_lists(structured_vectors(5), "euclidean", tmp_path, k=8)
    assert (ids[:, :4] >= 0).all() and (ids[:, 4:] == -1).all()
    assert np.isinf(distances[:, 4:]).all()


def test_the_pipeline_writes_forest_lists_above_the_exact_budget(collection, tmp_path,
                                                                  monkeypatch):
    """The CLI's pipeline, in this process, with the exact budget at 0: the manifest
    says the lists came from the forest and how well they did, and on 36 items (one
    leaf) they are the exact lists."""
    monkeypatch.setattr(knn, "EXACT_WORK", 0)
    images, _ = collection
    assert build_bundle(images, tmp_path, "forest") == 0
    bundle = Bundle.open(tmp_path / "forest")
    embedding = bundle.embeddings[0]
    entry = read_manifest(tmp_path / "forest")["embeddings"][0]["top"]
    assert entry["method"] == "forest" and not entry["exact"]
    assert entry["recall_at_20"] == 1.0
    vectors = np.asarray(embedding.open_vectors(bundle.path)[:])
    stored_ids, stored_distances = bundle.open_top_neighbors(embedding)
    for item in (0, 17, 35):
        truth, truth_distances = exact_neighbors(vectors, vectors[item], 35,
                                                 embedding.metric, exclude=item)
        row = stored_ids.read_rows([item])[0]
        assert set(row[:35].tolist()) == set(truth.tolist()) and (row[35:] == -1).all()
        assert np.allclose(stored_distances.read_rows([item])[0][:35], truth_distances,
                           atol=1e-4)


def merge_numpy(ids: np.ndarray, distances: np.ndarray, new_ids: np.ndarray,
                 new_distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``_merge`` as numpy did it before it was compiled: the reference."""
    ids = np.concatenate([ids, new_ids], axis=1)
    distances = np.concatenate([distances, new_distances.astype(np.float32)], axis=1)
    order = np.argsort(ids, axis=1, kind="stable")
    ids, distances = np.take_along_axis(ids, order, 1), np.take_along_axis(distances, order, 1)
    repeated = np.zeros(ids.shape, dtype=bool)
    repeated[:, 1:] = (ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] >= 0)
    distances[repeated] = np.inf
    ids = np.where(repeated, -1, ids)
    keep = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, keep, 1), np.take_along_axis(distances, keep, 1)


def test_compiled_merge_keeps_what_the_numpy_merge_keeps():
    # the forest's merge, compiled, must keep the same k per row in the same order,
    # ties included (equal distances are common among near-identical pictures)
    rng = np.random.default_rng(3)
    rows, k, new = 300, 12, 20
    ids = np.stack([rng.choice(60, k, replace=False) for _ in range(rows)]).astype(np.int32)
    distances = rng.integers(0, 6, (rows, k)).astype(np.float32)  # many ties
    ids[:40, -5:], distances[:40, -5:] = -1, np.inf  # rows not yet full
    new_ids = np.stack([rng.choice(60, new, replace=False) for _ in range(rows)]).astype(
        np.int32)
    new_distances = rng.integers(0, 6, (rows, new)).astype(np.float32)
    compiled = _merge(ids, distances, new_ids, new_distances, k)
    reference = merge_numpy(ids, distances, new_ids, new_distances, k)
    assert np.array_equal(compiled[0], reference[0])
    assert np.array_equal(compiled[1], reference[1])
    kept = compiled[0]
    for row in kept:  # each id once
        assert len(set(row[row >= 0].tolist())) == (row >= 0).sum()
    # negative control: ties broken by position rather than by id keep other ids
    by_position = np.argsort(np.concatenate([distances, new_distances], 1), axis=1,
                             kind="stable")[:, :k]
    assert not np.array_equal(np.take_along_axis(np.concatenate([ids, new_ids], 1),
                                                 by_position, 1), kept)
