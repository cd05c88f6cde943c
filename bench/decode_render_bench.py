"""Decode + render, side by side on the same images: naive, floor and mosaic.

On the first N images of a ``scale_bench.py`` collection (100-600 px, JPEG and
PNG mixed), with 128-px cells and one random layout shared by all three:

  (a) naive, as the AMNH scripts do it: one PIL decode + thumbnail per image
      pasted into a whole-matrix PIL image, then a pure-Python DeepZoom cutter
      (``pipeline_bench.naive``);
  (b) the floor: one PIL decode of each image (draft mode, one process), plus
      libvips ``dzsave`` alone on a prebuilt matrix file (written first, not
      timed);
  (c) mosaic: ``python run.py pipeline --embedding xy:FILE`` (no reduction),
      its decode + render stage times from the manifest.

Every variant runs in its own process tree; peak RSS is the tree's summed RSS,
sampled every 0.2 s (``scale_bench.tree_rss``).

    python bench/decode_render_bench.py --n 10000 --work /work/scale
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from scale_bench import tree_rss, write_list  # noqa: E402

CELL = 128


def measured(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """(seconds, peak tree RSS MiB, stdout) of one command."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.2)
    out = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"{command} failed with {process.returncode}")
    return time.perf_counter() - started, peak / 2**20, out


def pil_decode_all(list_file: Path) -> None:
    """The floor's decode: each image opened and decoded once by PIL, at draft scale."""
    from PIL import Image

    started = time.perf_counter()
    for line in list_file.read_text().split():
        with Image.open(list_file.parent / line) as image:
            image.draft("RGB", (CELL, CELL))
            image.convert("RGB").thumbnail((CELL, CELL))
    print(json.dumps({"decode_seconds": time.perf_counter() - started}))


def main() -> int:
    if sys.argv[1:2] == ["_pil"]:
        pil_decode_all(Path(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--distinct", type=int, default=100_000)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    work, n = args.work, args.n
    list_file = write_list(work, n, args.distinct)
    out = work / f"dr-{n}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    xy = out / "xy.npy"
    np.save(xy, np.random.default_rng(0).uniform(size=(n, 2)).astype(np.float32))
    row: dict = {"n": n}

    seconds, rss, _ = measured([sys.executable, str(ROOT / "run.py"), "-q", "pipeline",
                                "--images", list_file.name, "--out", str(out), "--id", "ours",
                                "--embedding", f"xy:{xy}"], work)
    timings = json.loads((out / "ours" / "manifest.json").read_text())["timings"]
    row["mosaic"] = {"seconds": round(timings["decode"] + timings["render"], 1),
                     "decode": timings["decode"], "render": timings["render"],
                     "whole_run_seconds": round(seconds, 1), "rss_mib": round(rss)}

    absolute = out / "list-absolute.txt"
    absolute.write_text("".join(f"{work / line}\n" for line in list_file.read_text().split()))
    seconds, rss, _ = measured([sys.executable, str(BENCH / "pipeline_bench.py"), "_naive",
                                str(absolute), str(out / "ours" / "positions.npy"),
                                str(out / "naive")], ROOT)
    row["naive"] = {"seconds": round(seconds, 1), "rss_mib": round(rss)}
    subprocess.run(["rm", "-rf", str(out / "naive")], check=True)

    _, decode_rss, text = measured([sys.executable, __file__, "_pil", str(list_file)], work)
    decode = json.loads(text.strip().splitlines()[-1])["decode_seconds"]
    _, cut_rss, text = measured([sys.executable, str(BENCH / "pipeline_bench.py"), "_dzsave",
                                 str(out / "ours"), str(out / "floor")], ROOT)
    cut = json.loads(text.strip().splitlines()[-1])["cut_seconds"]
    row["floor"] = {"seconds": round(decode + cut, 1), "pil_decode": round(decode, 1),
                    "dzsave": round(cut, 1), "rss_mib": round(max(decode_rss, cut_rss))}
    subprocess.run(["rm", "-rf", str(out / "floor")], check=True)
    ours = row["mosaic"]
    row["ratios"] = {"time_vs_naive": round(ours["seconds"] / row["naive"]["seconds"], 2),
                     "time_vs_floor": round(ours["seconds"] / row["floor"]["seconds"], 2),
                     "rss_vs_naive": round(ours["rss_mib"] / row["naive"]["rss_mib"], 2)}
    row["machine"] = f"{os.cpu_count()} CPUs"
    print(json.dumps(row, indent=1))
    with open(work / "decode_render.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
