"""Pipeline benchmark: stage timings and peak RSS at 1k, 10k and 100k generated images.

It also compares, on the same images and cell size:
  (a) the naive path: a whole PIL matrix + a pure-Python DeepZoom cutter (as AMNH does);
  (b) libvips dzsave alone on a prebuilt raw matrix file (the floor for cutting);
  (c) mosaic's thumbnail + render stages (pipeline run with a given xy layout, so no
      reduction runs; decode + render timings come from the manifest).
Every measurement runs in its own process; peak RSS is that process's ru_maxrss.

    python bench/pipeline_bench.py --sizes 1000,10000,100000 --report docs/benchmarks-pipeline.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CELL = 128


def measure(command: list[str]) -> tuple[float, float, str]:
    """Run ``command`` in a child wrapper; (seconds, peak RSS MiB, stdout)."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stderr.write(p.stderr); print(p.stdout, end=''); "
               "print('\\n@@', time.perf_counter() - t, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)")
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True,
                          text=True, cwd=ROOT)
    out, _, tail = done.stdout.rpartition("\n@@ ")
    seconds, rss_kib, code = tail.split()
    if int(code) != 0:
        raise RuntimeError(f"{command} failed:\n{done.stderr[-2000:]}")
    return float(seconds), int(rss_kib) / 1024, out


def generate_images(folder: Path, n: int) -> None:
    """n small JPEGs (160x120): a colour gradient with a rectangle, varied by seed."""
    import pyvips

    folder.mkdir(parents=True, exist_ok=True)
    existing = len(list(folder.glob("*.jpg")))
    if existing >= n:
        return

    def write(i: int) -> None:
        path = folder / f"img_{i:07d}.jpg"
        if path.exists():
            return
        rng = np.random.default_rng(i)
        colour = rng.integers(0, 255, 3)
        ramp = np.linspace(0.6, 1.0, 160)[None, :, None]
        pixels = np.broadcast_to(colour * ramp, (120, 160, 3)).copy()
        y, x = rng.integers(0, 80), rng.integers(0, 120)
        pixels[y:y + 40, x:x + 40] = 255 - colour
        pyvips.Image.new_from_array(pixels.astype(np.uint8), interpretation="srgb") \
            .jpegsave(str(path), Q=85)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(n)))


def write_list(folder: Path, n: int, target: Path) -> Path:
    names = sorted(p.name for p in folder.glob("*.jpg"))[:n]
    target.write_text("".join(f"{folder / name}\n" for name in names))
    return target


def pipeline_command(images: Path, out: Path, cid: str, *extra: str) -> list[str]:
    return [sys.executable, "run.py", "-q", "pipeline", "--images", str(images), "--out",
            str(out), "--id", cid, "--cell-size", str(CELL), "--jobs", "2", *extra]


# -- (a) the naive path, as the AMNH scripts do it ----------------------------------
def naive(list_file: Path, positions_file: Path, out: Path) -> None:
    from PIL import Image

    paths = list_file.read_text().split()
    positions = np.load(positions_file)
    n_rows, n_cols = positions.max(axis=0) + 1
    matrix = Image.new("RGB", (int(n_cols) * CELL, int(n_rows) * CELL), "white")
    for path, (row, col) in zip(paths, positions):
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((CELL, CELL))
            matrix.paste(image, (int(col) * CELL, int(row) * CELL))
    deepzoom_pure_python(matrix, out / "naive_files")


def deepzoom_pure_python(image, folder: Path, tile: int = 256) -> None:
    """The vendored deepzoom.py approach: resize the whole image per level, crop tiles."""
    width, height = image.size
    levels = math.ceil(math.log2(max(width, height))) + 1
    for level in range(levels - 1, -1, -1):
        scale = 2 ** (levels - 1 - level)
        w, h = max(1, math.ceil(width / scale)), max(1, math.ceil(height / scale))
        level_image = image if scale == 1 else image.resize((w, h), resample=1)
        (folder / str(level)).mkdir(parents=True, exist_ok=True)
        for ty in range(math.ceil(h / tile)):
            for tx in range(math.ceil(w / tile)):
                box = (tx * tile, ty * tile, min(w, (tx + 1) * tile), min(h, (ty + 1) * tile))
                level_image.crop(box).save(folder / str(level) / f"{tx}_{ty}.jpg", quality=85)


# -- (b) dzsave alone on a prebuilt matrix file ---------------------------------------
def dzsave_only(bundle: Path, out: Path) -> None:
    import pyvips

    from mosaic.bundle import open_cells, read_manifest
    from mosaic.pipeline.render import cut_tiles, matrix_rows
    from mosaic.strips import write_tiff

    manifest = read_manifest(bundle)
    grid = manifest["grid"]
    out.mkdir(parents=True, exist_ok=True)
    matrix_path = out / "matrix.tif"
    cells = open_cells(bundle, manifest)
    write_tiff(matrix_path, matrix_rows(cells, np.load(bundle / "positions.npy"),
                                              grid["n_rows"], grid["n_cols"]),
                     grid["n_cols"] * cells.shape[1], grid["n_rows"] * cells.shape[1])
    pyvips.cache_set_max(0)
    start = time.perf_counter()
    cut_tiles(pyvips.Image.new_from_file(str(matrix_path), access="sequential"), out / "tiles")
    print(json.dumps({"cut_seconds": time.perf_counter() - start}))


