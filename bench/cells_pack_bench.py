"""Bundle size and scratch disk of one pipeline run: raw cells (schema 1) vs the cell pack.

Generates N photo-like images (``cell_codec_bench.photo_like``: 100-600 px a
side, every third one PNG, the rest JPEG Q 90), then runs ``python run.py
pipeline`` of each given source tree on them, cold, with 128-px cells, a given
``xy:`` layout first (so no t-SNE runs) and the ``raw`` embedding. While it
runs, the bundle folder's size is polled every 0.2 s (peak: everything in it,
and ``cache/`` alone). Reports the bundle's bytes per item by kind, the peaks,
and the decode and render stage times from the manifest.

    python bench/cells_pack_bench.py --n 5000 --work /tmp/cells-bench \\
        --tree before=/tmp/mosaic-before --tree after=.
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
import pyvips

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cell_codec_bench import photo_like  # noqa: E402


def write_images(folder: Path, n: int) -> None:
    if folder.is_dir() and len(list(folder.iterdir())) == n:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(n):
        image = pyvips.Image.new_from_array(photo_like(rng), interpretation="srgb")
        if index % 3 == 0:
            image.pngsave(str(folder / f"img_{index:06d}.png"))
        else:
            image.jpegsave(str(folder / f"img_{index:06d}.jpg"), Q=90)


def folder_bytes(root: Path) -> int:
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def kind_of(relative: str) -> str:
    if relative.startswith("tiles/") or relative == "overview.jpg":
        return "tiles + overview"
    if relative.startswith("cells."):
        return "cells"
    if relative.startswith("embeddings/"):
        return "embeddings"
    if relative == "metadata.sqlite":
        return "sqlite"
    if relative.startswith("cache/"):
        return "cache (left)"
    return "other"


def run(tree: Path, images: Path, xy: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    bundle = out / "b"
    peaks = {"bundle": 0, "cache": 0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            if bundle.exists():
                peaks["bundle"] = max(peaks["bundle"], folder_bytes(bundle))
                peaks["cache"] = max(peaks["cache"], folder_bytes(bundle / "cache"))
            time.sleep(0.2)

    watcher = threading.Thread(target=poll)
    watcher.start()
    started = time.perf_counter()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    subprocess.run([sys.executable, "run.py", "-q", "pipeline", "--images", str(images),
                    "--out", str(out), "--id", "b", "--embedding", f"xy:{xy}",
                    "--embedding", "raw", "--cell-size", "128", "--jobs", "2"],
                   cwd=tree, env=env, check=True)
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    manifest = json.loads((bundle / "manifest.json").read_text())
    n = manifest["counts"]["items"]
    sizes: dict[str, int] = {}
    for path in bundle.rglob("*"):
        if path.is_file():
            kind = kind_of(path.relative_to(bundle).as_posix())
            sizes[kind] = sizes.get(kind, 0) + path.stat().st_size
    return {"n": n, "seconds": seconds, "timings": manifest["timings"], "sizes": sizes,
            "peaks": peaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cells-bench"))
    parser.add_argument("--tree", action="append", required=True,
                        help="LABEL=PATH of a mosaic source tree to run (repeatable)")
    args = parser.parse_args()
    images = args.work / "images"
    write_images(images, args.n)
    xy = args.work / "xy.npy"
    np.save(xy, np.random.default_rng(0).uniform(size=(args.n, 2)).astype(np.float32))
    kinds = ["tiles + overview", "cells", "embeddings", "sqlite", "other", "cache (left)"]
    print(f"{args.n} images, 128-px cells; bytes per item\n")
    print("| tree | " + " | ".join(kinds) + " | bundle total | peak bundle folder "
          "| peak cache/ | decode s | render s |")
    print("|---|" + "---|" * (len(kinds) + 5))
    for spec in args.tree:
        label, _, path = spec.partition("=")
        result = run(Path(path).resolve(), images, xy, args.work / f"out-{label}")
        n = result["n"]
        per = [result["sizes"].get(k, 0) / n for k in kinds]
        print(f"| {label} | " + " | ".join(f"{v:,.0f}" for v in per)
              + f" | {sum(per):,.0f} | {result['peaks']['bundle'] / n:,.0f} "
              f"| {result['peaks']['cache'] / n:,.0f} | {result['timings']['decode']:.1f} "
              f"| {result['timings']['render']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
