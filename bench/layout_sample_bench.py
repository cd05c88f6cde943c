"""Layout at scale: a full openTSNE fit against the large-collection method, by grid P@10.

Above ``--layout-sample`` items (``reduce.LAYOUT_SAMPLE``) the pipeline fits
openTSNE on a seeded sample, places every other item with ``prepare_partial``
and then optimises all items together (``reduce.tsne_sample_place_refine``).
This measures each variant on the vectors of a real bundle (a ``pipeline`` run
with default flags on ``bench/distinct_images.py``'s pictures), the first ``--n``
items, with the pipeline's own PCA (``manifest.layout.pca``):

- layout seconds (the 2-D fit alone, PCA excluded) and peak RSS of the process
  up to then;
- **grid P@10** (``mosaic.quality``, features = the first 50 components of the
  pipeline's PCA, as its ``grid.quality``) of the layout on the default grid:
  RasterFairy above 1,000 items, then the refinement with its default sweeps and
  the pipeline's neighbour graph (``unrefined_grid_p10``: before the refinement);
- kNN preservation of the continuous layout (the same P@10 on the 2-D points
  instead of grid cells), which shows what the snapping loses;
- with ``--labels`` (the collection's labels.csv), label agreement of the grid;
- a random placement as the negative control.

    python bench/layout_sample_bench.py --bundle /work/bench-data/out/distinct-300000 \\
        --n 300000 --variant full --variant refine:100000:250 \\
        --results docs/data/layout_sample.jsonl

A variant is ``full``, ``place:SAMPLE`` (sample + place, no refinement),
``refine:SAMPLE:ITER[:EXAG]`` (sample + place + ITER plain iterations on all
items, after EXAG exaggerated ones) or ``fast:TREES:ITER`` (a full fit with
Annoy at TREES trees instead of openTSNE's 50 and ITER plain iterations after
the usual 250 exaggerated ones, instead of 500) or ``bundle`` (the bundle's own
``layout.npy``: what the pipeline shipped, measured on the same items; its time is in
the manifest's ``timings``). Each variant runs in its own process, so
its peak RSS is its own; the PCA vectors are cached in ``--cache``, and the grid
refinement's neighbour graph is the bundle's own (``cache/layout-graph.npy``) when
``--n`` is the bundle's size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mosaic import quality  # noqa: E402
from mosaic.bundle import open_vectors, read_manifest  # noqa: E402
from mosaic.pipeline import grid, reduce  # noqa: E402
from mosaic.pipeline.orchestrator import LAYOUT_GRAPH  # noqa: E402


def pca_vectors(bundle: Path, n: int, cache: Path, jobs: int = 2
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the pipeline's PCA of the first ``n`` layout vectors, their first 50 components
    as the pipeline's quality report takes them, the grid refinement's graph), cached."""
    cache.mkdir(parents=True, exist_ok=True)
    high_path, graph_path = cache / f"pca-{n}.npy", cache / f"graph-{n}.npy"
    if not graph_path.exists():
        manifest = read_manifest(bundle)
        entry = next(e for e in manifest["embeddings"]
                     if e["name"] == manifest["layout"]["embedding"])
        vectors = open_vectors(bundle, entry)[:n]
        pca = manifest["layout"]["pca"] or vectors.shape[1]
        high = reduce.reduce_pca(vectors, pca)
        np.save(high_path, high)
        stored = bundle / LAYOUT_GRAPH  # the pipeline's own graph, when it is of these n
        if stored.exists() and len(np.load(stored, mmap_mode="r")) == n:
            np.save(graph_path, np.load(stored))
        else:
            np.save(graph_path, reduce.neighbour_graph(high, reduce.GRAPH_K, n_jobs=jobs))
    high = np.load(high_path, mmap_mode="r")
    return high, high[:, :quality.FEATURE_DIMS], np.load(graph_path)


