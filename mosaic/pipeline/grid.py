"""Grid stage: snap 2-D points onto a near-square grid, one item per cell.

Two methods:

- ``rasterfairy``: recursive proportional bisection, after Mario Klingemann's
  RasterFairy (https://github.com/Quasimondo/RasterFairy). The grid rectangle
  is cut along its longer side at a row/column line, the points are cut at the
  same proportion along the matching axis, and both halves recurse. O(N log^2 N)
  time, O(N) memory; the default for large N.
- ``lap``: the exact linear assignment that minimises the summed squared
  displacement in cell units (scipy's ``linear_sum_assignment``). Cubic time
  and an N x cells cost matrix, so it is refused above ``LAP_MAX_ITEMS``.
"""

from __future__ import annotations

import numpy as np

from mosaic.bundle import cell_ids, grid_shape  # noqa: F401  (part of this stage's API)
from mosaic.errors import UsageError

METHODS = ("auto", "rasterfairy", "lap")
# Measured here (docs/benchmarks.md): lap takes 0.5 s at 1k items, 4.5 s at 2k, ~30 s at 5k.
LAP_AUTO_MAX_ITEMS = 1_000
LAP_MAX_ITEMS = 5_000


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
