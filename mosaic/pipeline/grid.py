"""Grid stage: snap 2-D points onto a near-square grid, one item per cell.

Two methods, and a refinement after either:

- ``rasterfairy``: recursive proportional bisection, after Mario Klingemann's
  RasterFairy (https://github.com/Quasimondo/RasterFairy). The grid rectangle
  is cut along its longer side at a row/column line, the points are cut at the
  same proportion along the matching axis, and both halves recurse. O(N log^2 N)
  time, O(N) memory; the default for large N.
- ``lap``: the exact linear assignment that minimises the summed squared
  displacement in cell units (scipy's ``linear_sum_assignment``). Cubic time
  and an N x cells cost matrix, so it is refused above ``LAP_MAX_ITEMS``.
- ``refine_grid``: simulated-annealing swaps that bring each item's nearest
  neighbours (in the layout vectors, not the 2-D layout) into the cells around
  it; it raises grid P@10 above exact assignment (docs/benchmarks.md).
"""

from __future__ import annotations

import functools

import numpy as np

from mosaic.bundle import cell_ids, grid_shape  # noqa: F401  (part of this stage's API)
from mosaic.errors import UsageError

METHODS = ("auto", "rasterfairy", "lap")
# Measured here (docs/benchmarks.md): lap takes 0.5 s at 1k items, 4.5 s at 2k, ~30 s at 5k.
LAP_AUTO_MAX_ITEMS = 1_000
LAP_MAX_ITEMS = 5_000
# refine_grid (--grid-sweeps): chosen by measurement, docs/benchmarks.md ("Grid quality").
# By default 300 sweeps, fewer where N x 300 would pass the move budget (30 at 1M).
MAX_SWEEPS = 300
MIN_SWEEPS = 30
MOVE_BUDGET = 30_000_000
CLOSE_NEIGHBOURS = 10
FAR_WEIGHT = 0.2
START_TEMPERATURE = 0.1
END_TEMPERATURE = 0.01


def assign_grid(
    xy: np.ndarray, method: str = "auto", random_state: int = 0
) -> tuple[np.ndarray, tuple[int, int]]:
    """Assign each point of ``xy`` (N, 2) to a distinct grid cell.

    Returns ``positions`` int32 (N, 2) as (row, col), and (n_rows, n_cols).
    ``x`` maps to columns and ``y`` to rows. ``random_state`` only breaks ties.
    """
    if method not in METHODS:
        raise UsageError(f"--grid must be one of {', '.join(METHODS)}, not {method!r}")
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
        raise UsageError("the layout must be a finite (N, 2) array")
    n_rows, n_cols = grid_shape(len(xy))
    method = resolve_method(method, len(xy))
    jitter = np.random.default_rng(random_state).uniform(-1e-9, 1e-9, size=xy.shape)
    xy = _scale_to_grid(xy, n_rows, n_cols) + jitter
    if method == "lap":
        positions = _assign_lap(xy, n_rows, n_cols)
    else:
        positions = _assign_rasterfairy(xy, n_rows, n_cols)
    return positions.astype(np.int32), (n_rows, n_cols)


def resolve_method(method: str, n_items: int) -> str:
    """The method ``auto`` stands for at ``n_items`` (others are themselves)."""
    if method == "auto":
        return "lap" if n_items <= LAP_AUTO_MAX_ITEMS else "rasterfairy"
    return method


