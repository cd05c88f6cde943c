"""Grid quality on a labelled real collection: grid P@10 and label agreement per grid method.

On a bundle that ``python run.py pipeline`` built (default flags) from one of
``bench/real_collections.py``'s collections, with its labels CSV:

    python bench/real_collections.py --vendor google --to /work/bench-data/real
    python run.py pipeline --images /work/bench-data/real/emoji-google/images \\
        --metadata /work/bench-data/real/emoji-google/labels.csv \\
        --out /work/bench-data/out --id emoji-google
    python bench/grid_quality_bench.py --bundle /work/bench-data/out/emoji-google \\
        --labels /work/bench-data/real/emoji-google/labels.csv

The bundle's own layout (``layout.npy``) is snapped by each method; features are
the layout embedding in PCA-50 space (``mosaic.quality``). ``flas`` (vc-flas,
``pip install vc-flas``; not a project dependency) sorts the features itself.
A random grid is the negative control.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosaic import quality  # noqa: E402
from mosaic.bundle import open_vectors, read_manifest  # noqa: E402
from mosaic.pipeline import grid, reduce  # noqa: E402


def flas_positions(features: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    import vc_flas

    ids = np.full((n_rows, n_cols), -1, np.int32)
    ids.flat[:len(features)] = np.arange(len(features))
    sorting = vc_flas.flas(vc_flas.Grid(features, ids, ids < 0,
                                        np.arange(len(features), dtype=np.uint32)),
                           seed=1, radius_decay=0.99).sorting
    positions = np.empty((len(features), 2), np.int64)
    rows, cols = np.nonzero(sorting >= 0)
    positions[sorting[rows, cols]] = np.column_stack([rows, cols])
    return positions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--label-column", default="subcategory")
    parser.add_argument("--flas", action="store_true", help="also vc-flas (pip install vc-flas)")
    args = parser.parse_args()
    manifest = read_manifest(args.bundle)
    entry = next(e for e in manifest["embeddings"]
                 if e["name"] == manifest["layout"]["embedding"])
    features = reduce.reduce_pca(np.asarray(open_vectors(args.bundle, entry)[:], np.float32),
                                 quality.FEATURE_DIMS)
    rows = sorted(csv.DictReader(open(args.labels, newline="")), key=lambda r: r["filename"])
    names = sorted({r[args.label_column] for r in rows})
    labels = np.array([names.index(r[args.label_column]) for r in rows])
    xy = np.load(args.bundle / "layout.npy")
    results = {}
    for method in ("rasterfairy", "lap"):
        started = time.perf_counter()
        positions, (n_rows, n_cols) = grid.assign_grid(xy, method)
        results[method] = (positions, time.perf_counter() - started)
    results["random (control)"] = (np.random.default_rng(0).permutation(results["lap"][0]), 0.0)
    if args.flas:
        started = time.perf_counter()
        results["flas"] = (flas_positions(features, n_rows, n_cols),
                           time.perf_counter() - started)
    print(f"| grid | grid P@10 | label agreement@10 | seconds |  ({len(xy)} items)")
    for name, (positions, seconds) in results.items():
        print(f"| {name} | {quality.grid_precision(features, positions):.3f} | "
              f"{quality.label_agreement(labels, positions):.3f} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
