"""Benchmark ``run.py poster``: an A0 poster at 300 dpi from a large bundle.

Builds (once, cached in ``--work``) a synthetic bundle with only the files a
poster reads: ``cells.u8`` at the pipeline's default 128-px cells, the 2-D
layout (clustered blobs), its grid (``mosaic.pipeline.grid.assign_grid``) and
``metadata.sqlite`` (``mosaic.pipeline.metadata``). The images themselves do not
exist, so cases that need bigger cells than the stored ones exercise the
fallback (stored cells upscaled). Each case runs ``run.py poster`` in a child
process; its wall time, and its peak memory sampled from ``/proc/<pid>/status``
every 20 ms: ``VmHWM`` (the kernel's peak RSS) and the peak of ``RssAnon``.
``wait4``'s ``ru_maxrss`` is not used: Linux carries the parent's peak across
fork and exec.

    python bench/poster_bench.py --n 100000 --report docs/benchmarks-poster.md
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
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mosaic import SCHEMA_VERSION, __version__  # noqa: E402
from mosaic.bundle import cells_entry  # noqa: E402
from mosaic.pipeline.decode import write_cells  # noqa: E402
from mosaic.pipeline.grid import assign_grid  # noqa: E402
from mosaic.pipeline.metadata import ItemRecord, write_metadata_db  # noqa: E402

CASES = {
    "map-pdf": ("whole map", ["--title", "Synthetic map", "--subtitle", "{n} items"], ".pdf"),
    "map-tif": ("whole map", [], ".tif"),
    "map-png": ("whole map", [], ".png"),
    "subset-pdf": ("one category, re-gridded", ["--where", "category=cluster-03",
                                                  "--hotspots"], ".pdf"),
    "sample-pdf": ("--random 144 (cells upscaled)", ["--random", "144", "--seed", "1"], ".pdf"),
}


def build_bundle(folder: Path, n: int, cell_size: int, clusters: int = 12, seed: int = 0) -> Path:
    """Write the poster-relevant files of an ``n``-item bundle to ``folder``."""
    params = {"n": n, "cell_size": cell_size, "clusters": clusters, "seed": seed}
    manifest_path = folder / "manifest.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text())["parameters"] == params:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, n)
    centres = rng.uniform(0.1, 0.9, size=(clusters, 2))
    layout = centres[labels] + rng.normal(scale=0.07, size=(n, 2))
    layout = ((layout - layout.min(0)) / np.ptp(layout, axis=0)).astype(np.float32)
    positions, (n_rows, n_cols) = assign_grid(layout, method="rasterfairy")
    np.save(folder / "layout.npy", layout)
    np.save(folder / "positions.npy", positions)
    colours = rng.integers(30, 225, size=(clusters, 3)).astype(np.int16)
    yy, xx = (np.mgrid[0:cell_size, 0:cell_size] / cell_size).astype(np.float32)
    cells = np.memmap(folder / "cells.u8", dtype=np.uint8, mode="w+",
                      shape=(n, cell_size, cell_size, 3))
    for start in range(0, n, 256):
        ids = np.arange(start, min(start + 256, n))
        centre = rng.uniform(0.25, 0.75, size=(len(ids), 2, 1, 1)).astype(np.float32)
        disc = ((xx - centre[:, 0]) ** 2 + (yy - centre[:, 1]) ** 2) < 0.04
        shade = (40 * (xx + yy))[None, :, :, None]
        block = colours[labels[ids]][:, None, None, :] - 20 + shade
        block = np.where(disc[..., None], 255 - block, block)
        cells[start:ids[-1] + 1] = np.clip(block, 0, 255).astype(np.uint8)
    cells.flush()
    write_cells(cells, folder / "cells.pack", folder / "cells.idx")
    del cells
    (folder / "cells.u8").unlink()
    kinds = {"category": "facet", "year": "year"}
    years = rng.integers(1900, 2025, n)
    write_metadata_db(folder / "metadata.sqlite", (
        ItemRecord(id=i, source=f"/synthetic/{i:07d}.jpg", row=int(positions[i, 0]),
                   col=int(positions[i, 1]), x=float(layout[i, 0]), y=float(layout[i, 1]),
                   title=f"item {i}", url=None, width=cell_size, height=cell_size,
                   metadata={"category": f"cluster-{labels[i]:02d}", "year": str(years[i])})
        for i in range(n)), kinds)
    first = {c: int(np.flatnonzero(labels == c)[0]) for c in range(clusters)}
    manifest = {
        "schema_version": SCHEMA_VERSION, "program": "mosaic (bench/poster_bench.py)",
        "program_version": __version__, "id": folder.name, "title": f"synthetic {n}",
        "parameters": params,
        "counts": {"inputs": n, "items": n, "skipped": 0},
        "grid": {"n_rows": n_rows, "n_cols": n_cols, "cell_size": cell_size, "fit": "fit",
                 "method": "rasterfairy"},
        "files": {"metadata": "metadata.sqlite", "positions": "positions.npy",
                  "layout": "layout.npy", "cells": "cells.pack", "cells_index": "cells.idx"},
        "cells": cells_entry(n, cell_size),
        "columns": [{"name": k, "kind": v} for k, v in kinds.items()],
        "facets": ["category"],
        "hotspots": [{"id": c, "label": f"cluster {c}", "representative": first[c],
                      "row": int(positions[first[c], 0]), "col": int(positions[first[c], 1])}
                     for c in range(clusters)],
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return folder


def run_case(bundle: Path, output: Path, args: list[str], page: list[str]) -> dict:
    """Run one poster in a child process; return time, peak RSS and the record."""
    command = [sys.executable, str(ROOT / "run.py"), "poster", "--bundle", str(bundle),
               "-o", str(output), "-q", *page, *args]
    peak = {"anon": 0, "hwm": 0}
    started = time.perf_counter()
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    sampler = threading.Thread(target=_sample, args=(child, peak), daemon=True)
    sampler.start()
    _pid, status, _usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    error = child.stderr.read()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{error}")
    record = json.loads(output.with_name(output.stem + ".items.json").read_text())
    return {"seconds": elapsed, "peak_rss_mb": peak["hwm"] / 1024,
            "peak_anon_mb": peak["anon"] / 1024, "record": record,
            "bytes": output.stat().st_size}


def _sample(child: subprocess.Popen, peak: dict) -> None:
    status = Path(f"/proc/{child.pid}/status")
    while child.returncode is None:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            return
        peak["anon"] = max(peak["anon"], int(fields.get("RssAnon", "0 kB").split()[0]))
        peak["hwm"] = max(peak["hwm"], int(fields.get("VmHWM", "0 kB").split()[0]))
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="items (default: %(default)s)")
    parser.add_argument("--cell-size", type=int, default=128, help="(default: %(default)s)")
    parser.add_argument("--work", default="/tmp/mosaic-poster-bench",
                        help="bundle and outputs (default: %(default)s)")
    parser.add_argument("--paper", default="A0")
    parser.add_argument("--dpi", default="300")
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated, from: " + ", ".join(CASES))
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per case; the fastest is reported (default: %(default)s)")
    parser.add_argument("--report", help="write a Markdown report here")
    args = parser.parse_args(argv)
    work = Path(args.work)
    started = time.perf_counter()
    bundle = build_bundle(work / f"poster{args.n}", args.n, args.cell_size)
    print(f"bundle {bundle} ready in {time.perf_counter() - started:.1f} s", flush=True)
    page = ["--paper", args.paper, "--dpi", args.dpi]
    rows = []
    for name in args.cases.split(","):
        what, extra, suffix = CASES[name]
        extra = [a.replace("{n}", f"{args.n:,}") for a in extra]
        runs = []
        for _ in range(max(1, args.repeat)):
            load = os.getloadavg()[0]
            runs.append({**run_case(bundle, work / f"{name}{suffix}", extra, page),
                         "load": load})
        result = min(runs, key=lambda r: r["seconds"])
        record = result["record"]
        size = record["page"]["size_px"]
        line = (f"| {name} | {what} | {record['count']:,} | {record['grid']['cell_px']} | "
                f"{size[0]} x {size[1]} | {result['bytes'] / 1e6:.0f} MB | "
                f"{result['seconds']:.1f} s | {result['peak_rss_mb']:.0f} MB | "
                f"{result['peak_anon_mb']:.0f} MB | {result['load']:.1f} | "
                f"{record['timings']['montage']:.1f} + {record['timings']['save']:.1f} s |")
        print(line, flush=True)
        rows.append(line)
    if args.report:
        _write_report(Path(args.report), args, rows)
    return 0


HEADER = ("| case | content | items | cell px | page px | file | time | peak RSS | peak anon "
          "| load | montage + save |\n" + "|---" * 11 + "|\n")


def _write_report(path: Path, args: argparse.Namespace, rows: list[str]) -> None:
    cpu = os.cpu_count()
    cells_gb = args.n * args.cell_size ** 2 * 3 / 1e9
    intro = f"""# Poster benchmark