def layout(variant: str, high: np.ndarray, jobs: int, bundle: Path) -> np.ndarray:
    kind, *numbers = variant.split(":")
    high = np.ascontiguousarray(high, dtype=np.float32)
    if kind == "full":
        return reduce.layout_2d(high, n_jobs=jobs, sample=None, fast=None)  # openTSNE defaults
    if kind == "random":
        return np.random.default_rng(2).random((len(high), 2))
    if kind == "bundle":  # the layout the pipeline shipped (its time: the manifest's timings)
        return np.load(bundle / "layout.npy")[:len(high)]
    if kind == "fast":  # a full fit with a cheaper kNN and fewer plain iterations
        from openTSNE import TSNE

        trees, n_iter = int(numbers[0]), int(numbers[1])
        return np.asarray(TSNE(n_iter=n_iter, n_jobs=jobs, random_state=0,
                               knn_kwargs={"n_trees": trees}).fit(high))
    sample = int(numbers[0])
    refine_iter = int(numbers[1]) if kind == "refine" else 0
    exaggerated = int(numbers[2]) if len(numbers) > 2 else 0
    return reduce.tsne_sample_place_refine(high, sample, n_jobs=jobs, refine_iter=refine_iter,
                                           refine_exaggeration_iter=exaggerated)


def measure(args: argparse.Namespace) -> dict:
    """One variant, in this process."""
    high, features, graph = pca_vectors(args.bundle, args.n, args.cache, args.jobs)
    started = time.perf_counter()
    xy = layout(args.one, high, args.jobs, args.bundle)
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    positions, (n_rows, n_cols) = grid.assign_grid(
        reduce.scale_unit(np.asarray(xy, np.float64)), "auto")
    refined = grid.refine_grid(positions, n_rows, n_cols, graph,
                               grid.default_sweeps(len(positions)))
    features = np.ascontiguousarray(features)
    result = {"variant": args.one, "n": args.n, "jobs": args.jobs,
              "layout_s": round(seconds, 1), "peak_rss_gb": round(rss, 2),
              "grid_p10": round(quality.grid_precision(features, refined), 3),
              "unrefined_grid_p10": round(quality.grid_precision(features, positions), 3),
              "layout_p10": round(quality.grid_precision(features, xy), 3)}
    if args.labels:
        codes = class_codes(args.labels, args.n)
        result["label_agreement"] = round(quality.label_agreement(codes, refined), 3)
    return result


def class_codes(labels: Path, n: int) -> np.ndarray:
    """The ``class`` column of a distinct_images labels.csv, first ``n`` rows, as codes.

    The pipeline's ids follow the sorted input list, which is the labels' order."""
    import csv

    with open(labels, newline="") as handle:
        values = [row["class"] for _, row in zip(range(n), csv.DictReader(handle))]
    return reduce.encode_labels(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--n", type=int, required=True, help="items to use (the first N)")
    parser.add_argument("--variant", action="append", default=[],
                        help="full | place:SAMPLE | refine:SAMPLE:ITER[:EXAG] | "
                        "fast:TREES:ITER | random")
    parser.add_argument("--labels", type=Path, help="labels.csv with a class column")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/layout-sample-cache"))
    parser.add_argument("--results", type=Path, help="append one JSON line per variant")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single variant, in-process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args)), flush=True)
        return 0
    pca_vectors(args.bundle, args.n, args.cache, args.jobs)  # once, before the variants
    for variant in args.variant or ["full", f"refine:{reduce.LAYOUT_SAMPLE}:"
                                    f"{reduce.REFINE_ITER}", "random"]:
        command = [sys.executable, __file__, "--bundle", str(args.bundle), "--n", str(args.n),
                   "--jobs", str(args.jobs), "--cache", str(args.cache), "--one", variant]
        if args.labels:
            command += ["--labels", str(args.labels)]
        line = subprocess.run(command, check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1]
        print(line, flush=True)
        if args.results:
            with open(args.results, "a") as handle:
                handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
