"""Scale benchmark: the whole pipeline at 100k, 300k and 1M images on this machine.

Inputs are generated, not trivially small: ``--distinct`` photo-like files of
100-600 px a side (every fifth one PNG, the rest JPEG at Q 75-95), each a
random crop, resize, colour shift and flip of one of 2,000 base pictures
(``cell_codec_bench.photo_like``). A run of N > distinct images lists every
distinct file under N / distinct names (hard links; every name is decoded as
its own item).

Each run is ``python run.py pipeline`` with the default flags (128-px cells,
raw embedding, openTSNE, rasterfairy, 256-px JPEG tiles) and a relative
``--out``, cold. A monitor samples, every second, the RSS summed over the
orchestrator and its worker processes, and the bundle folder's size (and its
``cache/`` alone: the scratch). Reported: wall time per stage (the manifest's
``timings``), peak RSS of the process tree, peak scratch disk, and the final
bundle by kind.

    python bench/scale_bench.py generate --distinct 100000 --work /work/scale
    python bench/scale_bench.py run --n 100000 --work /work/scale

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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASES = 2_000
PER_FOLDER = 1_000


def distinct_path(work: Path, index: int) -> Path:
    suffix = ".png" if index % 5 == 0 else ".jpg"
    return work / "images" / f"d{index // PER_FOLDER:04d}" / f"img_{index:07d}{suffix}"


def _write_batch(args: tuple[str, int, int]) -> int:
    """Write distinct images [start, stop) from the base pictures; returns bytes written."""
    import pyvips

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cell_codec_bench import photo_like

    work, start, stop = Path(args[0]), args[1], args[2]
    bases = work / "bases"
    written = 0
    for index in range(start, stop):
        path = distinct_path(work, index)
        if path.exists():
            continue
        rng = np.random.default_rng(index)
        base_path = bases / f"base_{int(rng.integers(BASES)):05d}.png"
        if not base_path.exists():
            base_rng = np.random.default_rng(10_000_000 + int(base_path.stem[5:]))
            tmp = base_path.with_name(f".{base_path.name}.{os.getpid()}.tmp")
            pyvips.Image.new_from_array(photo_like(base_rng), interpretation="srgb") \
                .pngsave(str(tmp), compression=1)
            os.replace(tmp, base_path)
        base = pyvips.Image.new_from_file(str(base_path))
        fraction = rng.uniform(0.6, 1.0)
        width, height = max(8, int(base.width * fraction)), max(8, int(base.height * fraction))
        left = int(rng.integers(0, base.width - width + 1))
        top = int(rng.integers(0, base.height - height + 1))
        image = base.crop(left, top, width, height)
        target_w, target_h = int(rng.integers(100, 601)), int(rng.integers(100, 601))
        image = image.resize(target_w / width, vscale=target_h / height)
        gain = rng.uniform(0.8, 1.2, 3).tolist()
        image = (image.linear(gain, rng.uniform(-20, 20, 3).tolist())).cast("uchar")
        if rng.random() < 0.5:
            image = image.fliphor()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        if path.suffix == ".png":
            image.pngsave(str(tmp), compression=1)
        else:
            image.jpegsave(str(tmp), Q=int(rng.integers(75, 96)))
        os.replace(tmp, path)
        written += path.stat().st_size
    return written


def generate(work: Path, distinct: int, jobs: int) -> None:
    (work / "bases").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    batches = [(str(work), s, min(distinct, s + 500)) for s in range(0, distinct, 500)]
    total = 0
    with ProcessPoolExecutor(jobs) as pool:
        for done, written in enumerate(pool.map(_write_batch, batches), start=1):
            total += written
            if done % 20 == 0:
                print(f"  {done * 500:,} images, {time.perf_counter() - started:.0f} s",
                      flush=True)
    print(f"generated {distinct:,} distinct images in {time.perf_counter() - started:.0f} s")


def write_list(work: Path, n: int, distinct: int) -> Path:
    """A list file of n names: the distinct files, then hard links under copies/<k>/."""
    target = work / f"list-{n}.txt"
    if target.exists():
        return target
    names = []
    for k in range((n + distinct - 1) // distinct):
        for index in range(min(distinct, n - k * distinct)):
            source = distinct_path(work, index)
            if k == 0:
                names.append(source.relative_to(work).as_posix())
                continue
            link = work / "copies" / str(k) / source.relative_to(work / "images")
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                os.link(source, link)
            names.append(link.relative_to(work).as_posix())
    target.write_text("\n".join(names) + "\n")
    return target


def tree_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` and all its descendants."""
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
    total, stack = 0, [pid]
    while stack:
        process = stack.pop()
        total += rss.get(process, 0)
        stack.extend(children.get(process, []))
    return total


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


def run(work: Path, n: int, distinct: int, extra: list[str], tag: str = "") -> dict:
    list_file = write_list(work, n, distinct)
    cid = f"scale-{n}{tag}"
    out = work / "out"
    bundle = out / cid
    subprocess.run(["rm", "-rf", str(bundle)], check=True)
    command = [sys.executable, str(ROOT / "run.py"), "pipeline", "--images", list_file.name,
               "--out", "out", "--id", cid, *extra]
    peaks = {"rss": 0, "bundle": 0, "scratch": 0}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(process.stdout), daemon=True)
    reader.start()
    last_disk = 0.0
    while process.poll() is None:
        peaks["rss"] = max(peaks["rss"], tree_rss(process.pid))
        if time.monotonic() - last_disk > 5:  # walking 300k tiles takes a while
            last_disk = time.monotonic()
            peaks["bundle"] = max(peaks["bundle"], folder_bytes(bundle))
            peaks["scratch"] = max(peaks["scratch"], folder_bytes(bundle / "cache"))
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
    return {"n": n, "tag": tag, "distinct": min(n, distinct), "items": items,
            "wall_s": round(wall, 1),
            "timings": manifest["timings"], "peak_rss_mb": round(peaks["rss"] / 2**20),
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
    gen = sub.add_parser("generate")
    gen.add_argument("--distinct", type=int, default=100_000)
    gen.add_argument("--work", type=Path, required=True)
    gen.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    go = sub.add_parser("run")
    go.add_argument("--n", type=int, required=True)
    go.add_argument("--distinct", type=int, default=100_000)
    go.add_argument("--work", type=Path, required=True)
    go.add_argument("--results", type=Path, default=None,
                    help="append the result as a JSON line (default: WORK/results.jsonl)")
    go.add_argument("--tag", default="",
                    help="suffix of the bundle id, to keep variant runs at one N apart")
    go.add_argument("extra", nargs="*", help="more pipeline flags, after --")
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.work, args.distinct, args.jobs)
        return 0
    result = run(args.work, args.n, args.distinct, args.extra, args.tag)
    print(json.dumps(result, indent=1))
    with open(args.results or args.work / "results.jsonl", "a") as handle:
        handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