`python bench/poster_bench.py --n {args.n} --cell-size {args.cell_size} --paper {args.paper} \
--dpi {args.dpi} --repeat {args.repeat}` on {datetime.now(timezone.utc):%Y-%m-%d}:
{platform.machine()}, {cpu} CPUs, Python {platform.python_version()}, mosaic {__version__}.

The bundle is synthetic ({args.n:,} items, {args.cell_size}-px stored cells, clustered
layout, grid from `assign_grid`), with only the files a poster reads; see the
script's docstring. Each poster runs in its own process. *Peak RSS* is the
kernel's high-water mark (`VmHWM`, file-backed pages such as shared libraries
included); *peak anon* is the peak of the sampled anonymous RSS. *load* is
the machine's 1-minute load average when the run started (this machine is
shared; {args.repeat} run(s) per
case, the fastest shown).

"""
    notes = f"""
- *montage* is reading and resizing the stored cells and writing the montage
  rows (it does not depend on the output format); *save* is libvips encoding
  the page. The synthetic cells (flat colours, a disc, a gradient) encode
  faster than photographs would, so expect *save* to grow with real images;
  the memory figures do not depend on content.
- Whole-map cases read all of `cells.u8` ({cells_gb:.1f} GB) in id order, once;
  the page cache decides whether that is a disk read.
- `sample-pdf` prints 144 cells of about 800 px. The synthetic bundle has no
  source images, so this measures the fallback (stored cells upscaled, one
  warning); with real sources each image is decoded again at that size.
- Disk: a temporary folder beside the output holds the montage as an
  uncompressed TIFF (at most the page: about 420 MB for A0 at 300 dpi) and
  the resized cells.
"""
    path.write_text(intro + HEADER + "\n".join(rows) + "\n" + notes)


if __name__ == "__main__":
    raise SystemExit(main())
