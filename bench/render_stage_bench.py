"""The pipeline's render stage on a built bundle: its pyramid cut again, timed.

Runs what the stage runs (``mosaic.pipeline.render.render_grid``: the cells streamed
row by row of the grid into libvips ``dzsave``) on a finished bundle's own cells and
grid, writing the tiles into a scratch folder (the bundle is only read), and reports
the wall time, the process's CPU time and its peak RSS. ``--code`` times another
checkout's ``mosaic`` (e.g. ``git archive HEAD~1 mosaic | tar -x -C /tmp/before``)
on the same bundle, so a change is measured before and after on the same cells.
``--cold`` drops the page cache first (root): in the pipeline the cells were written
about 20 minutes (the decode stage) before the render reads them.

    python bench/render_stage_bench.py --bundle /work/bench-data/scale/out/scale-1000000 \\
        --scratch /work/bench-data/render-scratch --cold --results docs/data/render_stage_1m.jsonl
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from report import report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--scratch", type=Path, required=True, help="emptied, written, removed")
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the folder holding the mosaic package to time (this checkout)")
    parser.add_argument("--label", default="", help="what the code is, for the results")
    parser.add_argument("--cold", action="store_true", help="drop the page cache first (root)")
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(args.code.resolve()))
    import numpy as np

    from mosaic.bundle import Bundle
    from mosaic.pipeline import render

    bundle = Bundle.open(args.bundle)
    positions = np.load(args.bundle / "positions.npy")
    shutil.rmtree(args.scratch, ignore_errors=True)
    args.scratch.mkdir(parents=True)
    if args.cold:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    grid = bundle.grid
    with bundle.open_cells() as cells:
        started, cpu = time.perf_counter(), time.process_time()
        tiles, _ = render.render_grid(cells, positions, grid.n_rows, grid.n_cols,
                                      args.scratch / "tiles")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    tile_files = sum(len(files) for _, _, files in os.walk(args.scratch / "tiles"))
    shutil.rmtree(args.scratch, ignore_errors=True)
    result = {
        "date": time.strftime("%Y-%m-%d"), "bundle": bundle.id, "items": len(positions),
        "grid": [grid.n_rows, grid.n_cols], "cell_size": grid.cell_size,
        "code": args.label or str(args.code), "page_cache": "dropped" if args.cold else "as found",
        "render_s": round(seconds, 1), "cpu_s": round(cpu, 1),
        "cores_busy": round(cpu / seconds, 2),
        "tiles": tile_files, "levels": tiles["levels"],
    }
    report(result, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
