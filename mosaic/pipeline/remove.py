"""``run.py remove``: take items out of a finished bundle (a takedown), as a new generation.

The removed items keep their ids (no other id changes) and leave no trace a
reader can show: their cells are emptied on every layout's grid (``positions``
``(-1, -1)``, ``-1`` in ``grid.i32``) and in every tile at every level and the
overviews; their cell in ``cells.pack`` becomes a blank one; their vectors are
zeroed, in the vector files and the annoy indexes; they leave every other
item's stored neighbour lists; their rows leave ``metadata.sqlite`` (search,
facet counts, exports, IIIF), written with ``secure_delete`` and vacuumed so no
page keeps their text. Only the tiles over their cells are rendered again
(``mosaic.pipeline.retile``). The whole change is one new generation
(``mosaic.pipeline.generation``): served at once, or not at all.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mosaic import duplicates, knn
from mosaic.bundle import Bundle, Embedding, Layout, encode_cell, npy_layout, stored_manifest
from mosaic.errors import UsageError
from mosaic.pipeline import edit, generation, render, retile
from mosaic.pipeline.index import build_annoy, drop_items
from mosaic.pipeline.metadata import COUNTED_KINDS, TAGS_TABLE, split_tags
from mosaic.pipeline.store import bundle_lock, create_npy_rows, write_json_atomic
from mosaic.store import sql_names

_BLOCK = 65_536  # rows of a neighbour list or vector file handled at a time


@dataclass
class RemoveResult:
    directory: Path
    removed: list[int]  # taken out by this run
    already: list[int]  # asked for, but out before it
    generation: int
    tiles: dict[str, int] = field(default_factory=dict)  # layout name -> tiles rewritten
    seconds: float = 0.0


def select_ids(bundle: Bundle, ids: list[int] | None = None,
               where: tuple[str, str] | None = None) -> np.ndarray:
    """The sorted item ids to remove: ``ids`` as given, or the items whose metadata
    column ``where[0]`` equals ``where[1]`` (a ``tags`` column: carries the tag).
    UsageError for an id outside the collection, an unknown column, or no match."""
    n_items = bundle.counts.items
    if ids is not None:
        chosen = np.unique(np.asarray(ids, dtype=np.int64))
        outside = chosen[(chosen < 0) | (chosen >= n_items)]
        if len(outside):
            raise UsageError(f"--ids: no item {', '.join(str(i) for i in outside[:5])} in "
                             f"collection {bundle.id!r} (ids are 0 to {n_items - 1})")
        return chosen
    column, value = where
    columns = bundle.columns
    kinds = {c["name"]: c["kind"] for c in columns}
    if column not in kinds:
        raise UsageError(f"--where: collection {bundle.id!r} has no metadata column "
                         f"{column!r}" + (f" (it has {', '.join(kinds)})" if kinds else ""))
    conn = bundle.connect()
    try:
        if kinds[column] == "tags":
            rows = conn.execute(f"SELECT id FROM {TAGS_TABLE} WHERE name = ? AND value = ?",
                                (column, value))
        else:
            stored = sql_names(columns)[column]
            rows = conn.execute(f"SELECT id FROM metadata WHERE CAST({stored} AS TEXT) = ?",
                                (value,))
        chosen = np.unique(np.fromiter((r for (r,) in rows), dtype=np.int64))
    finally:
        conn.close()
    if not len(chosen):
        raise UsageError(f"--where {column}={value}: no item of collection "
                         f"{bundle.id!r} has that value")
    return chosen


def remove_items(directory: Path, ids: np.ndarray) -> RemoveResult:
    """Take ``ids`` out of the bundle at ``directory`` (held under its lock) as its next
    generation. Ids already out are reported, not an error; if none is left to take
    out, only a previous run's old generation is cleared away."""
    started = time.perf_counter()
    with bundle_lock(directory):
        bundle = Bundle.open(directory)
        positions = bundle.read_layout_positions()
        ids = np.asarray(ids, dtype=np.int64)
        out_before = positions[ids, 0] < 0
        todo = ids[~out_before]
        result = RemoveResult(directory, todo.tolist(), ids[out_before].tolist(),
                              bundle.generation)
        if not len(todo):
            generation.finish(directory)
            return result
        # cache/: stage records that a later pipeline run must not trust, and IIIF downloads
        new = generation.start(directory, skip=("cache",))
        gone = positions[:, 0] < 0
        gone[todo] = True
        background = bundle.background
        _blank_cells(bundle, new, gone, background)
        with bundle.open_cells() as cells:
            for layout in bundle.layouts:
                result.tiles[layout.name] = _empty_cells(new, layout, todo, cells, background)
        for embedding in bundle.embeddings:
            _remove_vectors(bundle, new, embedding, gone,
                            int(bundle.parameters.get("random_state", 0)))
        _remove_rows(bundle, new, todo)
        # the next generation's manifest: what changed, over the stored facts as read
        updated = dict(bundle.manifest)
        updated["generation"] = result.generation + 1
        updated["counts"] = {**bundle.counts.entry, "removed": int(gone.sum())}
        entries = bundle.manifest.get("layouts") or [e.as_entry() for e in bundle.layouts]
        updated["layouts"] = [_recount_labels(new, layout, entry, todo)
                              for layout, entry in zip(bundle.layouts, entries, strict=True)]
        updated["hotspots"] = _move_representatives(
            bundle.hotspots, gone, bundle.similarity.read_positions(new))
        if bundle.regions:
            updated["regions"] = _relabel_regions(bundle, new, gone)
        if bundle.duplicates:
            updated["duplicates"] = _ungroup(new, updated)
        write_json_atomic(new / "manifest.json", stored_manifest(updated))
        generation.exchange(directory, new)
        generation.finish(directory)
        result.generation += 1
    result.seconds = time.perf_counter() - started
    return result


