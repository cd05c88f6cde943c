"""Where ``run.py add`` puts new pictures: the placement alone, simulated on a living bench.

    python bench/placement_bench.py --work /work/bench-living100k

Reads the two builds of ``bench/living_bench.py`` (``out/c``: the base, ``out/full``:
everything) and places the held-out items (the full build's pictures the base lacks)
on the base's grid, grown as ``add`` grows it, without decoding or rendering anything:
their vectors come from the full build, their 10 nearest base items are exact. Each
placement is scored as the living bench scores a real ``add`` (grid P@10, PCA-50 of
the ``pixels`` vectors of the full build, exact neighbours): the added items, and
20,000 old items of the map (the added left out of the sample), with the existing
items moved and the placement's CPU time. Prints one line a placement.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from living_bench import sources  # noqa: E402  (bench/, the script's folder)

from mosaic import quality  # noqa: E402
from mosaic.bundle import open_vectors, read_manifest  # noqa: E402
from mosaic.pipeline.place import FIT_K, FreeCells, place_items  # noqa: E402
from mosaic.pipeline.reduce import PLACE_K  # noqa: E402


def nearest_free(grid, positions, targets, items, near, lists, reach, cost):
    """``add`` before: the free cell nearest the target (``reach``, ``cost`` unused)."""
    free = FreeCells(grid)
    for index in np.lexsort((targets[:, 1], targets[:, 0])).tolist():
        cell = free.take_nearest(tuple(int(v) for v in np.clip(
            np.round(targets[index]), 0, np.array(grid.shape) - 1)))
        grid[cell] = items[index]
        positions[items[index]] = cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a living bench's --work")
    args = parser.parse_args()
    base, full = args.work / "out" / "c", args.work / "out" / "full"
    base_ids, full_ids = sources(base), sources(full)
    new = [s for s in sorted(full_ids) if s not in base_ids]
    lead = read_manifest(full)["embeddings"][0]
    vectors = np.asarray(open_vectors(full, lead)[:], np.float32)
    old_vectors = vectors[[full_ids[s] for s in sorted(base_ids, key=base_ids.get)]]
    new_vectors = vectors[[full_ids[s] for s in new]]
    squares = (old_vectors ** 2).sum(axis=1)  # exact nearest: |a|^2 - 2ab ranks as |a - b|^2
    near = np.concatenate([np.argsort(squares - 2 * block @ old_vectors.T, axis=1)[:, :PLACE_K]
                           for block in np.array_split(new_vectors, max(1, len(new) // 100))])
    manifest = read_manifest(base)
    n_rows, n_cols = manifest["grid"]["n_rows"], manifest["grid"]["n_cols"]
    grid0 = np.fromfile(base / "grid.i32", dtype="<i4").reshape(n_rows, n_cols)
    positions0 = np.load(base / "positions.npy")
    lists = np.load(base / manifest["embeddings"][0]["top"]["ids"], mmap_mode="r")[:, :FIT_K]
    lists = np.ascontiguousarray(lists)
    n_old = len(positions0)
    # scoring, in the full build's feature space, items by source
    order = sorted(full_ids)
    features = PCA(quality.FEATURE_DIMS, random_state=0).fit_transform(vectors)
    features = features[[full_ids[s] for s in order]]
    new_ids = {s: n_old + i for i, s in enumerate(new)}
    ours = np.array([base_ids[s] if s in base_ids else new_ids[s] for s in order])
    added = np.flatnonzero(ours >= n_old)
    wide = quality.query_ids(len(order), 20_000, random_state=1)
    wide = wide[ours[wide] < n_old]
    near_added = quality.feature_neighbours(features, added)
    near_wide = quality.feature_neighbours(features, wide)

    placements = [("nearest free cell (reach 0)", nearest_free, 0, 0.0)]
    placements += [(f"reach {reach}, displaced item's fit at {cost}x", place_items, reach, cost)
                   for reach, cost in ((8, 1.0), (8, 0.75), (8, 0.5), (8, 0.0), (4, 0.5),
                                       (16, 0.5))]
    for name, place, reach, cost in placements:
        short = len(new) - int((grid0 < 0).sum())
        grid = np.concatenate([grid0, np.full((max(0, math.ceil(short / n_cols)), n_cols), -1,
                                              dtype=grid0.dtype)])
        targets = np.array([np.median(positions0[row], axis=0) for row in near])
        positions = np.concatenate([positions0, np.full((len(new), 2), -1, positions0.dtype)])
        started = time.process_time()
        place(grid, positions, targets, np.arange(n_old, n_old + len(new)), near, lists, reach,
              cost)
        seconds = time.process_time() - started
        moved = (positions[:n_old] != positions0).any(axis=1)
        by_source = positions[ours]
        print(f"{name}: added P@10 "
              f"{quality.neighbour_precision(near_added, by_source, added):.4f}, old items' "
              f"P@10 {quality.neighbour_precision(near_wide, by_source, wide):.4f}, "
              f"{int(moved.sum()):,} existing items moved, {seconds:.2f} s CPU", flush=True)


if __name__ == "__main__":
    main()
