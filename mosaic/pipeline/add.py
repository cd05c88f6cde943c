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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from mosaic import __version__, knn
from mosaic.bundle import Bundle, Embedding, Layout, PackedCells, npy_layout, stored_manifest
from mosaic.errors import MosaicError, UsageError
from mosaic.pipeline import arrange, collect, edit, generation, iiif_in, render, retile
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
ADD_IIIF = "cache/add-iiif"  # the new images of a list of IIIF URLs, downloaded
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
    # IIIF metadata labels of the new images that the collection has no column for
    dropped_columns: list[str] = field(default_factory=list)
    seconds: float = 0.0


def check_addable(bundle: Bundle) -> None:
    """UsageError where a bundle's vectors or layouts cannot be made for new images
    from their pixels alone (an embedding or layout read from the user's file)."""
    for embedding in bundle.embeddings:
        if embedding.kind not in PIXEL_KINDS:
            raise UsageError(
                f"collection {bundle.id!r} has the embedding {embedding.name!r}, "
                f"read from a file of vectors: new images cannot be embedded the same way; "
                f"rebuild it with run.py pipeline")
    for layout in bundle.layouts[1:]:
        if layout.kind == "xy":
            raise UsageError(
                f"collection {bundle.id!r} has the layout {layout.name!r}, read from "
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
        bundle = Bundle.open(directory)
        check_addable(bundle)
        result = AddResult(directory, generation=bundle.generation)
        if inputs.urls:
            inputs, metadata = _fetch_iiif(bundle, inputs, metadata, result)
        _check_columns(bundle, metadata)
        sources = _sources(bundle)
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
        options = query_options(bundle)
        work = directory / ADD_WORK
        key = cache_key(__version__, "add", [collect.display_path(p) for p in paths],
                        [_signature(p) for p in paths], repr(options),
                        bundle.cells.decoder)
        with Progress(len(paths), "decode", show_progress) as bar, \
                open_executor(jobs) as (executor, workers):
            summary = run_decode(paths, options, work, key, executor, workers, bar.update)
        decoded = np.flatnonzero(summary.status == DONE)
        result.skipped += [{"source": collect.display_path(paths[i]),
                           "reason": summary.failures[i]} for i in sorted(summary.failures)]
        dims = {e.kind: e.dim for e in bundle.embeddings}
        compact(work, len(paths), len(decoded), work / "cells.pack", work / "cells.idx",
                {kind: work / f"{kind}.npy" for kind in dims}, dims)
        fresh_cells = PackedCells(work / "cells.pack", work / "cells.idx",
                                  (len(decoded), *bundle.cells.shape[1:]))
        try:
            keep = _drop_same_pixels(bundle, decoded, paths, fresh_cells, allow_duplicates,
                                     result)
            if len(keep):
                _add(bundle, paths, summary.sizes, decoded, keep, fresh_cells, inputs, metadata,
                     result, reach)
        finally:
            fresh_cells.close()
        generation.finish(directory)
        shutil.rmtree(work, ignore_errors=True)
    return _done(result, started)


def _fetch_iiif(bundle: Bundle, inputs: collect.Inputs, metadata: collect.Metadata | None,
                result: AddResult) -> tuple[collect.Inputs, collect.Metadata]:
    """A list of IIIF URLs, downloaded as the pipeline downloads one (``iiif_in``) into
    ``ADD_IIIF`` (a killed run fetches only what it lacks), with the metadata the
    manifests carry, kept to the collection's columns (the others named in
    ``result.dropped_columns``); failures go to ``result.skipped``."""
    if metadata is not None:
        raise UsageError("--metadata: a list of IIIF URLs brings its own metadata (each "
                         "manifest's label and metadata pairs); leave --metadata out")
    fetched, metadata, failed = iiif_in.fetch_inputs(
        inputs.urls, bundle.file(ADD_IIIF),
        iiif_in.model_size(bundle.grid.cell_size, [e.kind for e in bundle.embeddings]))
    result.skipped.extend(failed)
    known = {c["name"] for c in bundle.columns} | {metadata.filename_column}
    result.dropped_columns = [c for c in metadata.columns if c not in known]
    kept = [c for c in metadata.columns if c in known]
    return fetched, replace(metadata, columns=kept,
                            rows=[{c: row[c] for c in kept} for row in metadata.rows])


def _done(result: AddResult, started: float) -> AddResult:
    result.seconds = time.perf_counter() - started
    return result


def _signature(path: str) -> list:
    try:
        stat = os.stat(path)
        return [stat.st_size, stat.st_mtime_ns]
    except OSError as error:
        return [type(error).__name__]


def _check_columns(bundle: Bundle, metadata: collect.Metadata | None) -> None:
    """A CSV for new images must not bring columns the collection lacks (they would have
    no kind, no facet and no place in search): UsageError naming them."""
    if metadata is None:
        return
    known = {c["name"] for c in bundle.columns}
    extra = [c for c in metadata.columns if c not in known and c != metadata.filename_column]
    if extra:
        raise UsageError(f"--metadata has columns collection {bundle.id!r} lacks: "
                         f"{', '.join(extra)} (its columns: {', '.join(sorted(known)) or 'none'})")


def _sources(bundle: Bundle) -> dict[str, int]:
    """Each item's source path (as stored) -> its id."""
    conn = bundle.connect()
    try:
        return {source: item for item, source in conn.execute("SELECT id, source FROM items")}
    finally:
        conn.close()


def _drop_same_pixels(bundle: Bundle, decoded: np.ndarray, paths: list[str],
                      fresh: PackedCells, allow: bool, result: AddResult) -> np.ndarray:
    """The rows of ``fresh`` to add: those whose cell bytes equal no existing item's
    (looked up among its nearest items in the first embedding) nor an earlier new one's."""
    if allow:
        return np.arange(len(decoded))
    embedding = bundle.embeddings[0]
    vectors = _decoded_vectors(bundle, embedding)
    nearest = _nearest_existing(bundle, embedding, vectors, 3)
    cells = bundle.open_cells()
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


def _decoded_vectors(bundle: Bundle, embedding: Embedding):
    """The new images' vectors of ``embedding`` as decoded (``ADD_WORK``), scaled as the
    bundle's own."""
    return replace(embedding, vectors=f"{embedding.kind}.npy").open_vectors(
        bundle.file(ADD_WORK))


def _nearest_existing(bundle: Bundle, embedding: Embedding, queries, k: int) -> np.ndarray:
    """int64 (len(queries), k): each query vector's ``k`` nearest existing items on the
    map (the removed left out), -1 past the end; exact where that is cheap, else the
    bundle's annoy index with its ``search_k``."""
    existing = bundle.open_vectors(embedding)
    gone = _gone(bundle)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    metric = embedding.metric
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
    index.load(str(bundle.file(embedding.index)))
    try:
        for row in range(len(queries)):
            found = index.get_nns_by_vector(np.asarray(queries[row]).tolist(), k,
                                            search_k=embedding.search_k)
            out[row, :len(found)] = found
    finally:
        index.unload()
    return out


def _gone(bundle: Bundle) -> np.ndarray:
    return np.asarray(bundle.read_layout_positions(mmap=True)[:, 0] < 0)


# -- the new generation --------------------------------------------------------------


def _add(bundle: Bundle, paths: list[str], sizes: np.ndarray, decoded: np.ndarray,
         keep: np.ndarray, fresh: PackedCells, inputs: collect.Inputs,
         metadata: collect.Metadata | None, result: AddResult, reach: int) -> None:
    directory = bundle.path
    n_old = bundle.counts.items
    n_new = len(keep)
    n_all = n_old + n_new
    new_ids = np.arange(n_old, n_all)
    lead = bundle.embeddings[0]
    lead_new = np.asarray(_decoded_vectors(bundle, lead).read_rows(keep), dtype=np.float32)
    neighbours = _nearest_existing(bundle, lead, lead_new, PLACE_K)
    gone = np.concatenate([_gone(bundle), np.zeros(n_new, dtype=bool)])

    new = generation.start(directory, skip=("cache",))
    _append_cells(bundle, new, fresh, keep)
    # the layouts' manifest entries, which the next generation's manifest updates
    entries = bundle.manifest.get("layouts") or [layout.as_entry() for layout in bundle.layouts]
    xy = np.asarray(bundle.read_layout_xy())
    xy_new = np.array([np.median(xy[row[row >= 0]], axis=0) for row in neighbours])
    xy = np.concatenate([xy, xy_new])
    edit.save_npy(new / bundle.layout_xy, xy)
    cells = replace(bundle.cells, shape=(n_all, *bundle.cells.shape[1:])).open(new)
    try:
        # The neighbour indexes (annoy builds on one core) are made while the tiles over the
        # new cells render: they touch different files, and each half waits mostly in C.
        with ThreadPoolExecutor(1) as pool:
            vectors_done = pool.submit(_add_all_vectors, bundle, new, keep, gone)
            similarity, positions, moved = _place_similarity(
                bundle, new, entries[0], neighbours, n_old, cells, result, reach)
            vectors_done.result()
        _insert_rows(bundle, new, paths, sizes, decoded, keep, new_ids, positions, xy,
                     inputs, metadata, moved)
        layouts = [similarity]
        for layout, entry in zip(bundle.layouts[1:], entries[1:], strict=True):
            layouts.append(_rearrange(bundle, new, layout, entry, xy, gone, cells, result))
    finally:
        cells.close()
    # the next generation's manifest: what changed, over the stored facts as read
    updated = dict(bundle.manifest)
    if bundle.regions:
        updated["regions"] = _join_regions(bundle, new, neighbours, gone, xy, positions)
    updated["hotspots"] = [{**spot, "row": int(positions[spot["representative"], 0]),
                            "col": int(positions[spot["representative"], 1])}
                           for spot in bundle.hotspots]
    updated["generation"] = result.generation + 1
    updated["counts"] = {**bundle.counts.entry, "items": n_all,
                         "inputs": bundle.counts.inputs + len(paths),
                         "added": bundle.counts.added + n_new}
    updated["grid"] = {**bundle.manifest["grid"], "n_rows": similarity["grid"]["n_rows"]}
    updated["tiles"] = similarity["tiles"]
    updated["overview"] = similarity["overview"]
    updated["layouts"] = layouts
    updated["skipped"] = bundle.manifest.get("skipped", []) + result.skipped
    write_json_atomic(new / "manifest.json", stored_manifest(updated))
    generation.exchange(directory, new)
    result.generation += 1
    result.added = new_ids.tolist()


def _add_all_vectors(bundle: Bundle, new: Path, keep: np.ndarray, gone: np.ndarray) -> None:
    for embedding in bundle.embeddings:
        _add_vectors(bundle, new, embedding, keep, gone,
                     int(bundle.parameters.get("random_state", 0)))


def _append_cells(bundle: Bundle, new: Path, fresh: PackedCells, keep: np.ndarray) -> None:
    """``cells.pack`` and ``cells.idx`` with the new cells after the old ones (the old
    bytes copied in the kernel)."""
    cells = bundle.cells
    offsets = np.fromfile(bundle.file(cells.index), dtype="<u8")
    lengths = [len(fresh.read_encoded(int(row))) for row in keep]
    more = offsets[-1] + np.cumsum(np.asarray(lengths, dtype=np.uint64))

    def write(tmp: Path) -> None:
        shutil.copyfile(bundle.file(cells.path), tmp)
        with open(tmp, "ab") as handle:
            for row in keep:
                handle.write(fresh.read_encoded(int(row)))
            handle.flush()
            os.fsync(handle.fileno())

    generation.replace(new / cells.path, write)
    generation.replace(new / cells.index,
                       lambda tmp: np.concatenate([offsets, more]).astype("<u8").tofile(tmp))


def _place_similarity(bundle: Bundle, new: Path, entry: dict, neighbours: np.ndarray,
                      n_old: int, cells: PackedCells, result: AddResult,
                      reach: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Each new item near the median cell of its nearest items (``place.place_items``),
    the grid grown by rows at the bottom where it is short of free cells; the tiles over
    every changed cell re-rendered. Returns the layout's new manifest ``entry``, the
    positions and the ids of the existing items that moved."""
    layout = bundle.similarity
    n_rows, n_cols = layout.grid.shape
    grid = np.fromfile(new / layout.grid_file, dtype="<i4").reshape(n_rows, n_cols)
    positions = layout.read_positions(new)
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
                                 neighbours, _fit_lists(bundle, n_old), reach)
    moved = np.unique(moved)
    if len(moved):
        far = np.abs(positions[moved] - before[moved]).max(axis=1)
        result.moved_cells = {"median": int(np.median(far)), "max": int(far.max())}
    edit.save_npy(new / layout.positions, positions)
    generation.replace(new / layout.grid_file, lambda tmp: grid.astype("<i4").tofile(tmp))
    cell = layout.grid.cell_size
    tiles_dir = new / Path(layout.tiles.dzi).parent
    tiles, on_top = dict(layout.tiles.entry), 0
    rects = [(int(c) * cell, int(r) * cell, (int(c) + 1) * cell, (int(r) + 1) * cell)
             for r, c in np.unique(changed, axis=0)]
    background = bundle.background
    if _mostly_dirty(tiles, rects, len(grid) * cell):  # one streamed cut is cheaper
        tiles, overview = render.render_grid(
            cells, positions, len(grid), n_cols, tiles_dir, background,
            int(tiles["tile_size"]), int(tiles["overlap"]), tiles["format"],
            int(tiles["quality"]))
        tiles["dzi"] = layout.tiles.dzi
        result.tiles[layout.name] = _tile_count(tiles)
    else:
        if grown:
            tiles, on_top = retile.grow(tiles_dir, tiles, len(grid) * cell)
            rects.append((0, n_rows * cell, n_cols * cell, len(grid) * cell))
        result.tiles[layout.name] = retile.rewrite_tiles(
            tiles_dir / "map_files", tiles, rects, grid, cell, cells, background,
            every_tile_below=on_top)
        overview = render.render_overview(tiles_dir, tiles)
    result.grown_rows = grown
    result.moved[layout.name] = len(moved)
    generation.replace(new / layout.overview.path,
                       lambda tmp: tmp.write_bytes(overview.jpegsave_buffer(Q=85)))
    updated = {**entry, "grid": {**entry["grid"], "n_rows": len(grid)}, "tiles": tiles,
               "overview": {**entry["overview"], "width": overview.width,
                            "height": overview.height}}
    return updated, positions, moved


def _fit_lists(bundle: Bundle, n_old: int) -> np.ndarray | None:
    """int32 (n_old, FIT_K): each existing item's nearest items from the first
    embedding's stored lists of the served generation (read in blocks), for its fit on
    the grid; None for a bundle without stored lists."""
    stored = bundle.open_top_neighbors(bundle.embeddings[0])
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


def _add_vectors(bundle: Bundle, new: Path, embedding: Embedding, keep: np.ndarray,
                 gone: np.ndarray, random_state: int) -> None:
    """One embedding: the new rows after the old, its annoy index rebuilt, every old
    item's stored list merged with the new items nearer than its last, and the new
    items' own lists."""
    shape, dtype, offset = npy_layout(bundle.file(embedding.vectors))
    added = _decoded_vectors(bundle, embedding)
    raw = np.load(bundle.file(ADD_WORK) / f"{embedding.kind}.npy", mmap_mode="r")[keep]
    n_old, n_all = int(shape[0]), int(shape[0]) + len(keep)

    def write(tmp: Path) -> None:
        rows = create_npy_rows(tmp, (n_all, int(shape[1])), dtype)
        rows.close()
        with open(bundle.file(embedding.vectors), "rb") as source, open(tmp, "r+b") as target:
            target.seek(npy_layout(tmp)[2])
            source.seek(offset)
            shutil.copyfileobj(source, target, 1 << 20)
            target.write(np.ascontiguousarray(raw, dtype=dtype).tobytes())
            target.flush()
            os.fsync(target.fileno())

    generation.replace(new / embedding.vectors, write)
    vectors = embedding.open_vectors(new)
    metric = embedding.metric
    index = build_annoy(vectors, metric, int(embedding.entry.get("n_trees", 20)), random_state,
                        skip=gone)
    generation.replace(new / embedding.index, lambda tmp: index.save(str(tmp)))
    stored = bundle.open_top_neighbors(embedding)
    if stored is None or embedding.top is None:
        index.unload()
        return
    queries = np.asarray(added.read_rows(keep), dtype=np.float32)
    new_ids = np.arange(n_old, n_all)
    files = {}
    k = stored[0].shape[1]
    for part, kind in (("ids", np.int32), ("distances", np.float32)):
        path = new / getattr(embedding.top, part)
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
    own = knn.neighbors_of(vectors, index, new_ids, metric, embedding.search_k, k, gone)
    files["ids"][2].write_rows(n_old, own[0])
    files["distances"][2].write_rows(n_old, own[1])
    for tmp, path, rows in files.values():
        rows.flush()
        rows.close()
        os.replace(tmp, path)
    stored[0].close()
    stored[1].close()
    index.unload()


def _insert_rows(bundle: Bundle, new: Path, paths: list[str],
                 sizes: np.ndarray, decoded: np.ndarray, keep: np.ndarray, new_ids: np.ndarray,
                 positions: np.ndarray, xy: np.ndarray, inputs: collect.Inputs,
                 metadata: collect.Metadata | None, moved: np.ndarray) -> None:
    """The new items' rows in ``metadata.sqlite`` (``metadata.insert_items``, as the
    pipeline writes them) and their facet counts added in; the ``moved`` items' cells."""
    kinds = {c["name"]: c["kind"] for c in bundle.columns}
    match = collect.match_metadata(inputs, metadata) if metadata else None
    display = bundle.display

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
        shutil.copyfile(bundle.file(bundle.metadata), tmp)
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

    generation.replace(new / bundle.metadata, write)


def _rearrange(bundle: Bundle, new: Path, layout: Layout, entry: dict, xy: np.ndarray,
               gone: np.ndarray, cells: PackedCells, result: AddResult) -> dict:
    """A metadata layout arranged again over every item on the map and rendered whole;
    its new manifest ``entry``."""
    columns = layout.column if isinstance(layout.column, list) else [layout.column]
    raw = edit.column_values(new, bundle, columns, len(xy))
    present = np.flatnonzero(~gone)
    spec_values = [[raw[c][i] for i in present] for c in columns]
    values = arrange.layout_values(layout.kind, spec_values)
    arrange_kind = {"date": arrange.arrange_date, "category": arrange.arrange_category,
                    "geo": arrange.arrange_geo}[layout.kind]
    placed, (n_rows, n_cols), labels = arrange_kind(values, xy[present])
    old = layout.read_positions(new)
    positions = np.full((len(xy), 2), -1, dtype=np.int32)
    positions[present] = placed
    result.moved[layout.name] = int((old[present[present < len(old)]]
                                       != positions[present[present < len(old)]]).any(1).sum())
    edit.save_npy(new / layout.positions, positions)
    grid = np.full(n_rows * n_cols, -1, dtype="<i4")
    grid[placed[:, 0] * n_cols + placed[:, 1]] = present
    generation.replace(new / layout.grid_file, lambda tmp: grid.tofile(tmp))
    stored = layout.tiles
    tiles_dir = new / Path(stored.dzi).parent
    tiles, overview = render.render_grid(
        cells, positions, n_rows, n_cols, tiles_dir, bundle.background, stored.tile_size,
        stored.overlap, stored.format, int(stored.entry["quality"]))
    tiles["dzi"] = stored.dzi
    generation.replace(new / layout.overview.path,
                       lambda tmp: tmp.write_bytes(overview.jpegsave_buffer(Q=85)))
    result.tiles[layout.name] = _tile_count(tiles)
    missing = sum(label["count"] for label in labels if label["text"] in arrange.MISSING)
    return {**entry, "grid": {**entry["grid"], "n_rows": n_rows, "n_cols": n_cols},
            "tiles": tiles, "labels": labels, "missing": missing,
            "overview": {**entry["overview"], "width": overview.width,
                         "height": overview.height}}


def _join_regions(bundle: Bundle, new: Path, neighbours: np.ndarray, gone: np.ndarray,
                  xy: np.ndarray, positions: np.ndarray) -> dict:
    """Each new item into the regions of its nearest item at every level; the regions
    described and labelled again from every item on the map (``edit.relabel_regions``)."""
    described, ids = bundle.read_regions()
    ids = np.asarray(ids)
    first = neighbours[:, 0]
    if (first < 0).any():
        raise MosaicError("a new item has no existing item near it to share regions with")
    return edit.relabel_regions(new, bundle, np.concatenate([ids, ids[first]]),
                                described, gone, xy, positions)
