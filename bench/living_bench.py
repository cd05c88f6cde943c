"""A living collection: ``run.py add`` and ``run.py remove`` against full builds (issue 18).

    python bench/living_bench.py --data /work/bench-data/distinct-20200 \
        --work /work/bench-living --held 200 --remove 10 [--reach 0 default] [--cold]

From a collection of distinct pictures (``bench/distinct_images.py``), ``--held``
pictures drawn at random (seeded) are held out. The rest are built with the
default flags (``pipeline``), the held ones added (``add``), then ``--remove``
random items taken down (``remove``); every command runs as its own process,
timed by wall clock (``--cold`` drops the page cache before each, as root).
The whole collection is then built from scratch (``pipeline``), for the quality
reference: the grid P@10 (``mosaic.quality``; PCA-50 of the ``pixels``
vectors, exact neighbours) of the added items on the incrementally grown map
against the same items on the full rebuild, each with a random placement of the
same cells as the control, and of 2,000 items of the whole map. One JSON line
goes to ``--record`` (default docs/data/living.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mosaic import quality  # noqa: E402
from mosaic.bundle import open_vectors, read_manifest  # noqa: E402

CPU_SECONDS: dict[str, float] = {}  # the last command's user + system time, as "cpu_s"


def run(command: list[str], cold: bool) -> tuple[float, str]:
    if cold:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *command],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS["cpu_s"] = round(after.ru_utime + after.ru_stime - used.ru_utime
                                 - used.ru_stime, 2)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def sources(bundle: Path) -> dict[str, int]:
    conn = sqlite3.connect(bundle / "metadata.sqlite")
    try:
        return {source: item for item, source in conn.execute("SELECT id, source FROM items")}
    finally:
        conn.close()


def precision(features: np.ndarray, positions: np.ndarray, queries: np.ndarray) -> dict:
    near = quality.feature_neighbours(features, queries)
    shuffled = np.random.default_rng(0).permutation(positions)
    return {"p10": round(quality.neighbour_precision(near, positions, queries), 4),
            "random": round(quality.neighbour_precision(near, shuffled, queries), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--held", type=int, required=True, help="pictures to add")
    parser.add_argument("--remove", type=int, default=10, help="items to take down")
    parser.add_argument("--reach", nargs="*", default=["default"],
                        help="add --reach values to compare ('default': add's own), each on "
                             "a hard-linked copy of the built bundle")
    parser.add_argument("--cold", action="store_true", help="drop the page cache first")
    parser.add_argument("--reuse", action="store_true",
                        help="keep --work's two full builds (base and all) and their times "
                             "from the last record for the same data; only add, remove and "
                             "publish run again")
    parser.add_argument("--record", type=Path, default=ROOT / "docs" / "data" / "living.jsonl")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    before = None
    if args.reuse:
        records = [json.loads(line) for line in args.record.read_text().splitlines()]
        before = next(r for r in reversed(records) if r["data"] == str(args.data)
                      and r["n_added"] == args.held)
        for name in list(os.listdir(args.work / "out")):
            if name not in ("c", "full"):
                shutil.rmtree(args.work / "out" / name)
        for site in args.work.glob("site-*"):
            shutil.rmtree(site)
        # the held-out pictures: those the full build has and the base lacks (the data
        # folder may have grown since the builds)
        base_sources = sources(args.work / "out" / "c")
        images = sorted(sources(args.work / "out" / "full"))
        lists = {"base": sorted(base_sources),
                 "new": [p for p in images if p not in base_sources], "all": images}
        rng.choice(len(images), args.held, replace=False)  # as below: the same draws after
    else:
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
        images = sorted(str(p.resolve()) for p in (args.data / "images").rglob("*")
                        if p.is_file())
        held = set(rng.choice(len(images), args.held, replace=False).tolist())
        lists = {"base": [p for i, p in enumerate(images) if i not in held],
                 "new": [p for i, p in enumerate(images) if i in held], "all": images}
    for name, paths in lists.items():
        (args.work / f"{name}.txt").write_text("\n".join(paths) + "\n")
    out = str(args.work / "out")
    record: dict = {"n_base": len(lists["base"]), "n_added": len(lists["new"]),
                    "data": str(args.data), "cold": args.cold, "cpus": os.cpu_count()}
    if before:
        record["build_s"], record["builds_from"] = before["build_s"], "an earlier record"
    else:
        record["build_s"], _ = run(["pipeline", "--images", str(args.work / "base.txt"),
                                    "--id", "c", "--out", out], args.cold)
    base = Path(out) / "c"
    runs = []
    for reach in (None if r == "default" else int(r) for r in args.reach):
        name = f"c-reach{'default' if reach is None else reach}"
        subprocess.run(["cp", "-al", str(base), str(Path(out) / name)], check=True)
        site = args.work / f"site-{name}"
        if not runs:  # the first: published before and after, into the same folder
            record["publish_s"], _ = run(["publish", "--id", name, "--out", out, "--to",
                                          str(site)], args.cold)
        seconds, said = run(["add", "--id", name, "--out", out, "--images",
                             str(args.work / "new.txt"),
                             *([] if reach is None else ["--reach", str(reach)])], args.cold)
        tiles = re.search(r"tiles written: similarity ([\d,]+)", said)
        moved = re.search(r"existing items moved: similarity ([\d,]+)", said)
        far = re.search(r"([\d,]+) cells away at the median, ([\d,]+) at most", said)
        runs.append({"reach": reach, "name": name, "add_s": round(seconds, 2),
                     "add_cpu_s": CPU_SECONDS["cpu_s"],
                     "tiles": int(tiles.group(1).replace(",", "")) if tiles else None,
                     "moved": int(moved.group(1).replace(",", "")) if moved else None,
                     "moved_cells": {"median": int(far.group(1).replace(",", "")),
                                     "max": int(far.group(2).replace(",", ""))} if far else None,
                     "report": said.strip().splitlines()})
        if len(runs) == 1:
            record["republish_s"], said = run(["publish", "--id", name, "--out", out,
                                               "--to", str(site)], args.cold)
            record["republish_report"] = said.strip().splitlines()
    sources_before = {entry["name"]: sources(Path(out) / entry["name"]) for entry in runs}
    bundle = Path(out) / runs[0]["name"]
    manifest = read_manifest(bundle)
    record["tiles_total"] = sum(1 for _ in (bundle / "tiles" / "map_files").rglob("*.jpg"))
    n_items = manifest["counts"]["items"]
    removed = rng.choice(n_items, args.remove, replace=False)
    record["remove_s"], said = run(["remove", "--id", runs[0]["name"], "--out", out, "--ids",
                                    ",".join(str(i) for i in sorted(removed))], args.cold)
    record["remove_report"] = said.strip().splitlines()
    if before:
        record["full_s"] = before["full_s"]
    else:
        record["full_s"], _ = run(["pipeline", "--images", str(args.work / "all.txt"),
                                   "--id", "full", "--out", out], args.cold)
    full = Path(out) / "full"
    full_ids = sources(full)
    full_manifest = read_manifest(full)
    # one feature space for both maps: the full build's pixels vectors, PCA-50
    vectors = np.asarray(open_vectors(full, full_manifest["embeddings"][0])[:], np.float32)
    features = PCA(quality.FEATURE_DIMS, random_state=0).fit_transform(vectors)
    order = [full_ids[s] for s in sorted(full_ids)]  # full ids, by source
    features = features[order]
    full_positions = np.load(full / "positions.npy")[order]
    added = np.array([i for i, s in enumerate(sorted(full_ids)) if s in set(lists["new"])])
    sample = quality.query_ids(len(features), random_state=0)
    wide = quality.query_ids(len(features), 20_000, random_state=1)  # less noisy
    near_wide = quality.feature_neighbours(features, wide)
    record["full_p10"] = {"added": precision(features, full_positions, added),
                          "map": precision(features, full_positions, sample),
                          "map_20k": round(quality.neighbour_precision(
                              near_wide, full_positions, wide), 4)}
    for entry in runs:
        grown = np.load(Path(out) / entry["name"] / "positions.npy")  # (after remove: -1)
        ids = sources_before[entry["name"]]
        positions = grown[np.array([ids[s] for s in sorted(full_ids)])]
        entry["added_p10"] = precision(features, positions, added)
        if (positions >= 0).all():
            entry["map_p10"] = precision(features, positions, sample)
            entry["map_20k_p10"] = round(quality.neighbour_precision(near_wide, positions,
                                                                     wide), 4)
    record["adds"] = runs
    record["bundle_build_timings"] = manifest["timings"]
    args.record.parent.mkdir(parents=True, exist_ok=True)
    with open(args.record, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