def run_size(n: int, work: Path, naive_max: int) -> dict:
    images = work / "images"
    list_file = write_list(images, n, work / f"list_{n}.txt")
    out = work / f"out_{n}"
    shutil.rmtree(out, ignore_errors=True)  # every run starts cold
    row: dict = {"n": n}
    # Full pipeline with the raw embedding and t-SNE.
    seconds, rss, _ = measure(pipeline_command(list_file, out, "full", "--embedding", "raw"))
    manifest = json.loads((out / "full" / "manifest.json").read_text())
    row["full"] = {"seconds": seconds, "rss_mib": rss, "stages": manifest["timings"]}
    # (c) thumbnail + render: the same images with a given layout (no reduction).
    xy_file = work / f"xy_{n}.npy"
    np.save(xy_file, np.random.default_rng(0).uniform(size=(n, 2)).astype(np.float32))
    seconds, rss, _ = measure(pipeline_command(list_file, out, "ours", "--embedding",
                                               f"xy:{xy_file}"))
    manifest = json.loads((out / "ours" / "manifest.json").read_text())
    stages = manifest["timings"]
    row["ours"] = {"seconds": stages["decode"] + stages["render"], "rss_mib": rss,
                   "total_seconds": seconds}
    # (b) dzsave alone on the prebuilt matrix (matrix written first, not timed).
    _, rss, text = measure([sys.executable, __file__, "_dzsave", str(out / "ours"),
                            str(out / "floor")])
    row["floor"] = {"seconds": json.loads(text.strip().splitlines()[-1])["cut_seconds"],
                    "rss_mib": rss}
    (out / "floor" / "matrix.tif").unlink(missing_ok=True)
    # (a) naive, on the same images and positions.
    if n <= naive_max:
        seconds, rss, _ = measure([sys.executable, __file__, "_naive", str(list_file),
                                   str(out / "ours" / "positions.npy"), str(out / "naive")])
        row["naive"] = {"seconds": seconds, "rss_mib": rss}
    return row


def report(rows: list[dict], path: Path) -> None:
    lines = [
        "# Pipeline benchmark results",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}. Command: `python bench/pipeline_bench.py "
        f"--sizes {','.join(str(r['n']) for r in rows)}`. Images: generated 160x120 JPEGs; "
        f"cell {CELL} px; `--jobs 2`; raw embedding.",
        "",
        "## Full pipeline (raw embedding, openTSNE, auto grid)",
        "",
        "| N | wall s | peak RSS MiB | decode | vectors | layout | grid | render | index "
        "| metadata |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["full"]["stages"]
        index = sum(v for k, v in s.items() if k.startswith("index-"))
        lines.append(f"| {r['n']:,} | {r['full']['seconds']:.1f} | {r['full']['rss_mib']:.0f} | "
                     f"{s['decode']:.1f} | {s['vectors']:.1f} | {s['layout']:.1f} | "
                     f"{s['grid']:.1f} | {s['render']:.1f} | {index:.1f} | {s['metadata']:.1f} |")
    lines += [
        "",
        "## Thumbnail + render: naive (a) vs dzsave floor (b) vs mosaic (c)",
        "",
        "(c) = mosaic's decode + render stage times; its RSS is the whole pipeline process "
        "run with a given `xy:` layout. (b) times only `dzsave` on the prebuilt matrix "
        "file; its RSS includes writing that file first.",
        "",
        "| N | (a) s | (a) MiB | (b) s | (b) MiB | (c) s | (c) MiB | (c)/(a) time | "
        "(c)/(a) RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = r.get("naive")
        ratio_t = f"{r['ours']['seconds'] / a['seconds']:.2f}" if a else "n/a"
        ratio_m = f"{r['ours']['rss_mib'] / a['rss_mib']:.2f}" if a else "n/a"
        a_cells = f"{a['seconds']:.1f} | {a['rss_mib']:.0f}" if a else "not run | not run"
        lines.append(f"| {r['n']:,} | {a_cells} | {r['floor']['seconds']:.1f} | "
                     f"{r['floor']['rss_mib']:.0f} | {r['ours']['seconds']:.1f} | "
                     f"{r['ours']['rss_mib']:.0f} | {ratio_t} | {ratio_m} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_naive":
        naive(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_dzsave":
        dzsave_only(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--work", default="/tmp/mosaic-bench")
    parser.add_argument("--naive-max", type=int, default=10_000,
                        help="largest N for the naive path (it holds the whole matrix)")
    parser.add_argument("--report", default=str(ROOT / "docs" / "benchmarks-pipeline.md"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work)
    generate_images(work / "images", max(sizes))
    rows = []
    for n in sizes:
        rows.append(run_size(n, work, args.naive_max))
        print(json.dumps(rows[-1]), flush=True)
    report(rows, Path(args.report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
