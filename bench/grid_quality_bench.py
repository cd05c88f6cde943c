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
Each of rasterfairy and lap is also shown refined (``grid.refine_grid``, with the
graph the pipeline makes: ``reduce.neighbour_graph`` of the layout's PCA vectors; its
seconds include the graph). DPQ16 needs vc-flas too. A random grid is the negative
control.
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
    parser.add_argument("--sweeps", type=int, default=0,
                        help="refinement sweeps (default: the pipeline's at this N)")
    parser.add_argument("--jobs", type=int, default=2)
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
    # The refinement's graph, as the pipeline makes it: neighbours in the layout's PCA.
    vectors = np.asarray(open_vectors(args.bundle, entry)[:], np.float32)
    high = reduce.reduce_pca(vectors, manifest["layout"]["pca"]) \
        if manifest["layout"]["pca"] else vectors
    started = time.perf_counter()
    graph = reduce.neighbour_graph(high, reduce.GRAPH_K, manifest["layout"].get(
        "metric", "euclidean"), 0, args.jobs)
    graph_seconds = time.perf_counter() - started
    results = {}
    for method in ("rasterfairy", "lap"):
        started = time.perf_counter()
        positions, (n_rows, n_cols) = grid.assign_grid(xy, method)
        results[method] = (positions, time.perf_counter() - started)
        sweeps = args.sweeps or grid.default_sweeps(len(xy))
        started = time.perf_counter()
        refined = grid.refine_grid(positions, n_rows, n_cols, graph, sweeps)
        results[f"{method} + {sweeps} sweeps"] = (
            refined, results[method][1] + time.perf_counter() - started + graph_seconds)
    results["random (control)"] = (np.random.default_rng(0).permutation(results["lap"][0]), 0.0)
    if args.flas:
        started = time.perf_counter()
        results["flas"] = (flas_positions(features, n_rows, n_cols),
                           time.perf_counter() - started)
    print(f"| grid | grid P@10 | label agreement@10 | DPQ16 | seconds |  ({len(xy)} items)")
    for name, (positions, seconds) in results.items():
        print(f"| {name} | {quality.grid_precision(features, positions):.3f} | "
              f"{quality.label_agreement(labels, positions):.3f} | "
              f"{dpq16(features, positions, n_rows, n_cols)} | {seconds:.1f} |")
    return 0


def dpq16(features: np.ndarray, positions: np.ndarray, n_rows: int, n_cols: int) -> str:
    """vc-flas's distance preservation quality DPQ_16 of the arrangement (empty cells as
    holes), or "-" without vc-flas."""
    try:
        from vc_flas.metrics import distance_preservation_quality
    except ImportError:
        return "-"
    arranged = np.zeros((n_rows, n_cols, features.shape[1]), np.float32)
    valid = np.zeros((n_rows, n_cols), bool)
    arranged[positions[:, 0], positions[:, 1]] = features
    valid[positions[:, 0], positions[:, 1]] = True
    return f"{distance_preservation_quality(arranged, valid, p=16):.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
