"""Decode + render as whole processes, side by side on one folder of images: naive,
floor and mosaic.

Every path runs as its own process tree, from interpreter start to exit, on the
same inputs (the images under ``--images``, in sorted path order) with the same
cell size:

  (a) naive, as the AMNH scripts do it: one PIL decode + thumbnail per image
      pasted into a whole-matrix PIL image, then a pure-Python DeepZoom cutter
      (``pipeline_bench.naive``), one process;
  (b) the floor: one process that decodes each image once with PIL (draft mode,
      thumbnail to the cell size), plus one process that runs libvips ``dzsave``
      alone on a prebuilt matrix file (written first, not timed); the two are
      added;
  (c) mosaic: ``python run.py pipeline --embedding xy:FILE`` (a given layout, so
      no reduction runs), the whole command; its decode and render stage times
      are read from the manifest too.

Each path runs ``--runs`` times, interleaved (a, b, c, a, b, c, ...), so that
other work on the machine weighs on all of them alike. Wall time is measured
around the process; CPU time is user + sys of the whole process tree (its
workers included: ``os.wait4``); peak RSS is the tree's summed RSS, sampled
every 0.1 s. The table shows the median of the runs and their range.

    python bench/decode_render_bench.py --images ~/emoji/64
    python bench/decode_render_bench.py --make-photos /tmp/photos --n 300   # needs scikit-image
    python bench/decode_render_bench.py --images /tmp/photos
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from scale_bench import tree_rss  # noqa: E402

SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".gif"}


def measured(command: list[str], cwd: Path) -> dict:
    """Wall seconds, CPU seconds (user + sys, the whole tree) and peak tree RSS (MiB)
    of one command, and its stdout."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, text=True)
    peak = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - started
    out = process.stdout.read()
    process.stdout.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command} failed with {process.returncode}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mib": peak / 2**20,
            "out": out}


# -- the floor's two processes (run as ``_pil`` and ``_dzsave``) ----------------------
def pil_decode_all(list_file: Path, cell: int) -> None:
    """The floor's decode: each image opened and decoded once by PIL, at draft scale."""
    from PIL import Image

    for line in list_file.read_text().splitlines():
        with Image.open(line) as image:
            image.draft("RGB", (cell, cell))
            image.convert("RGB").thumbnail((cell, cell))


def dzsave_alone(matrix: Path, out: Path) -> None:
    """The floor's cut: libvips dzsave on a matrix file, with mosaic's tile options."""
    import pyvips

    image = pyvips.Image.new_from_file(str(matrix), access="sequential")
    image.dzsave(str(out / "map"), tile_size=256, overlap=0, suffix=".jpg[Q=85,strip]",
                 layout="dz", depth="onepixel")


def build_matrix(bundle: Path, target: Path) -> None:
    """The floor's matrix file: mosaic's own grid of cells, written once, not timed."""
    from mosaic.bundle import open_cells, read_manifest
    from mosaic.pipeline.render import matrix_rows
    from mosaic.strips import write_tiff

    manifest = read_manifest(bundle)
    grid = manifest["grid"]
    cells = open_cells(bundle, manifest)
    cell = cells.shape[1]
    write_tiff(target, matrix_rows(cells, np.load(bundle / "positions.npy"),
                                         grid["n_rows"], grid["n_cols"]),
                     grid["n_cols"] * cell, grid["n_rows"] * cell)
    cells.close()


