"""The render stage's matrix: written to a strip TIFF file (old) vs streamed into dzsave (new).

Each run is a fresh process rendering N synthetic 128 px cells (generated in
``read_rows`` from the ids, so no cell file is read and nothing else holds
memory) with the bundle's default tiles (256 px JPEG, Q 85). Reports wall
time, the child's peak RSS and the peak size of the files outside ``tiles/``
(the scratch), polled every 20 ms.

    python bench/render_stream_bench.py --sizes 10000,100000
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mosaic.bundle import grid_shape  # noqa: E402


class SyntheticCells:
    """(n, c, c, 3) uint8 cells made on demand: a fixed noise tile tinted per id."""

    def __init__(self, n: int, cell: int):
        self.shape = (n, cell, cell, 3)
        self.noise = np.random.default_rng(0).integers(0, 64, size=(cell, cell, 3),
                                                       dtype=np.uint8)
        self.tints = np.random.default_rng(1).integers(0, 192, size=(4096, 3), dtype=np.uint8)

    def read_rows(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        return self.noise[None] + self.tints[ids % len(self.tints)][:, None, None, :]


def scratch_size(root: Path) -> int:
    total = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("tiles", "tiles.tmp")]
        for name in files:
            try:
                total += (Path(folder) / name).stat().st_size
            except FileNotFoundError:
                pass
    return total


def render_once(way: str, n: int, cell: int, root: Path) -> dict:
    """One render into ``root`` (run in the child process)."""
    import pyvips

    from mosaic.pipeline import render
    from mosaic.strips import write_tiff

    n_rows, n_cols = grid_shape(n)
    positions = np.stack([np.arange(n) // n_cols, np.arange(n) % n_cols], axis=1)
    cells = SyntheticCells(n, cell)
    (root / "cache").mkdir(parents=True, exist_ok=True)
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], scratch_size(root))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    if way == "file":
        path = root / "cache" / "matrix.tif"
        write_tiff(path, render.matrix_rows(cells, positions, n_rows, n_cols),
                         n_cols * cell, n_rows * cell)
        written = time.perf_counter()
        peak[0] = max(peak[0], scratch_size(root))
        matrix = pyvips.Image.new_from_file(str(path), access="sequential")
    else:
        written = started
        matrix = render.stream_matrix(cells, positions, n_rows, n_cols)
    tiles = render.cut_tiles(matrix, root / "tiles")
    if way == "file":
        path.unlink()
    render.render_overview(root / "tiles", tiles)
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    return {"way": way, "n": n, "width": tiles["width"], "height": tiles["height"],
            "seconds": round(seconds, 2), "write_seconds": round(written - started, 2),
            "scratch_bytes": peak[0]}


def measure(way: str, n: int, cell: int, work: Path) -> dict:
    root = work / f"{way}-{n}"
    shutil.rmtree(root, ignore_errors=True)
    child = subprocess.Popen([sys.executable, __file__, "_run", way, str(n), str(cell),
                              str(root)], stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"{way} at N={n} failed with status {status}")
    result = json.loads(output.strip().splitlines()[-1])
    result["rss_mib"] = round(usage.ru_maxrss / 1024)
    shutil.rmtree(root, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_run":
        way, n, cell, root = argv[1], int(argv[2]), int(argv[3]), Path(argv[4])
        print(json.dumps(render_once(way, n, cell, root)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--cell-size", type=int, default=128)
    parser.add_argument("--work", default="/tmp/render-stream-bench")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print("| N | matrix | way | wall s (of which writing the file) | peak RSS MiB "
          "| peak scratch |")
    print("|---|---|---|---|---|---|")
    for n in [int(s) for s in args.sizes.split(",")]:
        for way in ("file", "stream"):
            r = measure(way, n, args.cell_size, work)
            write = f" ({r['write_seconds']:.1f})" if way == "file" else ""
            print(f"| {n:,} | {r['width']:,} x {r['height']:,} | {way} | {r['seconds']:.1f}{write} "
                  f"| {r['rss_mib']:,} | {r['scratch_bytes'] / 2**20:,.0f} MiB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
