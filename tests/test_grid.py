import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mosaic.errors import UsageError
from mosaic.pipeline.grid import LAP_MAX_ITEMS, assign_grid, cell_ids, grid_shape


def blobs(n_per_blob: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]])
    xy = np.concatenate([c + rng.normal(0, 1, size=(n_per_blob, 2)) for c in centres])
    return xy, np.repeat(np.arange(len(centres)), n_per_blob)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 400), method=st.sampled_from(["rasterfairy", "lap"]),
       seed=st.integers(0, 5))
def test_grid_is_a_bijection_onto_a_near_square_grid(n, method, seed):
    xy = np.random.default_rng(seed).normal(size=(n, 2))
    positions, (n_rows, n_cols) = assign_grid(xy, method)
    assert positions.shape == (n, 2)
    assert len({tuple(p) for p in positions}) == n
    assert (positions >= 0).all()
    assert (positions[:, 0] < n_rows).all() and (positions[:, 1] < n_cols).all()
    assert n_rows * n_cols - n < n_cols  # fewer empty cells than one row
    assert abs(n_rows - n_cols) <= 1


def test_grid_shape_is_near_square():
    for n in [1, 2, 3, 10, 99, 100, 101, 1_000_000]:
        n_rows, n_cols = grid_shape(n)
        assert n_rows * n_cols >= n and n_rows <= n_cols <= n_rows + 1


@pytest.mark.parametrize("method", ["rasterfairy", "lap"])
def test_clusters_stay_apart_on_the_grid(method):
    xy, labels = blobs(60)
    positions, (n_rows, n_cols) = assign_grid(xy, method)
    grid = cell_ids(positions, n_rows, n_cols)
    same = total = 0
    for row in range(n_rows):
        for col in range(n_cols):
            here = grid[row, col]
            for dr, dc in ((0, 1), (1, 0)):
                r, c = row + dr, col + dc
                if here >= 0 and r < n_rows and c < n_cols and grid[r, c] >= 0:
                    total += 1
                    same += labels[here] == labels[grid[r, c]]
    assert same / total > 0.9


@pytest.mark.parametrize("method", ["rasterfairy", "lap"])
def test_grid_keeps_the_layout_order(method):
    # Jittered points on a rotated-free 12 x 12 lattice: x must follow columns, y rows.
    rng = np.random.default_rng(0)
    rows, cols = np.divmod(np.arange(144), 12)
    xy = np.column_stack([cols, rows]) + rng.uniform(-0.3, 0.3, size=(144, 2))
    positions, _ = assign_grid(xy, method)
    assert np.corrcoef(xy[:, 0], positions[:, 1])[0, 1] > 0.95
    assert np.corrcoef(xy[:, 1], positions[:, 0])[0, 1] > 0.95


def test_fixed_seed_repeats():
    xy, _ = blobs(30, seed=3)
    first, _ = assign_grid(xy, "rasterfairy", random_state=7)
    again, _ = assign_grid(xy, "rasterfairy", random_state=7)
    assert np.array_equal(first, again)


def test_lap_displaces_points_no_more_than_rasterfairy():
    xy, _ = blobs(50, seed=1)
    n_rows, n_cols = grid_shape(len(xy))
    scaled = (xy - xy.min(0)) / np.ptp(xy, 0) * [n_cols, n_rows]

    def displacement(positions):
        centres = positions[:, ::-1] + 0.5
        return ((scaled - centres) ** 2).sum()

    lap, _ = assign_grid(xy, "lap")
    fairy, _ = assign_grid(xy, "rasterfairy")
    assert displacement(lap) <= displacement(fairy) + 1e-6


def test_lap_refuses_large_collections():
    xy = np.zeros((LAP_MAX_ITEMS + 1, 2))
    with pytest.raises(UsageError, match="rasterfairy"):
        assign_grid(xy, "lap")


def test_unknown_method_and_bad_layout_are_refused():
    with pytest.raises(UsageError, match="--grid"):
        assign_grid(np.zeros((3, 2)), "hilbert")
    with pytest.raises(UsageError):
        assign_grid(np.array([[0.0, np.nan]]), "rasterfairy")


# -- refine_grid: swaps that bring neighbours into the surrounding cells ------------------

def _structured(n: int = 900, seed: int = 0):
    """Points in 12-D whose first two coordinates are a smooth 2-D sheet, a noisy 2-D
    layout of them (what t-SNE would give, with its local errors), and their 30 nearest
    neighbours in 12-D."""
    from mosaic import quality
    from mosaic.knn import exact_knn_of_rows

    rng = np.random.default_rng(seed)
    sheet = rng.random((n, 2))
    features = np.column_stack([sheet, 0.02 * rng.normal(size=(n, 10))])
    layout = sheet + rng.normal(0, 0.03, size=sheet.shape)
    found = exact_knn_of_rows(features, np.arange(n), 31, "euclidean")
    graph = np.array([[j for j in row if j != i][:30] for i, row in enumerate(found)])
    return features, layout, graph, quality


@pytest.mark.parametrize("method", ["rasterfairy", "lap"])
def test_refinement_raises_grid_precision_and_stays_a_bijection(method):
    from mosaic.pipeline.grid import refine_grid

    features, layout, graph, quality = _structured()
    positions, (n_rows, n_cols) = assign_grid(layout, method)
    refined = refine_grid(positions, n_rows, n_cols, graph, sweeps=100)
    assert refined.shape == positions.shape and refined.dtype == np.int32
    assert len({tuple(p) for p in refined}) == len(refined)  # one item per cell
    assert (refined >= 0).all() and (refined[:, 0] < n_rows).all() and \
        (refined[:, 1] < n_cols).all()
    before = quality.grid_precision(features, positions)
    after = quality.grid_precision(features, refined)
    assert after > before + 0.03, (before, after)


def test_refinement_with_a_random_graph_does_not_help():
    """Negative control: the gain comes from the neighbours, not from moving cells."""
    from mosaic.pipeline.grid import refine_grid

    features, layout, graph, quality = _structured()
    positions, (n_rows, n_cols) = assign_grid(layout, "rasterfairy")
    noise = np.random.default_rng(1).integers(0, len(layout), size=graph.shape)
    refined = refine_grid(positions, n_rows, n_cols, noise, sweeps=100)
    assert quality.grid_precision(features, refined) < \
        quality.grid_precision(features, positions)


def test_refinement_repeats_for_a_seed_and_keeps_empty_cells_empty():
    from mosaic.pipeline.grid import refine_grid

    _, layout, graph, _ = _structured(n=500)
    positions, (n_rows, n_cols) = assign_grid(layout, "rasterfairy")
    assert n_rows * n_cols > 500  # some cells are empty: moves into them are allowed
    first = refine_grid(positions, n_rows, n_cols, graph, sweeps=20, random_state=3)
    again = refine_grid(positions, n_rows, n_cols, graph, sweeps=20, random_state=3)
    other = refine_grid(positions, n_rows, n_cols, graph, sweeps=20, random_state=4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len({tuple(p) for p in first}) == 500
    np.testing.assert_array_equal(refine_grid(positions, n_rows, n_cols, graph, sweeps=0),
                                  positions)


def test_default_sweeps_shrink_with_n_within_bounds():
    from mosaic.pipeline import grid

    assert grid.default_sweeps(1_000) == grid.MAX_SWEEPS
    assert grid.default_sweeps(1_000_000) * 1_000_000 <= grid.MOVE_BUDGET
    assert grid.default_sweeps(10**9) == grid.MIN_SWEEPS