# -- photo-like test images ------------------------------------------------------------
def make_photos(folder: Path, n: int, seed: int) -> None:
    """``n`` distinct 1-4 Mpx JPEGs made from scikit-image's bundled photos: a random
    crop (60-100% of each side), upscaled with Lanczos to a random 1-4 Mpx at the crop's
    aspect, a per-channel gain (0.8-1.2) and gamma (0.8-1.25), a random mirror, JPEG
    quality 80-95 (4:2:0). Grey sources are tinted by the per-channel gains."""
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("--make-photos needs scikit-image: pip install scikit-image") from None
    from PIL import Image, ImageOps

    data = Path(skimage.data.__file__).parent
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
             "motorcycle_right.png", "retina.jpg", "hubble_deep_field.jpg", "ihc.png",
             "camera.png", "brick.png", "grass.png", "gravel.png", "moon.png", "coins.png"]
    sources = [Image.open(data / name).convert("RGB") for name in names if (data / name).exists()]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        source = sources[i % len(sources)]
        width, height = source.size
        crop_w, crop_h = (int(side * rng.uniform(0.6, 1.0)) for side in (width, height))
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        piece = source.crop((left, top, left + crop_w, top + crop_h))
        scale = (rng.uniform(1e6, 4e6) / (crop_w * crop_h)) ** 0.5
        piece = piece.resize((round(crop_w * scale), round(crop_h * scale)),
                             Image.Resampling.LANCZOS)
        pixels = np.asarray(piece, dtype=np.float32) / 255
        pixels = pixels ** rng.uniform(0.8, 1.25) * rng.uniform(0.8, 1.2, 3)
        piece = Image.fromarray(np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")
        if rng.random() < 0.5:
            piece = ImageOps.mirror(piece)
        piece.save(folder / f"photo_{i:04d}.jpg", quality=int(rng.integers(80, 96)))


# -- the comparison ---------------------------------------------------------------------
def list_images(images: Path, limit: int | None) -> list[Path]:
    paths = sorted(p.resolve() for p in images.rglob("*") if p.suffix.lower() in SUFFIXES)
    return paths[:limit] if limit else paths


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def run(args: argparse.Namespace) -> dict:
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    paths = list_images(args.images, args.limit)
    if not paths:
        raise SystemExit(f"no images under {args.images}")
    list_file = work / "list.txt"
    list_file.write_text("".join(f"{p}\n" for p in paths))
    for path in paths:  # warm the page cache, so the first path timed does not pay for it
        path.read_bytes()
    xy = work / "xy.npy"
    np.save(xy, np.random.default_rng(0).uniform(size=(len(paths), 2)).astype(np.float32))
    cell = str(args.cell_size)
    mosaic = [sys.executable, str(ROOT / "run.py"), "-q", "pipeline", "--images", str(list_file),
              "--out", str(work / "out"), "--id", "ours", "--cell-size", cell,
              "--embedding", f"xy:{xy}", *(["--jobs", str(args.jobs)] if args.jobs else [])]
    bundle = work / "out" / "ours"
    runs: dict[str, list[dict]] = {"naive": [], "floor": [], "mosaic": []}
    stages: list[dict] = []
    for number in range(args.runs):
        shutil.rmtree(work / "out", ignore_errors=True)
        runs["mosaic"].append(measured(mosaic, ROOT))
        stages.append(json.loads((bundle / "manifest.json").read_text())["timings"])
        if number == 0:
            build_matrix(bundle, work / "matrix.tif")
        runs["naive"].append(measured(
            [sys.executable, str(BENCH / "pipeline_bench.py"), "_naive", str(list_file),
             str(bundle / "positions.npy"), str(work / "naive")], ROOT))
        shutil.rmtree(work / "naive", ignore_errors=True)
        decode = measured([sys.executable, __file__, "_pil", str(list_file), cell], ROOT)
        (work / "floor").mkdir(exist_ok=True)
        cut = measured([sys.executable, __file__, "_dzsave", str(work / "matrix.tif"),
                        str(work / "floor")], ROOT)
        shutil.rmtree(work / "floor", ignore_errors=True)
        runs["floor"].append({"wall": decode["wall"] + cut["wall"],
                              "cpu": decode["cpu"] + cut["cpu"],
                              "rss_mib": max(decode["rss_mib"], cut["rss_mib"]),
                              "pil_wall": decode["wall"], "dzsave_wall": cut["wall"]})
        print(f"run {number + 1}/{args.runs}: " + ", ".join(
            f"{name} {r[-1]['wall']:.2f} s" for name, r in runs.items()), file=sys.stderr)
    result = {"images": str(args.images), "n": len(paths), "cell_size": args.cell_size,
              "runs": args.runs, "machine": f"{os.cpu_count()} CPUs"}
    for name, measurements in runs.items():
        result[name] = {key: summary([m[key] for m in measurements])
                        for key in ("wall", "cpu", "rss_mib")}
    result["floor"]["pil_wall"] = summary([m["pil_wall"] for m in runs["floor"]])
    result["floor"]["dzsave_wall"] = summary([m["dzsave_wall"] for m in runs["floor"]])
    result["mosaic"]["stages"] = {name: summary([s[name] for s in stages])
                                  for name in ("decode", "render")}
    for key in ("wall", "cpu"):
        ours = result["mosaic"][key]["median"]
        result[f"{key}_vs_naive"] = round(ours / result["naive"][key]["median"], 2)
        result[f"{key}_vs_floor"] = round(ours / result["floor"][key]["median"], 2)
    return result


def table(result: dict) -> str:
    def cell(entry: dict) -> str:
        return f"{entry['median']:.2f} ({entry['min']:.2f}-{entry['max']:.2f})"

    stages = result["mosaic"]["stages"]
    lines = [f"{result['n']} images from {result['images']}, {result['cell_size']}-px cells, "
             f"median (min-max) of {result['runs']} runs, {result['machine']}",
             "",
             "| path | wall s | CPU s | peak RSS MiB |", "|---|---|---|---|"]
    notes = {"naive": "naive (PIL matrix + pure-Python DeepZoom)",
             "floor": f"floor (PIL decode {result['floor']['pil_wall']['median']:.2f} s + "
                      f"dzsave alone {result['floor']['dzsave_wall']['median']:.2f} s)",
             "mosaic": f"mosaic (stages: decode {stages['decode']['median']:.2f} s, "
                       f"render {stages['render']['median']:.2f} s)"}
    for name in ("naive", "floor", "mosaic"):
        entry = result[name]
        lines.append(f"| {notes[name]} | {cell(entry['wall'])} | {cell(entry['cpu'])} | "
                     f"{entry['rss_mib']['median']:.0f} |")
    lines += ["", f"mosaic / naive: wall {result['wall_vs_naive']:.2f}x, CPU "
              f"{result['cpu_vs_naive']:.2f}x; mosaic / floor: wall "
              f"{result['wall_vs_floor']:.2f}x, CPU {result['cpu_vs_floor']:.2f}x"]
    return "\n".join(lines)


def main() -> int:
    if sys.argv[1:2] == ["_pil"]:
        pil_decode_all(Path(sys.argv[2]), int(sys.argv[3]))
        return 0
    if sys.argv[1:2] == ["_dzsave"]:
        dzsave_alone(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="a folder of images (searched recursively)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--runs", type=int, default=3, help="runs of each path (default: 3)")
    parser.add_argument("--cell-size", type=int, default=128, help="default: 128")
    parser.add_argument("--jobs", type=int, default=None,
                        help="mosaic's --jobs (default: mosaic's own, one per CPU)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/decode-render-bench"),
                        help="scratch folder, emptied first (default: /tmp/decode-render-bench)")
    parser.add_argument("--make-photos", type=Path, metavar="DIR",
                        help="write --n photo-like 1-4 Mpx JPEGs into DIR and stop")
    parser.add_argument("--n", type=int, default=300, help="with --make-photos (default: 300)")
    parser.add_argument("--seed", type=int, default=0, help="with --make-photos (default: 0)")
    args = parser.parse_args()
    if args.make_photos:
        make_photos(args.make_photos, args.n, args.seed)
        return 0
    if not args.images:
        parser.error("--images is required")
    result = run(args)
    print(table(result))
    with open(args.work.parent / "decode_render.jsonl", "a") as handle:
        handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
