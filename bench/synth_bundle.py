"""Write a synthetic bundle of N items (docs/bundle.md) without images or TensorFlow.

For load-testing the server at sizes the full pipeline takes too long to
build here. Items come in ``--clusters`` clusters: an embedding drawn around
each cluster's centre, a cell of the cluster's colour with per-item noise,
and metadata (a text column, a ``category`` facet, a ``year``). Clusters fill
the grid in row-major blocks. The bundle is written with the pipeline's own
writers (mosaic.pipeline.metadata, mosaic.pipeline.render, mosaic.pipeline.index).

    python bench/synth_bundle.py --n 100000 --out /tmp/bench-out --id synth100k
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mosaic import SCHEMA_VERSION, __version__  # noqa: E402
from mosaic.bundle import cells_entry  # noqa: E402
from mosaic.pipeline.decode import write_cells  # noqa: E402
from mosaic.pipeline.grid import cell_ids, grid_shape  # noqa: E402
from mosaic.pipeline.index import build_annoy, choose_search_k  # noqa: E402
from mosaic.pipeline.metadata import ItemRecord, write_metadata_db  # noqa: E402
from mosaic.pipeline.render import cut_tiles, render_overview, stream_matrix  # noqa: E402

WORDS = ("red green blue amber violet harbour mountain river forest desert city market "
         "portrait still life garden winter summer night morning bridge tower").split()


def build(out: Path, cid: str, n: int, clusters: int = 12, dim: int = 64,
          cell_size: int = 32, seed: int = 0, clip_weights: str | None = None) -> Path:
    """Write the bundle ``out/cid`` and return its folder. With ``clip_weights`` (a
    KerasHub preset folder) the embedding is a ``clip`` one of that model: unit vectors
    stored as float16, as the pipeline stores clip's, so the server searches it by
    meaning through that model's text tower (the vectors are still synthetic)."""
    rng = np.random.default_rng(seed)
    folder = out / cid
    (folder / "embeddings").mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    labels = np.sort(rng.integers(0, clusters, n))
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    vectors = centres[labels] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    name = "clip" if clip_weights else "synth"
    if clip_weights:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(folder / "embeddings" / f"{name}.npy",
            vectors.astype(np.float16) if clip_weights else vectors)

    n_rows, n_cols = grid_shape(n)
    positions = np.stack([np.arange(n) // n_cols, np.arange(n) % n_cols], axis=1).astype(np.int32)
    np.save(folder / "positions.npy", positions)
    layout = np.stack([(positions[:, 1] + 0.5) / n_cols, (positions[:, 0] + 0.5) / n_rows],
                      axis=1).astype(np.float32)
    np.save(folder / "layout.npy", layout)
    cell_ids(positions, n_rows, n_cols).astype("<i4").tofile(folder / "grid.i32")

    colours = rng.integers(40, 230, size=(clusters, 3))
    cells = np.memmap(folder / "cells.u8", dtype=np.uint8, mode="w+",
                      shape=(n, cell_size, cell_size, 3))
    for start in range(0, n, 4096):
        stop = min(start + 4096, n)
        noise = rng.integers(-25, 26, size=(stop - start, cell_size, cell_size, 3))
        cells[start:stop] = np.clip(colours[labels[start:stop], None, None, :] + noise, 0, 255)
    cells.flush()
    write_cells(cells, folder / "cells.pack", folder / "cells.idx")
    timings["arrays"] = time.perf_counter() - started

    kinds = {"description": "text", "category": "facet", "year": "year"}
    years = rng.integers(1850, 2025, n)
    records = (
        ItemRecord(
            id=i, source=f"/synthetic/{i:07d}.jpg", row=int(positions[i, 0]),
            col=int(positions[i, 1]), x=float(layout[i, 0]), y=float(layout[i, 1]),
            title=f"item {i}", url=None, width=cell_size, height=cell_size,
            metadata={"description": " ".join(rng.choice(WORDS, 4)),
                      "category": f"cluster-{labels[i]:02d}", "year": str(years[i])})
        for i in range(n))
    write_metadata_db(folder / "metadata.sqlite", records, kinds)
    timings["metadata"] = time.perf_counter() - started - sum(timings.values())

    tiles = cut_tiles(stream_matrix(cells, positions, n_rows, n_cols), folder / "tiles")
    overview = render_overview(folder / "tiles", tiles)
    overview.jpegsave(str(folder / "overview.jpg"), Q=85)
    timings["render"] = time.perf_counter() - started - sum(timings.values())
    del cells
    (folder / "cells.u8").unlink()  # the raw cells were only the generator's scratch

    index = build_annoy(vectors, "angular", n_trees=20, random_state=seed,
                        path=folder / "embeddings" / f"{name}.ann")
    search_k, recall = choose_search_k(index, vectors, "angular", random_state=seed)
    index.unload()
    timings["index"] = time.perf_counter() - started - sum(timings.values())

    first_of = {c: int(np.searchsorted(labels, c)) for c in range(clusters)}
    manifest = {
        "schema_version": SCHEMA_VERSION, "program": "mosaic (bench/synth_bundle.py)",
        "program_version": __version__, "id": cid, "title": f"synthetic {n} items",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parameters": {"n": n, "clusters": clusters, "dim": dim, "cell_size": cell_size,
                       "seed": seed},
        "counts": {"inputs": n, "items": n, "skipped": 0, "metadata_rows": n,
                   "images_without_row": 0, "rows_without_image": 0},
        "grid": {"n_rows": n_rows, "n_cols": n_cols, "cell_size": cell_size,
                 "fit": "fit", "method": "synthetic"},
        "tiles": tiles,
        "overview": {"path": "overview.jpg", "width": overview.width,
                     "height": overview.height},
        "files": {"metadata": "metadata.sqlite", "positions": "positions.npy",
                  "layout": "layout.npy", "grid": "grid.i32", "cells": "cells.pack",
                  "cells_index": "cells.idx"},
        "cells": cells_entry(n, cell_size),
        "embeddings": [{"name": name, "kind": "clip" if clip_weights else "synthetic",
                        "dim": dim, "metric": "angular", "vectors": f"embeddings/{name}.npy",
                        "dtype": "float16" if clip_weights else "float32",
                        "index": f"embeddings/{name}.ann",
                        "n_trees": 20, "search_k": search_k, "recall_at_20": recall,
                        **({"weights": clip_weights} if clip_weights else {})}],
        "layout": {"embedding": name, "reducer": "none"},
        "display": {"title": "item {id}", "url": None},
        "columns": [{"name": k, "kind": v} for k, v in kinds.items()],
        "facets": ["category"],
        "hotspots": [{"id": c, "label": f"cluster-{c:02d}", "size": int((labels == c).sum()),
                      "representative": first_of[c], "row": int(positions[first_of[c], 0]),
                      "col": int(positions[first_of[c], 1])} for c in range(clusters)],
        "skipped": [], "unmatched": {"images_without_row": [], "rows_without_image": []},
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, folder / "manifest.json")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="items (default: %(default)s)")
    parser.add_argument("--out", default="output", help="output folder (default: %(default)s)")
    parser.add_argument("--id", default=None, help="bundle id (default: synth<N>)")
    parser.add_argument("--cell-size", type=int, default=32, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    folder = build(Path(args.out), args.id or f"synth{args.n}", args.n,
                   cell_size=args.cell_size)
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