def _blank_cells(bundle: Bundle, new: Path, gone: np.ndarray,
                 background: tuple[int, int, int]) -> None:
    """A new ``cells.pack`` + ``cells.idx``: the other cells' bytes as they were (copied
    in the kernel), a blank cell of the background for each removed item."""
    cells, size = bundle.cells, bundle.grid.cell_size
    blank = encode_cell(np.full((size, size, 3), background, dtype=np.uint8), cells.quality)
    offsets = np.fromfile(bundle.file(cells.index), dtype="<u8").astype(np.int64)
    lengths = np.diff(offsets)
    lengths[gone] = len(blank)
    new_offsets = np.zeros(len(offsets), dtype="<u8")
    np.cumsum(lengths, out=new_offsets[1:])

    def write(tmp: Path) -> None:
        with open(bundle.file(cells.path), "rb") as source, open(tmp, "wb") as target:
            position = 0
            for keep, start, stop in _runs(gone):
                if keep:
                    _copy_range(source.fileno(), target.fileno(), int(offsets[start]),
                                int(offsets[stop] - offsets[start]), position)
                    position += int(offsets[stop] - offsets[start])
                else:
                    os.pwrite(target.fileno(), blank * (stop - start), position)
                    position += len(blank) * (stop - start)
            os.fsync(target.fileno())

    generation.replace(new / cells.path, write)
    generation.replace(new / cells.index, lambda tmp: new_offsets.tofile(tmp))


