"""The pipeline's index stage on a built bundle, step by step: time and memory.

Runs what the stage runs (``mosaic.pipeline.index.build_annoy`` into its file,
``choose_search_k``, ``forest_top_neighbors`` into ``.npy`` row files and
``lists_recall``) on one
embedding of a finished bundle, writing into a scratch folder (the bundle is only
read), and reports each step's wall time and the process's peak resident memory
during it, split as the kernel counts it (``/proc/self/status``: RssAnon, the
process's own memory; RssFile, file pages mapped and resident), sampled every 0.2 s.
It answers where the stage's time and memory go at a million items without running
the whole pipeline again. The index and the stored lists it writes are compared with
the bundle's (equal: the build repeats, as a resumed run needs). ``--in-memory``
builds as the pipeline did before 2026-12-07 (in memory, then saved), ``--annoy-lists``
makes the lists as it did then (1M annoy queries, not the forest);
``--build-only`` stops after the build.

    python bench/index_stage_bench.py --bundle /work/bench-data/out/scale-1000000 \\
        --scratch /work/bench-data/index-stage --cold --results docs/data/index_stage_1m.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosaic import knn  # noqa: E402
from mosaic.bundle import Bundle, RowFile, npy_layout  # noqa: E402
from mosaic.pipeline.index import (  # noqa: E402
    FOREST_METRICS,
    build_annoy,
    choose_search_k,
    forest_top_neighbors,
    lists_recall,
    recall_truth,
)
from mosaic.pipeline.store import create_npy_rows  # noqa: E402


class Memory:
    """Peak RssAnon and RssFile (MiB) of this process per named step, sampled."""

    def __init__(self, every: float = 0.2):
        self.every, self.step, self.peaks = every, "start", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def sample() -> dict[str, int]:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile", "VmRSS"):
                fields[name] = int(value.split()[0]) // 1024
        return fields

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            now, peak = self.sample(), self.peaks.setdefault(self.step, {})
            for name, value in now.items():
                peak[name] = max(peak.get(name, 0), value)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return self.peaks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--embedding", default="pixels")
    parser.add_argument("--scratch", type=Path, required=True, help="emptied, then written")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cold", action="store_true", help="drop the page cache first (root)")
    parser.add_argument("--results", type=Path)
    parser.add_argument("--in-memory", action="store_true",
                        help="build in memory and save, as the pipeline did before 2026-12-07")
    parser.add_argument("--annoy-lists", action="store_true",
                        help="the lists through annoy, as the pipeline made them before "
                             "2026-12-07 (not the forest)")
    parser.add_argument("--build-only", action="store_true",
                        help="stop after the build (and save): no recall check or lists")
    args = parser.parse_args()
    bundle = Bundle.open(args.bundle)
    embedding = bundle.embedding(args.embedding)
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    entry = next(e for e in manifest["embeddings"] if e["name"] == args.embedding)
    shutil.rmtree(args.scratch, ignore_errors=True)
    args.scratch.mkdir(parents=True)
    if args.cold:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    memory = Memory()
    seconds: dict[str, float] = {}
    vectors = bundle.open_vectors(embedding)

    def step(name: str):
        memory.step = name
        seconds[name] = time.perf_counter()

    def done(name: str) -> None:
        seconds[name] = round(time.perf_counter() - seconds[name], 1)

    step("build")
    index = build_annoy(vectors, entry["metric"], entry["n_trees"], 0,
                        path=None if args.in_memory else args.scratch / "index.ann")
    done("build")
    if args.build_only:
        return finish(args, bundle, memory, seconds, index, vectors, entry, None, None, {})
    step("recall")
    truth = recall_truth(vectors, entry["metric"], 0)
    search_k, recall = choose_search_k(index, vectors, entry["metric"], truth=truth)
    done("recall")
    step("top")
    shape = (len(vectors), knn.TOP_K)
    rows = {"ids": create_npy_rows(args.scratch / "top-ids.npy", shape, np.int32),
            "distances": create_npy_rows(args.scratch / "top-distances.npy", shape,
                                         np.float32)}
    lists_recall_at_20 = None
    if entry["metric"] in FOREST_METRICS and not args.annoy_lists:
        forest_top_neighbors(vectors, entry["metric"], rows["ids"], rows["distances"],
                             knn.TOP_K, args.jobs, 0)
        done("top")
        step("lists recall")
        lists_recall_at_20 = round(lists_recall(rows["ids"], truth), 4)
        done("lists recall")
    else:
        for start, ids, distances in knn.iter_top_neighbors(vectors, index, entry["metric"],
                                                            search_k, knn.TOP_K, args.jobs):
            rows["ids"].write_rows(start, ids)
            rows["distances"].write_rows(start, distances)
        done("top")
    for part in rows.values():
        part.flush()
        part.close()
    result = finish(args, bundle, memory, seconds, index, vectors, entry, search_k, recall,
                    {"lists": "annoy" if lists_recall_at_20 is None else "forest",
                     "lists_recall_at_20": lists_recall_at_20})
    return result


def finish(args, bundle, memory, seconds, index, vectors, entry, search_k, recall,
           extra: dict) -> int:
    """Save (an in-memory build), stop the sampler, check and report."""
    seconds["save"] = time.perf_counter()
    memory.step = "save"
    if args.in_memory:
        index.save(str(args.scratch / "index.ann"))
    index.unload()
    seconds["save"] = round(time.perf_counter() - seconds["save"], 1)
    peaks = memory.stop()
    vectors.close()
    shipped = args.bundle / entry["index"]
    result = {
        "date": time.strftime("%Y-%m-%d"), "bundle": bundle.id, "items": len(vectors),
        "embedding": args.embedding, "dim": int(vectors.shape[1]), "n_trees": entry["n_trees"],
        "build": "in memory, then saved" if args.in_memory else "on disk (on_disk_build)",
        "page_cache": "dropped" if args.cold else "as found", "seconds": seconds,
        "total_s": round(sum(seconds.values()), 1), "search_k": search_k,
        "recall_at_20": None if recall is None else round(recall, 4), "peak_mib": peaks,
        "index_mib": round(os.path.getsize(args.scratch / "index.ann") / 2**20),
        "index_equal_to_the_bundle": _same_file(args.scratch / "index.ann", shipped),
        **extra, "command": " ".join(["python", *sys.argv]),
    }
    if not args.build_only:  # the lists written here against the bundle's own
        shape = (len(vectors), knn.TOP_K)
        stored = bundle.open_top_neighbors(bundle.embedding(args.embedding))
        written = RowFile(args.scratch / "top-ids.npy", shape, np.int32,
                          offset=npy_layout(args.scratch / "top-ids.npy")[2])
        equal = first = 0
        for start in range(0, shape[0], 65_536):
            block = np.arange(start, min(start + 65_536, shape[0]))
            before, now = stored[0].read_rows(block), written.read_rows(block)
            equal += int((before == now).all(axis=1).sum())
            first += int((before[:, 0] == now[:, 0]).sum())
        result["rows_equal_to_the_bundle"] = equal
        result["rows_sharing_the_first_neighbour"] = first
    print(json.dumps(result))
    if args.results:
        with open(args.results, "a") as handle:
            handle.write(json.dumps(result) + "\n")
    return 0


def _same_file(a: Path, b: Path, block: int = 1 << 24) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as first, open(b, "rb") as second:
        while chunk := first.read(block):
            if chunk != second.read(block):
                return False
    return True


if __name__ == "__main__":
    sys.exit(main())
