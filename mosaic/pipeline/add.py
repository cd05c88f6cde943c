"""``run.py add``: new images into a finished bundle without a rebuild, as a new generation.

The new images are decoded with the bundle's own settings (cell size, fit,
background, pixel limit, embeddings and weights: ``decode.query_options``), in
the same resumable chunks as the pipeline (``cache/add-work``). Each gets the
next free id (``counts.items`` onwards; no id changes) and is placed into the
existing similarity layout as openTSNE places new points: at the median of its
``PLACE_K`` nearest items' positions in the layout embedding, and on the grid
near the median of their cells (``mosaic.pipeline.place``): within ``reach``
cells, in the cell whose surroundings hold most of its nearest items, taking it
from an item that fits its own place poorly (that one moves to a free cell; no
other existing item moves), or a free cell there (a removed item's cell is free
too). Where the grid has fewer free cells than new items it grows by whole rows
at the bottom, and the pyramid with it. Only the tiles over the changed cells
(and the new rows), and their ancestors, are rendered again
(``retile.rewrite_tiles``).

The other layouts (date, category, geo) are arranged again over all items and
rendered whole: their blocks are sized by their counts, so a new item can
reshape them (the result says how many existing items moved there). Vectors
grow by the new rows; annoy indexes are rebuilt; every existing item's stored
neighbour list takes in the new items that are nearer than its last one, and
the new items get lists of their own; ``metadata.sqlite`` gains their rows,
search text and facet counts; each new item joins the labelled regions of its
nearest item and the regions are labelled again.

An image already in the collection (the same path, or a decoded cell equal to
an existing item's byte for byte) is reported and not added, unless
``allow_duplicates``. Everything is written into the next generation
(``mosaic.pipeline.generation``): served at once, or not at all.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from mosaic import __version__, knn
from mosaic.bundle import (
    Bundle,
    PackedCells,
    layout_entries,
    npy_layout,
    open_cells,
    open_top_neighbors,
    open_vectors,
    read_manifest,
    read_regions,
    stored_manifest,
)
from mosaic.errors import MosaicError, UsageError
from mosaic.pipeline import arrange, collect, edit, generation, render, retile
from mosaic.pipeline.decode import DONE, compact, open_executor, query_options, run_decode
from mosaic.pipeline.embed import PIXEL_KINDS
from mosaic.pipeline.index import build_annoy
from mosaic.pipeline.metadata import ItemRecord, insert_items
from mosaic.pipeline.place import FIT_K, REACH, place_items
from mosaic.pipeline.reduce import PLACE_K
from mosaic.pipeline.store import bundle_lock, cache_key, create_npy_rows, write_json_atomic
from mosaic.progress import Progress

logger = logging.getLogger(__name__)

ADD_WORK = "cache/add-work"
_BLOCK = 65_536  # existing rows of a neighbour list handled at a time
_PAIRS = 16_000_000  # at most this many (existing, new) distances in memory at once
# Past this share of the deepest level's tiles changed, the pyramid is cut again whole
# (one streamed dzsave) instead of tile by tile.
FULL_RENDER_SHARE = 0.25


@dataclass
class AddResult:
    directory: Path
    added: list[int] = field(default_factory=list)  # the new items' ids
    duplicates: list[dict] = field(default_factory=list)  # {"source", "reason"}: not added
    skipped: list[dict] = field(default_factory=list)  # {"source", "reason"}: undecodable
    generation: int = 1
    tiles: dict[str, int] = field(default_factory=dict)  # layout -> tiles written
    grown_rows: int = 0  # rows the similarity grid grew by
    moved: dict[str, int] = field(default_factory=dict)  # layout -> existing items moved
    # similarity: how far (cells, Chebyshev) the moved items went: {"median", "max"}
    moved_cells: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def check_addable(manifest: dict) -> None:
    """UsageError where a bundle's vectors or layouts cannot be made for new images
    from their pixels alone (an embedding or layout read from the user's file)."""
    for embedding in manifest.get("embeddings", []):
        if embedding.get("kind") not in PIXEL_KINDS:
            raise UsageError(
                f"collection {manifest['id']!r} has the embedding {embedding['name']!r}, "
                f"read from a file of vectors: new images cannot be embedded the same way; "
                f"rebuild it with run.py pipeline")
    for entry in layout_entries(manifest)[1:]:
        if entry["kind"] == "xy":
            raise UsageError(
                f"collection {manifest['id']!r} has the layout {entry['name']!r}, read from "
                f"a file of x, y: new images have no place in it; rebuild it with "
                f"run.py pipeline")


def add_items(directory: Path, inputs: collect.Inputs,
              metadata: collect.Metadata | None = None, *, allow_duplicates: bool = False,
              jobs: int = 1, reach: int = REACH, show_progress: bool = False
              ) -> AddResult:
    """Add the images ``inputs`` (with their ``metadata`` rows) to the bundle at
    ``directory`` (held under its lock) as its next generation; see the module."""
    started = time.perf_counter()
    with bundle_lock(directory):
        manifest = read_manifest(directory)
        check_addable(manifest)
        result = AddResult(directory, generation=int(manifest.get("generation", 1)))
        _check_columns(manifest, metadata)
        sources = _sources(directory, manifest)
        paths = []
        for path in inputs.paths:
            shown = collect.display_path(os.path.abspath(path))
            if shown in sources and not allow_duplicates:
                result.duplicates.append({"source": shown, "reason": f"already item "
                                          f"{sources[shown]} (the same file)"})
            else:
                paths.append(path)
        if not paths:
            generation.finish(directory)
            return _done(result, started)
        options = query_options(Bundle.from_manifest(manifest, directory))
        work = directory / ADD_WORK
        key = cache_key(__version__, "add", [collect.display_path(p) for p in paths],
                        [_signature(p) for p in paths], repr(options),
                        manifest.get("cells", {}).get("decoder"))
        with Progress(len(paths), "decode", show_progress) as bar, \
                open_executor(jobs) as (executor, workers):
            summary = run_decode(paths, options, work, key, executor, workers, bar.update)
        decoded = np.flatnonzero(summary.status == DONE)
        result.skipped = [{"source": collect.display_path(paths[i]),
                           "reason": summary.failures[i]} for i in sorted(summary.failures)]
        dims = {e["kind"]: int(e["dim"]) for e in manifest["embeddings"]}
        compact(work, len(paths), len(decoded), work / "cells.pack", work / "cells.idx",
                {kind: work / f"{kind}.npy" for kind in dims}, dims)
        fresh_cells = PackedCells(work / "cells.pack", work / "cells.idx",
                                  (len(decoded), *manifest["cells"]["shape"][1:]))
        try:
            keep = _drop_same_pixels(directory, manifest, decoded, paths, fresh_cells,
                                     allow_duplicates, result)
            if len(keep):
                _add(directory, manifest, paths, summary.sizes, decoded, keep, fresh_cells,
                     inputs, metadata, result, reach)
        finally:
            fresh_cells.close()
        generation.finish(directory)
        shutil.rmtree(work, ignore_errors=True)
    return _done(result, started)


def _done(result: AddResult, started: float) -> AddResult:
    result.seconds = time.perf_counter() - started
    return result


def _signature(path: str) -> list:
    try:
        stat = os.stat(path)
        return [stat.st_size, stat.st_mtime_ns]
    except OSError as error:
        return [type(error).__name__]


def _check_columns(manifest: dict, metadata: collect.Metadata | None) -> None:
    """A CSV for new images must not bring columns the collection lacks (they would have
    no kind, no facet and no place in search): UsageError naming them."""
    if metadata is None:
        return
    known = {c["name"] for c in manifest.get("columns", [])}
    extra = [c for c in metadata.columns if c not in known and c != metadata.filename_column]
    if extra:
        raise UsageError(f"--metadata has columns collection {manifest['id']!r} lacks: "
                         f"{', '.join(extra)} (its columns: {', '.join(sorted(known)) or 'none'})")


def _sources(directory: Path, manifest: dict) -> dict[str, int]:
    """Each item's source path (as stored) -> its id."""
    conn = _connect_ro(directory / manifest["files"]["metadata"])
    try:
        return {source: item for item, source in conn.execute("SELECT id, source FROM items")}
    finally:
        conn.close()


def _connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _drop_same_pixels(directory: Path, manifest: dict, decoded: np.ndarray, paths: list[str],
                      fresh: PackedCells, allow: bool, result: AddResult) -> np.ndarray:
    """The rows of ``fresh`` to add: those whose cell bytes equal no existing item's
    (looked up among its nearest items in the first embedding) nor an earlier new one's."""
    if allow:
        return np.arange(len(decoded))
    embedding = manifest["embeddings"][0]
    vectors = open_vectors(directory / ADD_WORK,
                           {**embedding, "vectors": f"{embedding['kind']}.npy"})
    nearest = _nearest_existing(directory, manifest, embedding, vectors, 3)
    cells = open_cells(directory, manifest)
    seen: dict[bytes, int] = {}
    keep = []
    try:
        for row in range(len(decoded)):
            data = fresh.read_encoded(row)
            digest = hashlib.sha256(data).digest()
            twin = next((int(i) for i in nearest[row] if i >= 0
                         and cells.read_encoded(int(i)) == data), None)
            source = collect.display_path(paths[decoded[row]])
            if twin is not None:
                result.duplicates.append({"source": source,
                                          "reason": f"the same pixels as item {twin}"})
            elif digest in seen:
                result.duplicates.append({"source": source, "reason": "the same pixels as "
                                          f"{collect.display_path(paths[decoded[seen[digest]]])}"})
            else:
                seen[digest] = row
                keep.append(row)
    finally:
        cells.close()
    return np.asarray(keep, dtype=np.int64)


def _nearest_existing(directory: Path, manifest: dict, embedding: dict, queries, k: int
                      ) -> np.ndarray:
    """int64 (len(queries), k): each query vector's ``k`` nearest existing items on the
    map (the removed left out), -1 past the end; exact where that is cheap, else the
    bundle's annoy index with its ``search_k``."""
    existing = open_vectors(directory, embedding)
    gone = _gone(directory, manifest)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    metric = embedding["metric"]
    if knn.exact_is_cheap(len(existing), existing.shape[1], metric):
        matrix = np.asarray(existing[:], dtype=np.float32)
        norms = knn.row_norms(matrix)
        exclude = np.flatnonzero(gone)
        for row in range(len(queries)):
            found, _ = knn.exact_neighbors(matrix, np.asarray(queries[row], np.float32), k,
                                           metric, exclude=exclude, norms=norms)
            out[row, :len(found)] = found
        return out
    index = AnnoyIndex(existing.shape[1], metric)
    index.load(str(directory / embedding["index"]))
    try:
        for row in range(len(queries)):
            found = index.get_nns_by_vector(np.asarray(queries[row]).tolist(), k,
                                            search_k=int(embedding.get("search_k", -1)))
            out[row, :len(found)] = found
    finally:
        index.unload()
    return out


def _gone(directory: Path, manifest: dict) -> np.ndarray:
    positions = np.load(directory / layout_entries(manifest)[0]["positions"], mmap_mode="r")
    return np.asarray(positions[:, 0] < 0)


# -- the new generation --------------------------------------------------------------


def _add(directory: Path, manifest: dict, paths: list[str], sizes: np.ndarray,
         decoded: np.ndarray,
         keep: np.ndarray, fresh: PackedCells, inputs: collect.Inputs,
         metadata: collect.Metadata | None, result: AddResult, reach: int) -> None:
    n_old = int(manifest["counts"]["items"])
    n_new = len(keep)
    n_all = n_old + n_new
    new_ids = np.arange(n_old, n_all)
    work = directory / ADD_WORK
    lead = manifest["embeddings"][0]
    lead_rows = open_vectors(work, {**lead, "vectors": f"{lead['kind']}.npy"})
    lead_new = np.asarray(lead_rows.read_rows(keep), dtype=np.float32)
    neighbours = _nearest_existing(directory, manifest, lead, lead_new, PLACE_K)
    gone = np.concatenate([_gone(directory, manifest), np.zeros(n_new, dtype=bool)])

    new = generation.start(directory, skip=("cache",))
    _append_cells(directory, new, manifest, fresh, keep)
    entries = layout_entries(manifest)
    xy = np.load(directory / "layout.npy")
    xy_new = np.array([np.median(xy[row[row >= 0]], axis=0) for row in neighbours])
    xy = np.concatenate([xy, xy_new])
    edit.save_npy(new / "layout.npy", xy)
    cells = open_cells(new, {"cells": {**manifest["cells"], "shape": [n_all,
                                                                       *manifest["cells"]["shape"][1:]]}})
    try:
        # The neighbour indexes (annoy builds on one core) are made while the tiles over the
        # new cells render: they touch different files, and each half waits mostly in C.
        with ThreadPoolExecutor(1) as pool:
            vectors_done = pool.submit(_add_all_vectors, directory, new, manifest, work, keep,
                                       gone)
            similarity, positions, moved = _place_similarity(
                directory, new, entries[0], neighbours, n_old, cells, manifest, result, reach)
            vectors_done.result()
        _insert_rows(directory, new, manifest, paths, sizes, decoded, keep, new_ids,
                     positions, xy, inputs, metadata, moved)
        layouts = [similarity]
        for entry in entries[1:]:
            layouts.append(_rearrange(new, manifest, entry, xy, gone, cells, result))
    finally:
        cells.close()
    updated = dict(manifest)
    if manifest.get("regions"):
        updated["regions"] = _join_regions(directory, new, manifest, neighbours, gone, xy,
                                           positions)
    updated["hotspots"] = [{**spot, "row": int(positions[spot["representative"], 0]),
                            "col": int(positions[spot["representative"], 1])}
                           for spot in manifest.get("hotspots", [])]
    updated["generation"] = result.generation + 1
    updated["counts"] = {**manifest["counts"], "items": n_all,
                         "inputs": int(manifest["counts"].get("inputs", n_old)) + len(paths),
                         "added": int(manifest["counts"].get("added", 0)) + n_new}
    updated["cells"] = {**manifest["cells"], "shape": [n_all, *manifest["cells"]["shape"][1:]]}
    updated["grid"] = {**manifest["grid"], "n_rows": similarity["grid"]["n_rows"]}
    updated["tiles"] = similarity["tiles"]
    updated["overview"] = similarity["overview"]
    updated["layouts"] = layouts
    updated["skipped"] = manifest.get("skipped", []) + result.skipped
    write_json_atomic(new / "manifest.json", stored_manifest(updated))
    generation.exchange(directory, new)
    result.generation += 1
    result.added = new_ids.tolist()


def _add_all_vectors(directory: Path, new: Path, manifest: dict, work: Path,
                     keep: np.ndarray, gone: np.ndarray) -> None:
    for embedding in manifest["embeddings"]:
        _add_vectors(directory, new, embedding, work, keep, gone,
                     int(manifest["parameters"].get("random_state", 0)))


def _append_cells(directory: Path, new: Path, manifest: dict, fresh: PackedCells,
                  keep: np.ndarray) -> None:
    """``cells.pack`` and ``cells.idx`` with the new cells after the old ones (the old
    bytes copied in the kernel)."""
    entry = manifest["cells"]
    offsets = np.fromfile(directory / entry["index"], dtype="<u8")
    lengths = [len(fresh.read_encoded(int(row))) for row in keep]
    more = offsets[-1] + np.cumsum(np.asarray(lengths, dtype=np.uint64))

    def write(tmp: Path) -> None:
        shutil.copyfile(directory / entry["path"], tmp)
        with open(tmp, "ab") as handle:
            for row in keep:
                handle.write(fresh.read_encoded(int(row)))
            handle.flush()
            os.fsync(handle.fileno())

    generation.replace(new / entry["path"], write)
    generation.replace(new / entry["index"],
                       lambda tmp: np.concatenate([offsets, more]).astype("<u8").tofile(tmp))


def _place_similarity(directory: Path, new: Path, entry: dict, neighbours: np.ndarray,
                      n_old: int, cells: PackedCells, manifest: dict, result: AddResult,
                      reach: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Each new item near the median cell of its nearest items (``place.place_items``),
    the grid grown by rows at the bottom where it is short of free cells; the tiles over
    every changed cell re-rendered. Returns the layout's new entry, the positions and the
    ids of the existing items that moved."""
    info = entry["grid"]
    n_rows, n_cols = int(info["n_rows"]), int(info["n_cols"])
    grid = np.fromfile(new / entry["grid_file"], dtype="<i4").reshape(n_rows, n_cols)
    positions = np.load(new / entry["positions"])
    n_new = len(neighbours)
    short = n_new - int((grid < 0).sum())
    grown = max(0, math.ceil(short / n_cols))
    if grown:
        grid = np.concatenate([grid, np.full((grown, n_cols), -1, dtype=grid.dtype)])
    targets = np.array([np.median(positions[near[near >= 0]], axis=0) if (near >= 0).any()
                        else (0.0, 0.0) for near in neighbours])
    before = positions
    positions = np.concatenate([positions, np.full((n_new, 2), -1, dtype=positions.dtype)])
    changed, moved = place_items(grid, positions, targets, np.arange(n_old, n_old + n_new),
                                 neighbours, _fit_lists(directory, manifest, n_old), reach)
    moved = np.unique(moved)
    if len(moved):
        far = np.abs(positions[moved] - before[moved]).max(axis=1)
        result.moved_cells = {"median": int(np.median(far)), "max": int(far.max())}
    edit.save_npy(new / entry["positions"], positions)
    generation.replace(new / entry["grid_file"], lambda tmp: grid.astype("<i4").tofile(tmp))
    cell = int(info["cell_size"])
    tiles_dir = new / Path(entry["tiles"]["dzi"]).parent
    tiles, on_top = entry["tiles"], 0
    rects = [(int(c) * cell, int(r) * cell, (int(c) + 1) * cell, (int(r) + 1) * cell)
             for r, c in np.unique(changed, axis=0)]
    background = tuple(manifest["parameters"].get("background", (255, 255, 255)))
    if _mostly_dirty(tiles, rects, len(grid) * cell):  # one streamed cut is cheaper
        tiles, overview = render.render_grid(
            cells, positions, len(grid), n_cols, tiles_dir, background,
            int(tiles["tile_size"]), int(tiles["overlap"]), tiles["format"],
            int(tiles["quality"]))
        tiles["dzi"] = entry["tiles"]["dzi"]
        result.tiles[entry["name"]] = _tile_count(tiles)
    else:
        if grown:
            tiles, on_top = retile.grow(tiles_dir, tiles, len(grid) * cell)
            rects.append((0, n_rows * cell, n_cols * cell, len(grid) * cell))
        result.tiles[entry["name"]] = retile.rewrite_tiles(
            tiles_dir / "map_files", tiles, rects, grid, cell, cells, background,
            every_tile_below=on_top)
        overview = render.render_overview(tiles_dir, tiles)
    result.grown_rows = grown
    result.moved[entry["name"]] = len(moved)
    generation.replace(new / entry["overview"]["path"],
                       lambda tmp: tmp.write_bytes(overview.jpegsave_buffer(Q=85)))
    updated = {**entry, "grid": {**info, "n_rows": len(grid)}, "tiles": tiles,
               "overview": {**entry["overview"], "width": overview.width,
                            "height": overview.height}}
    return updated, positions, moved


def _fit_lists(directory: Path, manifest: dict, n_old: int) -> np.ndarray | None:
    """int32 (n_old, FIT_K): each existing item's nearest items from the first
    embedding's stored lists of the served generation (read in blocks), for its fit on
    the grid; None for a bundle without stored lists."""
    stored = open_top_neighbors(directory, manifest["embeddings"][0])
    if stored is None:
        logger.info("no stored neighbour lists: new items take free cells only")
        return None
    try:
        k = min(FIT_K, stored[0].shape[1])
        lists = np.empty((n_old, k), dtype=np.int32)
        for start in range(0, n_old, _BLOCK):
            rows = np.arange(start, min(start + _BLOCK, n_old))
            lists[rows] = stored[0].read_rows(rows)[:, :k]
        return lists
    finally:
        stored[0].close()
        stored[1].close()


def _mostly_dirty(tiles: dict, rects, height: int) -> bool:
    """Whether the changed cells touch more than ``FULL_RENDER_SHARE`` of the deepest
    level's tiles (of a map ``height`` pixels high)."""
    size, overlap = int(tiles["tile_size"]), int(tiles["overlap"])
    width = int(tiles["width"])
    total = -(-width // size) * -(-height // size)
    dirty = retile.tiles_over(rects, (width, height), size, overlap)
    return len(dirty) > FULL_RENDER_SHARE * total


def _tile_count(tiles: dict) -> int:
    """How many tiles a pyramid holds, at every level."""
    size = int(tiles["tile_size"])
    return sum(-(-w // size) * -(-h // size) for w, h in retile.level_sizes(
        int(tiles["width"]), int(tiles["height"]), int(tiles["levels"])))


def _add_vectors(directory: Path, new: Path, embedding: dict, work: Path, keep: np.ndarray,
                 gone: np.ndarray, random_state: int) -> None:
    """One embedding: the new rows after the old, its annoy index rebuilt, every old
    item's stored list merged with the new items nearer than its last, and the new
    items' own lists."""
    shape, dtype, offset = npy_layout(directory / embedding["vectors"])
    added = open_vectors(work, {**embedding, "vectors": f"{embedding['kind']}.npy"})
    raw = np.load(work / f"{embedding['kind']}.npy", mmap_mode="r")[keep]
    n_old, n_all = int(shape[0]), int(shape[0]) + len(keep)

    def write(tmp: Path) -> None:
        rows = create_npy_rows(tmp, (n_all, int(shape[1])), dtype)
        rows.close()
        with open(directory / embedding["vectors"], "rb") as source, open(tmp, "r+b") as target:
            target.seek(npy_layout(tmp)[2])
            source.seek(offset)
            shutil.copyfileobj(source, target, 1 << 20)
            target.write(np.ascontiguousarray(raw, dtype=dtype).tobytes())
            target.flush()
            os.fsync(target.fileno())

    generation.replace(new / embedding["vectors"], write)
    vectors = open_vectors(new, embedding)
    metric = embedding["metric"]
    index = build_annoy(vectors, metric, int(embedding.get("n_trees", 20)), random_state,
                        skip=gone)
    generation.replace(new / embedding["index"], lambda tmp: index.save(str(tmp)))
    stored = open_top_neighbors(directory, embedding)
    if stored is None:
        index.unload()
        return
    queries = np.asarray(added.read_rows(keep), dtype=np.float32)
    new_ids = np.arange(n_old, n_all)
    files = {}
    k = stored[0].shape[1]
    for part, kind in (("ids", np.int32), ("distances", np.float32)):
        path = new / embedding["top"][part]
        tmp = path.with_name(f".new.{path.name}")
        files[part] = (tmp, path, create_npy_rows(tmp, (n_all, k), kind))
    block_rows = max(1_024, min(_BLOCK, _PAIRS // max(1, len(keep))))
    for start in range(0, n_old, block_rows):
        rows = np.arange(start, min(start + block_rows, n_old))
        ids, distances = stored[0].read_rows(rows), stored[1].read_rows(rows)
        block = np.asarray(vectors.read_rows(rows), dtype=np.float32)
        extra = knn.pairwise_distances(block, queries, metric)
        ids, distances = knn.merge_neighbors(ids, distances, new_ids, extra)
        ids[gone[rows]] = -1
        distances[gone[rows]] = np.inf
        files["ids"][2].write_rows(start, ids)
        files["distances"][2].write_rows(start, distances)
    own = knn.neighbors_of(vectors, index, new_ids, metric, int(embedding.get("search_k", -1)),
                           k, gone)
    files["ids"][2].write_rows(n_old, own[0])
    files["distances"][2].write_rows(n_old, own[1])
    for tmp, path, rows in files.values():
        rows.flush()
        rows.close()
        os.replace(tmp, path)
    stored[0].close()
    stored[1].close()
    index.unload()


def _insert_rows(directory: Path, new: Path, manifest: dict, paths: list[str],
                 sizes: np.ndarray, decoded: np.ndarray, keep: np.ndarray, new_ids: np.ndarray,
                 positions: np.ndarray, xy: np.ndarray, inputs: collect.Inputs,
                 metadata: collect.Metadata | None, moved: np.ndarray) -> None:
    """The new items' rows in ``metadata.sqlite`` (``metadata.insert_items``, as the
    pipeline writes them) and their facet counts added in; the ``moved`` items' cells."""
    kinds = {c["name"]: c["kind"] for c in manifest.get("columns", [])}
    match = collect.match_metadata(inputs, metadata) if metadata else None
    display = manifest.get("display") or {}

    def records():
        for item, row in zip(new_ids.tolist(), keep.tolist()):
            input_index = int(decoded[row])
            source = paths[input_index]
            row_index = match.row_of_input[input_index] if match else None
            values = dict(metadata.rows[row_index]) if row_index is not None else {}
            name = collect.display_path(Path(source).name)
            fields = {"filename": name, "stem": Path(name).stem, "id": str(item), **values}
            width, height = sizes[input_index]
            yield ItemRecord(
                id=item, source=collect.display_path(os.path.abspath(source)),
                row=int(positions[item, 0]), col=int(positions[item, 1]),
                x=float(xy[item, 0]), y=float(xy[item, 1]),
                title=collect.format_template(display.get("title"), fields) or name,
                url=collect.format_template(display.get("url"), fields),
                width=int(width), height=int(height), metadata=values or None)

    def write(tmp: Path) -> None:
        shutil.copyfile(directory / manifest["files"]["metadata"], tmp)
        conn = sqlite3.connect(tmp)
        try:
            counts = insert_items(conn, records(), kinds)
            conn.executemany("UPDATE items SET row = ?, col = ? WHERE id = ?",
                             [(int(positions[i, 0]), int(positions[i, 1]), int(i))
                              for i in moved.tolist()])
            for column, counter in counts.items():
                for value, count in sorted(counter.items()):
                    changed = conn.execute("UPDATE facet_values SET count = count + ? WHERE "
                                           "name = ? AND value = ?", (count, column, value))
                    if changed.rowcount == 0:
                        conn.execute("INSERT INTO facet_values VALUES (?, ?, ?)",
                                     (column, value, count))
            conn.commit()
        finally:
            conn.close()

    generation.replace(new / manifest["files"]["metadata"], write)


def _rearrange(new: Path, manifest: dict, entry: dict, xy: np.ndarray, gone: np.ndarray,
               cells: PackedCells, result: AddResult) -> dict:
    """A metadata layout arranged again over every item on the map and rendered whole."""
    columns = entry["column"] if isinstance(entry["column"], list) else [entry["column"]]
    raw = edit.column_values(new, manifest, columns, len(xy))
    present = np.flatnonzero(~gone)
    spec_values = [[raw[c][i] for i in present] for c in columns]
    values = arrange.layout_values(entry["kind"], spec_values)
    arrange_kind = {"date": arrange.arrange_date, "category": arrange.arrange_category,
                    "geo": arrange.arrange_geo}[entry["kind"]]
    placed, (n_rows, n_cols), labels = arrange_kind(values, xy[present])
    old = np.load(new / entry["positions"])
    positions = np.full((len(xy), 2), -1, dtype=np.int32)
    positions[present] = placed
    result.moved[entry["name"]] = int((old[present[present < len(old)]]
                                       != positions[present[present < len(old)]]).any(1).sum())
    edit.save_npy(new / entry["positions"], positions)
    grid = np.full(n_rows * n_cols, -1, dtype="<i4")
    grid[placed[:, 0] * n_cols + placed[:, 1]] = present
    generation.replace(new / entry["grid_file"], lambda tmp: grid.tofile(tmp))
    parameters = manifest["parameters"]
    tiles_dir = new / Path(entry["tiles"]["dzi"]).parent
    tiles, overview = render.render_grid(
        cells, positions, n_rows, n_cols, tiles_dir,
        tuple(parameters.get("background", (255, 255, 255))), int(entry["tiles"]["tile_size"]),
        int(entry["tiles"]["overlap"]), entry["tiles"]["format"], int(entry["tiles"]["quality"]))
    tiles["dzi"] = entry["tiles"]["dzi"]
    generation.replace(new / entry["overview"]["path"],
                       lambda tmp: tmp.write_bytes(overview.jpegsave_buffer(Q=85)))
    result.tiles[entry["name"]] = _tile_count(tiles)
    missing = sum(label["count"] for label in labels if label["text"] in arrange.MISSING)
    return {**entry, "grid": {**entry["grid"], "n_rows": n_rows, "n_cols": n_cols},
            "tiles": tiles, "labels": labels, "missing": missing,
            "overview": {**entry["overview"], "width": overview.width,
                         "height": overview.height}}


def _join_regions(directory: Path, new: Path, manifest: dict, neighbours: np.ndarray,
                  gone: np.ndarray, xy: np.ndarray, positions: np.ndarray) -> dict:
    """Each new item into the regions of its nearest item at every level; the regions
    described and labelled again from every item on the map (``edit.relabel_regions``)."""
    described, ids = read_regions(directory, manifest)
    ids = np.asarray(ids)
    first = neighbours[:, 0]
    if (first < 0).any():
        raise MosaicError("a new item has no existing item near it to share regions with")
    return edit.relabel_regions(new, manifest, np.concatenate([ids, ids[first]]), described,
                                gone, xy, positions)
