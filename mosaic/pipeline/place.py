"""Where ``run.py add`` puts new items on a similarity grid that has no room for them.

A new item belongs at the median cell of its nearest existing items (its
*target*). On a full grid the free cells are the rows grown at the bottom, far
from there. ``place_items`` makes room by eviction instead of by pushing: within
``reach`` cells of the target it picks the cell whose surroundings hold most of
the new item's nearest items (its *gain*), less ``evict_cost`` times the *fit*
of the item that cell holds (how many of that item's own stored nearest items
lie around it). That item, a misfit on a good pick, moves to the free cell
nearest its own target (on a full grid, in the rows at the bottom); nothing else
moves. A free cell in the window costs nothing to take.

Both scores count an item's listed neighbours by the squared cell distance to
it, as the map-quality metric (``mosaic.quality``, grid P@10: a neighbour among
the 10 nearest cells) would: 1 for the 8 cells around, 0.5 two cells along an
axis (4 cells, 2 of them among the 10 nearest), else 0.

Measured on 100,000 distinct pictures + 1,000 added (docs/benchmarks.md, "A
living collection"): the added items' grid P@10 0.276 against 0.328 when a full
rebuild places them and 0.007 for the nearest free cell with short pushes,
996 existing items (1 %) moved, the rest of the map's P@10 0.332 -> 0.328.
"""

from __future__ import annotations

import numpy as np

from mosaic.errors import MosaicError

REACH = 8  # cells (Chebyshev) around its target where a new item may take a cell
# A displaced item's fit counts half against a new item's gain: 1.0 keeps the map's own
# order best (added items' P@10 0.21 at 100k), 0 places new items best (0.30) and costs
# the map most; 0.5 meets the goal (0.8x a full rebuild) at a third of that cost.
EVICT_COST = 0.5
FIT_K = 10  # listed neighbours an item's fit counts


def cell_weights(d2: np.ndarray) -> np.ndarray:
    """How much a neighbour at squared cell distance ``d2`` counts: 1 for the 8 cells
    around, 0.5 at distance 2 along an axis, 0 farther."""
    return np.where(d2 <= 2, 1.0, np.where(d2 <= 4, 0.5, 0.0))


def fits(items: np.ndarray, cells: np.ndarray, lists: np.ndarray,
         positions: np.ndarray) -> np.ndarray:
    """float (len(items),): for each of ``items`` at ``cells`` (n, 2), its listed
    neighbours (``lists[item]``, -1 past the end) weighted by ``cell_weights`` of their
    distance on the grid ``positions`` (-1: off the map, not counted)."""
    near = lists[items]
    valid = near >= 0
    at = positions[np.where(valid, near, 0)]
    valid &= at[..., 0] >= 0
    d2 = ((at - cells[:, None, :]) ** 2).sum(axis=-1)
    return (cell_weights(d2) * valid).sum(axis=1)


