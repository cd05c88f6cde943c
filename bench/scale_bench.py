"""Scale benchmark: the whole pipeline at 100k, 300k and 1M images on this machine.

Inputs are ``bench/distinct_images.py``'s collection: N images that are all distinct
(no two with equal pixels, no links, no repeated files; ``--verify`` checks it), JPEG
and PNG, some greyscale, some with alpha, some with an EXIF orientation, 256-800 px on
the long side plus 1% of 2-12 Mpx photos, in 100 scene classes (``labels.csv``). Image i
depends only on (seed, i), so a run at N uses the first N images of one collection
generated at the largest N. (Runs before issue 17 listed 100,000 distinct files under 10
names each, hard links, to make 1M items: 9 pixel-identical twins per item. That mode is
gone; its figures in docs/benchmarks.md are of those inputs.)

Each run is ``python run.py pipeline`` with the default flags (128-px cells, the
``pixels`` embedding, openTSNE, rasterfairy + grid refinement, 256-px JPEG tiles) and
a relative ``--out``; ``--cold`` drops the page cache first (needs root; the result
says whether it was dropped). A monitor samples, every second, the RSS summed over the
orchestrator and its worker processes, and the bundle folder's size (and its
``cache/`` alone: the scratch). Reported: wall time per stage (the manifest's
``timings``), peak RSS of the process tree (all resident pages, and the anonymous ones
alone: a memory-mapped file's pages are the page cache's), each stage's peaks (the run
gets ``-v``, whose log names each stage as it starts), peak scratch disk, and the final
bundle by kind, and the map's grid P@10 with its random control (``grid.quality``).

    python bench/scale_bench.py generate --n 1000000 --work /work/scale
    python bench/scale_bench.py run --n 100000 --work /work/scale --cold

Each run appends one JSON line to ``WORK/results.jsonl`` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import distinct_images  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = "distinct"  # the collection's folder in WORK


def generate(work: Path, n: int, seed: int, jobs: int) -> None:
    """Generate (or finish) the distinct collection of ``n`` images in WORK/distinct."""
    started = time.perf_counter()
    manifest = distinct_images.generate(work / COLLECTION, n, seed=seed, jobs=jobs)
    print(f"generated {n:,} distinct images ({manifest['bytes'] / 1e9:.2f} GB) in "
          f"{time.perf_counter() - started:.0f} s")


def write_list(work: Path, n: int) -> Path:
    """A list file of the collection's first ``n`` images (all distinct files)."""
    target = work / f"list-{n}.txt"
    if target.exists():
        return target
    rows = distinct_images.read_labels(work / COLLECTION)
    if len(rows) < n:
        raise SystemExit(f"{work / COLLECTION} holds {len(rows):,} images, fewer than "
                         f"{n:,}: run generate --n {n} first")
    names = [f"{COLLECTION}/images/{row['filename']}" for row in rows[:n]]
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text("\n".join(names) + "\n")
    os.replace(temporary, target)
    return target


