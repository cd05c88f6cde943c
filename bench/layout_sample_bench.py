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

``shipped`` is the pipeline's layout stage as it runs now, after the PCA: its one
neighbour search (``reduce.layout_neighbours``) for the openTSNE fit (``layout_2d`` with
the default ``--layout-fast`` and ``--layout-sample``) and for the grid refinement's
graph, which it uses instead of the cached one; ``graph_s`` is then 0 and the search is
in ``layout_s``. ``full`` and ``fast`` search the graph again, as the stage did before
(openTSNE kept its own search to itself), and report that search as ``graph_s``.

``--vectors DIR`` instead of ``--bundle``: ``bench/scene_vectors.py``'s ``vectors.npy``
(the ``pixels`` vectors of generated scenes drawn small, not decoded from files) and
``classes.npy`` (the label agreement's classes), with the pipeline's default PCA (256).
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


class FirstRows:
    """The first ``n`` rows of a row reader (``VectorRows``), as ``reduce_pca`` reads."""

    def __init__(self, rows, n: int):
        self.rows, self.shape = rows, (n, rows.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, _ = index.indices(self.shape[0])
        return self.rows[start:stop]


def pca_vectors(bundle: Path | None, n: int, cache: Path,
                scenes: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(the pipeline's PCA of the first ``n`` layout vectors, their first 50 components
    as the pipeline's quality report takes them), cached."""
    cache.mkdir(parents=True, exist_ok=True)
    high_path = cache / f"pca-{n}.npy"
    if not high_path.exists():
        if scenes is not None:
            from mosaic.bundle import VectorRows

            vectors, pca = FirstRows(VectorRows(scenes / "vectors.npy", 1 / 255), n), 256
        else:
            manifest = read_manifest(bundle)
            entry = next(e for e in manifest["embeddings"]
                         if e["name"] == manifest["layout"]["embedding"])
            vectors = open_vectors(bundle, entry)[:n]
            pca = manifest["layout"]["pca"] or vectors.shape[1]
        np.save(high_path, reduce.reduce_pca(vectors, pca))
    high = np.load(high_path, mmap_mode="r")
    return high, high[:, :quality.FEATURE_DIMS]


def cached_graph(bundle: Path | None, high: np.ndarray, cache: Path, jobs: int) -> np.ndarray:
    """The grid refinement's graph for the variants that do not make one: the bundle's
    own when it is of these items, else one search (as the stage made it before), cached."""
    graph_path = cache / f"graph-{len(high)}.npy"
    if not graph_path.exists():
        stored = bundle / LAYOUT_GRAPH if bundle else graph_path
        if stored.exists() and len(np.load(stored, mmap_mode="r")) == len(high):
            np.save(graph_path, np.load(stored))
        else:
            np.save(graph_path, reduce.neighbour_graph(
                np.ascontiguousarray(high, dtype=np.float32), reduce.GRAPH_K, n_jobs=jobs))
    return np.load(graph_path)


def layout(variant: str, high: np.ndarray, jobs: int, bundle: Path | None
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """(the variant's layout, the grid refinement's graph when the variant makes it)."""
    kind, *numbers = variant.split(":")
    high = np.ascontiguousarray(high, dtype=np.float32)
    if kind == "shipped":  # the layout stage's search, fit and graph, as the pipeline runs
        shared = reduce.layout_neighbours(high, n_jobs=jobs)
        xy = reduce.layout_2d(high, n_jobs=jobs, neighbours=shared)
        return xy, reduce.neighbour_graph(high, reduce.GRAPH_K, n_jobs=jobs, neighbours=shared)
    if kind == "full":  # openTSNE's own defaults, its search kept to itself
        from openTSNE import TSNE

        return np.asarray(TSNE(n_jobs=jobs, random_state=0).fit(high)), None
    if kind == "random":
        return np.random.default_rng(2).random((len(high), 2)), None
    if kind == "bundle":  # the layout the pipeline shipped (its time: the manifest's timings)
        return np.load(bundle / "layout.npy")[:len(high)], None
    if kind == "fast":  # a full fit with a cheaper kNN and fewer plain iterations
        from openTSNE import TSNE

        trees, n_iter = int(numbers[0]), int(numbers[1])
        return np.asarray(TSNE(n_iter=n_iter, n_jobs=jobs, random_state=0,
                               knn_kwargs={"n_trees": trees}).fit(high)), None
    sample = int(numbers[0])
    refine_iter = int(numbers[1]) if kind == "refine" else 0
    exaggerated = int(numbers[2]) if len(numbers) > 2 else 0
    return reduce.tsne_sample_place_refine(high, sample, n_jobs=jobs, refine_iter=refine_iter,
                                           refine_exaggeration_iter=exaggerated), None


def measure(args: argparse.Namespace) -> dict:
    """One variant, in this process."""
    high, features = pca_vectors(args.bundle, args.n, args.cache, args.vectors)
    started = time.perf_counter()
    xy, graph = layout(args.one, high, args.jobs, args.bundle)
    seconds = time.perf_counter() - started
    graph_seconds = 0.0
    if graph is None and args.one.split(":")[0] in ("full", "fast"):
        started = time.perf_counter()  # the stage's second search, before the shared one
        graph = reduce.neighbour_graph(np.ascontiguousarray(high, dtype=np.float32),
                                       reduce.GRAPH_K, n_jobs=args.jobs)
        graph_seconds = time.perf_counter() - started
        if not (args.cache / f"graph-{args.n}.npy").exists():  # for the variants after
            np.save(args.cache / f"graph-{args.n}.npy", graph)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    if graph is None:
        graph = cached_graph(args.bundle, high, args.cache, args.jobs)
    positions, (n_rows, n_cols) = grid.assign_grid(
        reduce.scale_unit(np.asarray(xy, np.float64)), "auto")
    refined = grid.refine_grid(positions, n_rows, n_cols, graph,
                               grid.default_sweeps(len(positions)))
    features = np.ascontiguousarray(features)
    result = {"variant": args.one, "n": args.n, "jobs": args.jobs,
              "layout_s": round(seconds, 1), "graph_s": round(graph_seconds, 1),
              "peak_rss_gb": round(rss, 2),
              "grid_p10": round(quality.grid_precision(features, refined), 3),
              "unrefined_grid_p10": round(quality.grid_precision(features, positions), 3),
              # the 2-D points in cell units (the grid's side is about sqrt(N) cells), so
              # that the metric's tie-breaking jitter (in cell units) is as small here
              "layout_p10": round(quality.grid_precision(features, reduce.scale_unit(
                  np.asarray(xy, np.float64)) * np.sqrt(len(xy))), 3)}
    if args.labels or args.vectors:
        codes = class_codes(args.labels, args.n) if args.labels else \
            np.load(args.vectors / "classes.npy")[:args.n].astype(np.int64)
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path)
    source.add_argument("--vectors", type=Path, help="a bench/scene_vectors.py folder")
    parser.add_argument("--n", type=int, required=True, help="items to use (the first N)")
    parser.add_argument("--variant", action="append", default=[],
                        help="shipped | full | place:SAMPLE | refine:SAMPLE:ITER[:EXAG] | "
                        "fast:TREES:ITER | bundle | random")
    parser.add_argument("--labels", type=Path, help="labels.csv with a class column")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/layout-sample-cache"))
    parser.add_argument("--results", type=Path, help="append one JSON line per variant")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single variant, in-process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args)), flush=True)
        return 0
    pca_vectors(args.bundle, args.n, args.cache, args.vectors)  # once, before the variants
    for variant in args.variant or ["full", f"refine:{reduce.LAYOUT_SAMPLE}:"
                                    f"{reduce.REFINE_ITER}", "random"]:
        source = ["--bundle", str(args.bundle)] if args.bundle else ["--vectors",
                                                                       str(args.vectors)]
        command = [sys.executable, __file__, *source, "--n", str(args.n),
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