def place_items(grid: np.ndarray, positions: np.ndarray, targets: np.ndarray,
                items: np.ndarray, near: np.ndarray, lists: np.ndarray | None,
                reach: int = REACH, evict_cost: float = EVICT_COST
                ) -> tuple[np.ndarray, np.ndarray]:
    """Put each of ``items`` on ``grid`` ((rows, cols) ids, -1 free; changed in place)
    and write its ``positions`` row ((row, col); (-1, -1) before), top targets first.

    ``targets`` (n, 2) float: each item's target cell; ``near`` (n, k) int: its nearest
    existing items (-1 past the end); ``lists`` (N_old, k') int: every existing item's
    own nearest items, for its fit (None: no item is displaced, new items take free cells
    only). ``reach`` 0: no existing item moves. The grid must have a free cell for
    every item. Returns the cells whose item changed, int (m, 2), and the ids of the
    existing items displaced (each moved once, to a free cell)."""
    n_rows, n_cols = grid.shape
    free = FreeCells(grid)
    fixed = np.zeros(len(positions), dtype=bool)  # placed new items, moved old ones
    changed: list[tuple[int, int]] = []
    displaced: list[int] = []

    def put_free(item: int, target) -> None:
        r, c = free.take_nearest((int(np.clip(round(target[0]), 0, n_rows - 1)),
                                  int(np.clip(round(target[1]), 0, n_cols - 1))))
        grid[r, c] = item
        positions[item] = (r, c)
        fixed[item] = True
        changed.append((r, c))

    order = np.lexsort((targets[:, 1], targets[:, 0]))
    for index in order.tolist():
        item, target = int(items[index]), targets[index]
        mine = near[index][near[index] >= 0]
        mine = mine[positions[mine, 0] >= 0]
        if reach <= 0 or not len(mine):
            put_free(item, target)
            continue
        row, col = (int(np.clip(round(target[0]), 0, n_rows - 1)),
                    int(np.clip(round(target[1]), 0, n_cols - 1)))
        rows, cols = np.mgrid[max(0, row - reach):min(n_rows, row + reach + 1),
                              max(0, col - reach):min(n_cols, col + reach + 1)]
        rows, cols = rows.ravel(), cols.ravel()
        held = grid[rows, cols]
        d2 = ((rows[:, None] - positions[mine, 0]) ** 2
              + (cols[:, None] - positions[mine, 1]) ** 2)
        gain = (cell_weights(d2) * (mine[None, :] != held[:, None])).sum(axis=1)
        taken = held >= 0
        cost = np.where(taken, np.inf, 0.0)
        movable = taken & ~fixed[np.maximum(held, 0)]
        if lists is not None and movable.any():
            cost[movable] = evict_cost * fits(held[movable], np.column_stack(
                [rows[movable], cols[movable]]), lists, positions)
        net = gain - cost - 1e-3 * ((rows - target[0]) ** 2 + (cols - target[1]) ** 2)
        best = int(np.argmax(net))
        if not (gain[best] > 0 and net[best] > 0):
            put_free(item, target)
            continue
        cell = (int(rows[best]), int(cols[best]))
        other = int(held[best])
        if other < 0:
            free.take(cell)
        grid[cell] = item
        positions[item] = cell
        fixed[item] = True
        changed.append(cell)
        if other >= 0:  # the displaced item: to the free cell nearest its own target
            positions[other] = (-1, -1)
            own = lists[other][lists[other] >= 0]
            own = own[positions[own, 0] >= 0]
            put_free(other, np.median(positions[own], axis=0) if len(own) else cell)
            displaced.append(other)
    return (np.array(changed, dtype=np.int64).reshape(-1, 2),
            np.array(displaced, dtype=np.int64))


class FreeCells:
    """The free cells of a grid, nearest first from any cell (a k-d tree over the cells
    free at the start; a cell once taken stays taken: placing only fills free cells)."""

    def __init__(self, grid: np.ndarray) -> None:
        # scipy.spatial (0.2 s to import) here, not at the top: every CLI start imports
        # this module for --reach's default
        from scipy.spatial import cKDTree

        self.cells = np.argwhere(grid < 0)
        self.tree = cKDTree(self.cells) if len(self.cells) else None
        self.taken = np.zeros(len(self.cells), dtype=bool)
        self.index = {(int(r), int(c)): i for i, (r, c) in enumerate(self.cells.tolist())}

    def take(self, cell: tuple[int, int]) -> None:
        """Mark the free ``cell`` taken."""
        self.taken[self.index[cell]] = True

    def take_nearest(self, cell: tuple[int, int]) -> tuple[int, int]:
        """The free cell nearest ``cell`` (ties: the lowest row, then column), now taken."""
        if self.tree is None:
            raise MosaicError("no free cell left on the grid")
        k = 16
        while True:
            k = min(k, len(self.cells))
            distances, found = self.tree.query(cell, k=k)
            distances, found = np.atleast_1d(distances), np.atleast_1d(found)
            ok = ~self.taken[found]
            if ok.any():
                best = distances[ok].min()
                tied = found[ok & (distances <= best + 1e-9)]
                # among equals, the first in reading order (the same as a spiral's)
                pick = tied[np.lexsort((self.cells[tied, 1], self.cells[tied, 0]))[0]]
                if k == len(self.cells) or distances.max() > best + 1e-9:
                    self.taken[pick] = True
                    return int(self.cells[pick, 0]), int(self.cells[pick, 1])
            if k == len(self.cells):
                raise MosaicError("no free cell left on the grid")
            k *= 4
