"""The random-projection forest (``mosaic.pipeline.index.forest_top_neighbors``) alone.

Times every item's ``k`` nearest by the forest on stored vectors (an ``.npy`` file, read
whole as float32, e.g. a layout stage's PCA vectors), with ``--jobs`` threads, and
measures recall against exact search on a seeded sample of items (the item itself
excluded). The layout stage runs it with k = 90 on the PCA vectors
(``reduce.fast_neighbours``), the index stage with k = 50 on the embedding. ``--code``
times another checkout's ``mosaic`` on the same vectors, so a change is measured
before and after; ``--save`` keeps the ids to compare two runs' lists.

    python bench/forest_bench.py --vectors /work/bench-data/lparts/reduced.npy --k 90 \\
        --results docs/data/forest_1m.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from report import report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=Path, required=True)
    parser.add_argument("--n", type=int, default=0, help="the first N rows (0: all)")
    parser.add_argument("--k", type=int, default=90)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--label", default="")
    parser.add_argument("--save", type=Path, help="write the ids found here (.npy)")
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(args.code.resolve()))
    import numpy as np

    from mosaic.knn import exact_knn_of_rows
    from mosaic.pipeline.index import forest_top_neighbors

    vectors = np.load(args.vectors, mmap_mode="r")
    vectors = np.ascontiguousarray(vectors[:args.n or len(vectors)], dtype=np.float32)
    n_items = len(vectors)
    ids = np.empty((n_items, args.k), dtype=np.int32)
    distances = np.empty((n_items, args.k), dtype=np.float32)
    started, cpu = time.perf_counter(), time.process_time()
    forest_top_neighbors(vectors, "euclidean", ids, distances, args.k, n_jobs=args.jobs,
                         random_state=0)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    sample = np.random.default_rng(5).choice(n_items, min(args.queries, n_items),
                                             replace=False)
    truth = exact_knn_of_rows(vectors, sample, args.k + 1, "euclidean")
    recall = float(np.mean([
        len(set(row[row != item][:args.k].tolist()) & set(ids[item].tolist())) / args.k
        for item, row in zip(sample.tolist(), truth)]))
    if args.save:
        np.save(args.save, ids)
    result = {
        "date": time.strftime("%Y-%m-%d"), "vectors": str(args.vectors), "items": n_items,
        "dim": int(vectors.shape[1]), "k": args.k, "jobs": args.jobs,
        "code": args.label or str(args.code), "seconds": round(seconds, 1),
        "cpu_s": round(cpu, 1), f"recall_at_{args.k}": round(recall, 4),
    }
    report(result, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