def _runs(mask: np.ndarray):
    """``(not mask[start], start, stop)`` for each run of equal values of ``mask``."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    bounds = [0, *edges.tolist(), len(mask)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop > start:
            yield not bool(mask[start]), start, stop


def _copy_range(source: int, target: int, offset: int, count: int, position: int) -> None:
    while count > 0:
        done = os.copy_file_range(source, target, count, offset, position)
        if done <= 0:
            raise OSError(f"copy_file_range stopped with {count} bytes left")
        offset, position, count = offset + done, position + done, count - done


def _empty_cells(new: Path, layout: Layout, todo: np.ndarray, cells, background) -> int:
    """Empty the removed items' cells of one layout: its positions, grid, the tiles over
    them at every level and its overview. Returns how many tiles were written."""
    positions = layout.read_positions(new)
    where = positions[todo]
    where = where[where[:, 0] >= 0]
    positions[todo] = -1
    edit.save_npy(new / layout.positions, positions)
    grid = np.fromfile(new / layout.grid_file, dtype="<i4").reshape(layout.grid.shape)
    grid[where[:, 0], where[:, 1]] = -1
    generation.replace(new / layout.grid_file, lambda tmp: grid.tofile(tmp))
    tiles = layout.tiles.entry
    cell = layout.grid.cell_size
    rects = [(int(c) * cell, int(r) * cell, (int(c) + 1) * cell, (int(r) + 1) * cell)
             for r, c in where]
    folder = new / Path(tiles["dzi"]).parent / "map_files"
    written = retile.rewrite_tiles(folder, tiles, rects, grid, cell, cells, background)
    overview = render.render_overview(new / Path(tiles["dzi"]).parent, tiles)
    generation.replace(new / layout.overview.path,
                       lambda tmp: tmp.write_bytes(overview.jpegsave_buffer(Q=85)))
    return written


def _remove_vectors(bundle: Bundle, new: Path, embedding: Embedding, gone: np.ndarray,
                    random_state: int) -> None:
    """Zero the removed items' vectors, take them out of the annoy index (their nodes
    zeroed: ``index.drop_items``; built again without them where that cannot be done)
    and out of every stored neighbour list."""
    def zero(tmp: Path) -> None:
        shutil.copyfile(bundle.file(embedding.vectors), tmp)
        shape, dtype, offset = npy_layout(tmp)
        row = int(shape[1]) * np.dtype(dtype).itemsize
        with open(tmp, "r+b") as handle:
            for _, start, stop in (r for r in _runs(gone) if not r[0]):
                os.pwrite(handle.fileno(), bytes(row * (stop - start)), offset + start * row)
            os.fsync(handle.fileno())

    taken = np.flatnonzero(gone)
    held = embedding.open_vectors(bundle.path).read_rows(taken)
    generation.replace(new / embedding.vectors, zero)
    if not drop_items(bundle.file(embedding.index), new / embedding.index, taken, held,
                      embedding.metric):
        index = build_annoy(embedding.open_vectors(new), embedding.metric,
                            int(embedding.entry.get("n_trees", 20)), random_state, skip=gone)
        generation.replace(new / embedding.index, lambda tmp: index.save(str(tmp)))
        index.unload()
    stored = bundle.open_top_neighbors(embedding)
    if stored is None or embedding.top is None:
        return
    old_ids, old_distances = stored
    k = old_ids.shape[1]
    files = {}
    for part, dtype in (("ids", np.int32), ("distances", np.float32)):
        path = new / getattr(embedding.top, part)
        tmp = path.with_name(f".new.{path.name}")
        files[part] = (tmp, path, create_npy_rows(tmp, (len(gone), k), dtype))
    for start in range(0, len(gone), _BLOCK):
        rows = np.arange(start, min(start + _BLOCK, len(gone)))
        ids, distances = old_ids.read_rows(rows), old_distances.read_rows(rows)
        ids, distances = knn.drop_neighbors(ids, distances, gone)
        ids[gone[rows]] = -1
        distances[gone[rows]] = np.inf
        files["ids"][2].write_rows(start, ids)
        files["distances"][2].write_rows(start, distances)
    for tmp, path, rows in files.values():
        rows.flush()
        rows.close()
        os.replace(tmp, path)
    old_ids.close()
    old_distances.close()


def _remove_rows(bundle: Bundle, new: Path, todo: np.ndarray) -> None:
    """The removed items' rows out of every table of ``metadata.sqlite``, their facet
    values and tags out of ``facet_values``; deleted pages zeroed and the file vacuumed."""
    columns = bundle.columns
    stored = sql_names(columns)
    counted = [c for c in columns if c["kind"] in COUNTED_KINDS]
    ids = [int(i) for i in todo]

    def write(tmp: Path) -> None:
        shutil.copyfile(bundle.file(bundle.metadata), tmp)
        conn = sqlite3.connect(tmp)
        try:
            conn.execute("PRAGMA secure_delete = ON")
            marks = ",".join("?" * len(ids))
            less = Counter()
            for column in counted:
                for (value,) in conn.execute(
                        f"SELECT {stored[column['name']]} FROM metadata WHERE id IN ({marks})",
                        ids):
                    if value in (None, ""):
                        continue
                    values = split_tags(value) if column["kind"] == "tags" else [str(value)]
                    less.update((column["name"], v) for v in values)
            for (name, value), count in less.items():
                conn.execute("UPDATE facet_values SET count = count - ? WHERE name = ? AND "
                             "value = ?", (count, name, value))
            conn.execute("DELETE FROM facet_values WHERE count <= 0")
            for table in ("items", "metadata"):
                conn.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids)
            conn.execute(f"DELETE FROM items_fts WHERE rowid IN ({marks})", ids)
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                            (TAGS_TABLE,)).fetchone():
                conn.execute(f"DELETE FROM {TAGS_TABLE} WHERE id IN ({marks})", ids)
            conn.execute("INSERT INTO items_fts (items_fts) VALUES ('optimize')")
            conn.commit()
            conn.execute("VACUUM")
        finally:
            conn.close()

    generation.replace(new / bundle.metadata, write)


def _relabel_regions(bundle: Bundle, new: Path, gone: np.ndarray) -> dict:
    """The labelled regions over the items left (``edit.relabel_regions``)."""
    described, ids = bundle.read_regions()
    return edit.relabel_regions(new, bundle, np.asarray(ids), described, gone,
                                bundle.read_layout_xy(), bundle.similarity.read_positions(new))


def _ungroup(new: Path, manifest: dict) -> dict:
    """The stored duplicate groups without the removed items (``duplicates.without_items``,
    which ``read_stored`` applies by the new ``manifest``'s positions), so that no id of
    theirs is left in the file."""
    entry = manifest["duplicates"]
    document = duplicates.read_stored(Bundle.from_manifest(manifest, new))
    generation.replace(new / entry["path"],
                       lambda tmp: tmp.write_bytes(duplicates.document_bytes(document)))
    return {**entry, "groups": len(document["groups"]),
            "items": sum(len(group["ids"]) for group in document["groups"])}


def _recount_labels(new: Path, layout: Layout, entry: dict, todo: np.ndarray) -> dict:
    """The layout's manifest ``entry`` with its block labels' counts less the removed items
    in them (their cells, read before the removal, from the unchanged labels' rectangles)."""
    if not layout.labels:
        return entry
    grid = np.fromfile(new / layout.grid_file, dtype="<i4").reshape(layout.grid.shape)
    labels = []
    for label in layout.labels:
        block = grid[label["row"]:label["row"] + label["n_rows"],
                     label["col"]:label["col"] + label["n_cols"]]
        labels.append({**label, "count": int((block >= 0).sum())})
    return {**entry, "labels": labels}


def _move_representatives(hotspots: list[dict], gone: np.ndarray,
                          positions: np.ndarray) -> list[dict]:
    """Hotspots whose representative was removed get the nearest item still on the map."""
    present = np.flatnonzero(~gone)
    moved = []
    for hotspot in hotspots:
        if 0 <= hotspot["representative"] < len(gone) and gone[hotspot["representative"]] \
                and len(present):
            here = np.array([hotspot["row"], hotspot["col"]])
            nearest = int(present[np.argmin(((positions[present] - here) ** 2).sum(axis=1))])
            hotspot = {**hotspot, "representative": nearest,
                       "row": int(positions[nearest, 0]), "col": int(positions[nearest, 1])}
        moved.append(hotspot)
    return moved