def _scale_to_grid(xy: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Scale x to [0, n_cols] and y to [0, n_rows] (cell units)."""
    low = xy.min(axis=0)
    span = np.where(np.ptp(xy, axis=0) > 0, np.ptp(xy, axis=0), 1.0)
    return (xy - low) / span * np.array([n_cols, n_rows])


def _assign_lap(xy: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment  # heavy import, only when needed

    if len(xy) > LAP_MAX_ITEMS:
        raise UsageError(
            f"--grid lap is exact but cubic: {len(xy)} items is over its limit of "
            f"{LAP_MAX_ITEMS}; use --grid rasterfairy (or auto)"
        )
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    centres = np.column_stack([cols + 0.5, rows + 0.5])
    cost = ((xy[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    item_index, cell_index = linear_sum_assignment(cost)
    positions = np.empty((len(xy), 2), dtype=np.int64)
    positions[item_index] = np.column_stack([rows[cell_index], cols[cell_index]])
    return positions


def _assign_rasterfairy(xy: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    positions = np.empty((len(xy), 2), dtype=np.int64)
    # Each task: item ids and the grid rectangle [r0, r1) x [c0, c1) they fill.
    stack = [(np.arange(len(xy)), 0, n_rows, 0, n_cols)]
    while stack:
        ids, r0, r1, c0, c1 = stack.pop()
        area = (r1 - r0) * (c1 - c0)
        if len(ids) == 0:
            continue
        if area == 1:
            positions[ids[0]] = (r0, c0)
            continue
        if (c1 - c0) >= (r1 - r0):
            cut = c0 + (c1 - c0) // 2
            area_a = (r1 - r0) * (cut - c0)
            order = np.argsort(xy[ids, 0], kind="stable")
            first, second = (r0, r1, c0, cut), (r0, r1, cut, c1)
        else:
            cut = r0 + (r1 - r0) // 2
            area_a = (cut - r0) * (c1 - c0)
            order = np.argsort(xy[ids, 1], kind="stable")
            first, second = (r0, cut, c0, c1), (cut, r1, c0, c1)
        n_a = round(len(ids) * area_a / area)
        n_a = min(max(n_a, len(ids) - (area - area_a)), area_a)
        ids = ids[order]
        stack.append((ids[:n_a], *first))
        stack.append((ids[n_a:], *second))
    return positions


def default_sweeps(n_items: int) -> int:
    """``refine_grid``'s sweeps when ``--grid-sweeps`` is not given: ``MAX_SWEEPS``,
    fewer for large N so that the moves stay within ``MOVE_BUDGET`` (at least
    ``MIN_SWEEPS``)."""
    return int(min(MAX_SWEEPS, max(MIN_SWEEPS, MOVE_BUDGET // max(n_items, 1))))


def refine_grid(
    positions: np.ndarray,
    n_rows: int,
    n_cols: int,
    graph: np.ndarray,
    sweeps: int = MAX_SWEEPS,
    random_state: int = 0,
) -> np.ndarray:
    """Move items between cells so that more of each item's graph neighbours share
    its neighbourhood on the grid; returns new int32 (N, 2) (row, col) positions.

    ``graph`` is int (N, K): each item's nearest items in the layout vectors, nearest
    first (``reduce.neighbour_graph``). The objective is the sum over graph edges
    (the first ``CLOSE_NEIGHBOURS`` columns weigh 1, the others ``FAR_WEIGHT``, both
    directions counted) of how close the two cells are: 1 for the 8 around a cell,
    0.5 two cells away on a row or column, 0.15 elsewhere within a 5 x 5 block, 0
    further; it mirrors grid P@10, which asks whether an item's 10 nearest
    neighbours are in its 10 nearest cells. Simulated annealing: ``sweeps`` passes
    over the cells in row-major order; each proposes to swap the cell's item with the
    item (or the empty cell) next to one of its neighbours, at a temperature falling
    geometrically from ``START_TEMPERATURE`` to ``END_TEMPERATURE``. The grid stays a
    bijection onto the same cells; a seed repeats. O(sweeps x N x K) time, O(N x K)
    memory; items are renumbered in cell order so that a pass walks memory in order.
    """
    import scipy.sparse

    positions = np.asarray(positions)
    n_items = len(positions)
    if sweeps <= 0 or n_items < 3:
        return positions.astype(np.int32)
    cells = positions[:, 0].astype(np.int64) * n_cols + positions[:, 1]
    order = np.argsort(cells, kind="stable")  # new id -> item id
    renumber = np.empty(n_items, dtype=np.int64)
    renumber[order] = np.arange(n_items)
    edges = renumber[np.asarray(graph)[order]]
    k = edges.shape[1]
    weights = np.where(np.arange(k) < CLOSE_NEIGHBOURS, 1.0, FAR_WEIGHT).astype(np.float32)
    matrix = scipy.sparse.csr_matrix(
        (np.tile(weights, n_items), edges.ravel(), np.arange(0, n_items * k + 1, k)),
        shape=(n_items, n_items))
    matrix = (matrix + matrix.T).tocsr()
    matrix.setdiag(0)
    matrix.eliminate_zeros()
    pos = np.ascontiguousarray(positions[order], dtype=np.int64)
    cell_item = np.full(n_rows * n_cols, -1, dtype=np.int64)
    cell_item[pos[:, 0] * n_cols + pos[:, 1]] = np.arange(n_items)
    _anneal_kernel()(pos, cell_item, n_rows, n_cols, matrix.indptr.astype(np.int64),
                     matrix.indices.astype(np.int32), matrix.data.astype(np.float32),
                     sweeps, START_TEMPERATURE, END_TEMPERATURE, random_state)
    out = np.empty((n_items, 2), dtype=np.int32)
    out[order] = pos
    return out


@functools.cache
def _anneal_kernel():
    """The numba-compiled annealing loop of ``refine_grid`` (compiled on first use)."""
    from numba import njit

    @njit(inline="always")
    def closeness(dr, dc):
        d2 = dr * dr + dc * dc
        if d2 <= 2:
            return 1.0
        if d2 == 4:
            return 0.5
        if d2 <= 8:
            return 0.15
        return 0.0

    @njit
    def anneal(pos, cell_item, n_rows, n_cols, indptr, indices, weights, sweeps, t_start,
               t_end, seed):
        np.random.seed(seed)
        for sweep in range(sweeps):
            temperature = t_start * (t_end / t_start) ** (sweep / max(sweeps - 1, 1))
            for cell in range(n_rows * n_cols):
                i = cell_item[cell]
                if i < 0:
                    continue
                start, end = indptr[i], indptr[i + 1]
                if end == start:
                    continue
                u = indices[start + np.random.randint(end - start)]
                tr = pos[u, 0] + np.random.randint(-1, 2)
                tc = pos[u, 1] + np.random.randint(-1, 2)
                if tr < 0 or tc < 0 or tr >= n_rows or tc >= n_cols:
                    continue
                ar, ac = pos[i, 0], pos[i, 1]
                if tr == ar and tc == ac:
                    continue
                j = cell_item[tr * n_cols + tc]
                delta = 0.0
                for q in range(start, end):
                    v = indices[q]
                    if v != j:
                        delta += weights[q] * (closeness(tr - pos[v, 0], tc - pos[v, 1])
                                               - closeness(ar - pos[v, 0], ac - pos[v, 1]))
                if j >= 0:
                    for q in range(indptr[j], indptr[j + 1]):
                        v = indices[q]
                        if v != i:
                            delta += weights[q] * (
                                closeness(ar - pos[v, 0], ac - pos[v, 1])
                                - closeness(tr - pos[v, 0], tc - pos[v, 1]))
                if delta > 0 or np.random.random() < np.exp(delta / temperature):
                    pos[i, 0], pos[i, 1] = tr, tc
                    cell_item[tr * n_cols + tc] = i
                    cell_item[ar * n_cols + ac] = j
                    if j >= 0:
                        pos[j, 0], pos[j, 1] = ar, ac

    return anneal