def tree_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` and all its descendants."""
    return tree_memory(pid)[0]


def tree_memory(pid: int) -> tuple[int, int]:
    """``(RSS, anonymous RSS)`` in bytes of ``pid`` and all its descendants: all their
    resident pages, and those that are no file's (``RssAnon``: what a file-backed
    mapping such as an annoy index built on disk does not add)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        process = int(entry)
        children.setdefault(int(fields[1]), []).append(process)
        rss[process] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, anonymous, stack = 0, 0, [pid]
    while stack:
        process = stack.pop()
        total += rss.get(process, 0)
        anonymous += _rss_anon(process)
        stack.extend(children.get(process, []))
    return total, anonymous


def _rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def folder_bytes(root: Path) -> int:
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                pass
    return total


def kind_of(relative: str) -> str:
    if relative.startswith("tiles/"):
        return "tiles"
    if relative.startswith("cache/"):
        return "cache"
    if relative.startswith("embeddings/"):
        return "annoy" if relative.endswith(".ann") else "vectors"
    if relative.startswith("cells."):
        return "cells"
    if relative.startswith("metadata.sqlite"):
        return "metadata.sqlite"
    return "other"


def drop_page_cache() -> bool:
    """Write dirty pages and drop the page cache (Linux, root); False where not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def run(work: Path, n: int, extra: list[str], tag: str = "", cold: bool = False) -> dict:
    list_file = write_list(work, n)
    cid = f"scale-{n}{tag}"
    out = work / "out"
    bundle = out / cid
    subprocess.run(["rm", "-rf", str(bundle)], check=True)
    # -v: the log names each stage as it starts, so each peak is put to its stage
    command = [sys.executable, str(ROOT / "run.py"), "pipeline", "--images", list_file.name,
               "--out", "out", "--id", cid, "-v", *extra]
    peaks = {"rss": 0, "anon": 0, "bundle": 0, "scratch": 0}
    by_stage: dict[str, dict[str, int]] = {}
    dropped = drop_page_cache() if cold else False
    if cold and not dropped:
        print("warning: could not drop the page cache (needs root): this run is not cold",
              file=sys.stderr)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(process.stdout), daemon=True)
    reader.start()
    next_walk = 0.0
    while process.poll() is None:
        rss, anon = tree_memory(process.pid)
        peaks["rss"], peaks["anon"] = max(peaks["rss"], rss), max(peaks["anon"], anon)
        started_stages = [line for line in log[-200:] if "stage " in line and ": running" in line]
        stage = started_stages[-1].split("stage ", 1)[1].split(":")[0] if started_stages \
            else "start"
        here = by_stage.setdefault(stage, {"rss_mb": 0, "anon_mb": 0})
        here["rss_mb"] = max(here["rss_mb"], round(rss / 2**20))
        here["anon_mb"] = max(here["anon_mb"], round(anon / 2**20))
        if time.monotonic() >= next_walk:
            walk_started = time.monotonic()
            peaks["bundle"] = max(peaks["bundle"], folder_bytes(bundle))
            peaks["scratch"] = max(peaks["scratch"], folder_bytes(bundle / "cache"))
            # Walking a million tiles takes seconds of CPU: walk at most 5% of the time,
            # so the monitor does not slow the run it measures.
            next_walk = time.monotonic() + max(5.0, 20 * (time.monotonic() - walk_started))
        time.sleep(1.0)
    reader.join()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"pipeline failed ({process.returncode}):\n{''.join(log[-40:])}")
    manifest = json.loads((bundle / "manifest.json").read_text())
    by_kind: dict[str, int] = {}
    for path in bundle.rglob("*"):
        if path.is_file():
            kind = kind_of(path.relative_to(bundle).as_posix())
            by_kind[kind] = by_kind.get(kind, 0) + path.stat().st_size
    items = manifest["counts"]["items"]
    return {"n": n, "tag": tag, "inputs": "distinct_images", "items": items,
            "page_cache": "dropped before the run" if dropped else "warm (not dropped)",
            "wall_s": round(wall, 1),
            "timings": manifest["timings"], "peak_rss_mb": round(peaks["rss"] / 2**20),
            "peak_anon_mb": round(peaks["anon"] / 2**20), "peak_by_stage": by_stage,
            "peak_bundle_mb": round(peaks["bundle"] / 2**20),
            "peak_scratch_mb": round(peaks["scratch"] / 2**20),
            "bundle_bytes": sum(by_kind.values()), "by_kind": by_kind,
            "bytes_per_item": round(sum(by_kind.values()) / items),
            "layout": manifest["layout"], "grid": manifest["grid"],
            "embeddings": manifest["embeddings"], "command": " ".join(command[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="the distinct collection, in WORK/distinct")
    gen.add_argument("--n", type=int, default=1_000_000)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--work", type=Path, required=True)
    gen.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    go = sub.add_parser("run", help="the pipeline on the collection's first N images")
    go.add_argument("--n", type=int, required=True)
    go.add_argument("--work", type=Path, required=True)
    go.add_argument("--results", type=Path, default=None,
                    help="append the result as a JSON line (default: WORK/results.jsonl)")
    go.add_argument("--tag", default="",
                    help="suffix of the bundle id, to keep variant runs at one N apart")
    go.add_argument("--cold", action="store_true",
                    help="drop the page cache first (root): the inputs are read from disk")
    go.add_argument("extra", nargs="*", help="more pipeline flags, after --")
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.work, args.n, args.seed, args.jobs)
        return 0
    result = run(args.work, args.n, args.extra, args.tag, args.cold)
    print(json.dumps(result, indent=1))
    with open(args.results or args.work / "results.jsonl", "a") as handle:
        handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
