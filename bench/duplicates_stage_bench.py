"""The pipeline's duplicates stage: its cost beside the other stages, on generated pictures.

``--n`` distinct generated scenes (``bench/distinct_images.py``, seed 0: no two equal,
pictures of a class alike) plus copies of a seeded ``--share`` of them, one per original,
made as ``tests/test_duplicates.py`` makes them (resized to 60 % as PNG, JPEG at quality
70 at 90 %, cropped by 5 %), go through ``python run.py pipeline`` with its default
flags (a subprocess, relative paths, the duplicates stage on). The manifest's per-stage
timings give the stage's seconds, its share of the run and its cost per item; the copies
found (each with its own original in a group) are a sanity check, not a score
(``bench/duplicates_bench.py`` scores the search on real pictures). Results go to
``<work>/results.json``.

    python bench/duplicates_stage_bench.py --n 10000 --work /tmp/dup-stage

``--bundle DIR`` instead times the stage's search alone on a bundle already built (for
the 1M bundle of ``bench/scale_bench.py``), ``--cold`` after dropping the page cache
(root), and compares its groups with those the bundle stores (pairs of items grouped by
both / by the stored ones: what a change of the search kept), into ``--results``:

    python bench/duplicates_stage_bench.py --bundle /work/bench-data/out/scale-1000000 \
        --cold --results docs/data/duplicates_1m.jsonl
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import distinct_images  # noqa: E402
from test_duplicates import KINDS, make_copy  # noqa: E402

CID = "dup-stage"


def build(work: Path, n: int, share: float, seed: int, jobs: int) -> dict[str, str]:
    """The collection under ``work/pictures/images``: originals, and ``copies/`` of a
    seeded share of them; ``{copy path: original path}`` (relative to ``work``)."""
    folder = work / "pictures"
    if not (folder / "manifest.json").exists():
        distinct_images.generate(folder, n, seed=seed, jobs=jobs, quiet=True)
    images = folder / "images"
    originals = sorted(p for p in images.rglob("*") if p.is_file() and "copies" not in p.parts)
    chosen = np.random.default_rng(seed).choice(len(originals), round(share * len(originals)),
                                                replace=False)
    (images / "copies").mkdir(exist_ok=True)
    copy_of = {}
    for number, index in enumerate(sorted(chosen.tolist())):
        kind = KINDS[number % len(KINDS)]
        made = make_copy(originals[index], kind, images / "copies" / f"copy-{index}-{kind}")
        copy_of[str(made.relative_to(work))] = str(originals[index].relative_to(work))
    return copy_of


def grouped_pairs(group: np.ndarray, ids: np.ndarray) -> set[tuple[int, int]]:
    """Every pair of items in one group, ``(smaller id, larger id)``."""
    members: dict[int, list[int]] = {}
    for number, item in zip(group.tolist(), ids.tolist(), strict=True):
        members.setdefault(number, []).append(item)
    return {(a, b) for items in members.values() for a in items for b in items if a < b}


def time_search(bundle_dir: Path, cold: bool, results: Path | None) -> int:
    """The duplicates search alone on a built bundle, timed, against its stored groups."""
    from mosaic import duplicates
    from mosaic.bundle import Bundle

    if cold:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    bundle = Bundle.open(bundle_dir)
    started = time.perf_counter()
    cpu = time.process_time()
    compared = 0

    def confirmed():
        nonlocal compared
        for a, b, difference in duplicates.iter_pair_differences(bundle):
            compared += len(a)
            same = difference <= duplicates.MAX_DIFFERENCE
            yield a[same], b[same]

    group, ids = duplicates.groups_from_labels(
        duplicates.group_labels(bundle.counts.items, confirmed()))
    seconds = time.perf_counter() - started
    found = grouped_pairs(group, ids)
    stored = duplicates.read_stored(bundle)
    before = grouped_pairs(*duplicates.stored_groups(stored)) if stored else set()
    result = {
        "date": time.strftime("%Y-%m-%d"), "bundle": bundle.id, "items": bundle.counts.items,
        "page_cache": "dropped" if cold else "as found", "seconds": round(seconds, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "pairs_compared_at_32px": compared, "groups": int(len(np.unique(group))),
        "grouped_items": int(len(ids)), "stored_pairs": len(before),
        "stored_pairs_kept": len(before & found), "new_pairs": len(found - before),
        "settings": duplicates.SETTINGS,
        "command": " ".join(["python", *sys.argv]),
    }
    print(json.dumps(result))
    if results:
        with open(results, "a") as handle:
            handle.write(json.dumps(result) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="distinct originals")
    parser.add_argument("--share", type=float, default=0.1, help="originals copied once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="processes that draw the pictures")
    parser.add_argument("--work", type=Path, help="where the generated run goes")
    parser.add_argument("--bundle", type=Path, help="time the search alone on this bundle")
    parser.add_argument("--cold", action="store_true", help="drop the page cache first (root)")
    parser.add_argument("--results", type=Path, help="--bundle: append the result here")
    args = parser.parse_args(argv)
    if args.bundle:
        return time_search(args.bundle, args.cold, args.results)
    if args.work is None:
        parser.error("--work or --bundle is required")
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    copy_of = build(args.work, args.n, args.share, args.seed, args.jobs)
    made = time.perf_counter() - started
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "pipeline", "--images",
                           "pictures/images", "--id", CID, "--out", "out"], cwd=args.work,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        print(done.stderr, file=sys.stderr)
        return 1
    bundle = args.work / "out" / CID
    manifest = json.loads((bundle / "manifest.json").read_text())
    timings = manifest["timings"]
    n_items = manifest["counts"]["items"]
    stored = json.loads((bundle / manifest["duplicates"]["path"]).read_text())["groups"]
    sources = {}
    with_sources = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "export", "--id", CID, "--out", "out",
         "--format", "json"], cwd=args.work, capture_output=True, text=True, check=True)
    for item in json.loads(with_sources.stdout):
        sources[item["id"]] = str(Path(item["source"]).resolve())
    group_of = {sources[i]: number for number, group in enumerate(stored) for i in group["ids"]}
    found = sum(1 for copy, original in copy_of.items()
                if str((args.work / copy).resolve()) in group_of
                and group_of.get(str((args.work / original).resolve()))
                == group_of[str((args.work / copy).resolve())])
    result = {
        "n_items": n_items, "copies": len(copy_of), "generate_s": round(made, 1),
        "pipeline_wall_s": round(wall, 1), "timings": timings,
        "duplicates_s": timings["duplicates"],
        "duplicates_share_of_stages": round(timings["duplicates"] / sum(timings.values()), 4),
        "duplicates_ms_per_item": round(1000 * timings["duplicates"] / n_items, 3),
        "pipeline_ms_per_item": round(1000 * sum(timings.values()) / n_items, 2),
        "groups": manifest["duplicates"]["groups"],
        "grouped_items": manifest["duplicates"]["items"],
        "copies_with_their_original": found,
    }
    (args.work / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
