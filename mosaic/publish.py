"""A bundle as a static site: the viewer and its data as plain files (docs/publish.md).

Read side only: the bundle is read through mosaic.bundle, mosaic.store and
metadata.sqlite, as the server reads it. Every URL in the site is relative to
its ``index.html``, so the folder works from any static host under any prefix.
The viewer's ``StaticSource`` (static/js/source.js) reads what is written here::

    index.html, static/          the viewer (js, css, OpenSeadragon's build)
    data/collection.json         what the server's collection endpoint returns
    data/facets.json             facet values, numeric bounds, the index's layout
    data/tiles/, data/grid.i32   the map (hard links to the bundle's files)
    data/layouts/<slug>/         every other layout's tiles and grid
    data/regions.json, data/regions.order.i32   the labelled regions (hard links)
    data/duplicates.json         the duplicate groups (a hard link; without removed items)
    data/titles/<k>.json         titles of items k*TITLE_SHARD ...
    data/items/<k>.json          full items (fields + metadata), ITEM_SHARD per file
    data/thumbs/<k>/<id>.jpg     each cell's JPEG, k = id // THUMB_FOLDER
    data/knn/<e>/<k>.bin         top-KNN_K neighbours of KNN_SHARD items (see write_neighbors)
    data/query/<e>.json, .f32, .i8   query by example for pixels/raw (see write_query_indexes)
    data/search/...              the sharded search index (see write_search_index)

Nothing fetched before the first paint grows with N except the grid (4 bytes
per cell), which the map needs anyway.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import struct
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from mosaic.bundle import Bundle, Embedding
from mosaic.duplicates import document_bytes, read_stored
from mosaic.errors import UsageError
from mosaic.knn import iter_top_neighbors
from mosaic.store import META_PREFIX, SERVER_EXPORT_FIELDS, TAGS_TABLE, iter_export_rows, sql_name

log = logging.getLogger(__name__)

DATA = "data"
TITLE_SHARD = 128        # titles per titles/<k>.json (hover, strips): ~3 KB
ITEM_SHARD = 64          # full items per items/<k>.json (the panel, CSV export)
THUMB_FOLDER = 1000      # thumbnails per folder
KNN_K = 50               # neighbours stored per item and embedding
KNN_SHARD = 64           # items per knn/<e>/<k>.bin: KNN_SHARD * KNN_K * 8 bytes (25.6 KB)
NUM_CHUNK = 16_384       # (value, id) pairs per numeric chunk: 192 KB
TEXT_SHARD_BYTES = 64 * 1024  # postings + dictionary bytes per text shard (one big term may exceed)
TOP_READ = 64 * KNN_SHARD  # stored neighbour rows read at a time
ITEM_FIELDS = ("id", "row", "col", "x", "y", "title", "url", "filename", "width", "height")
NUMERIC_KINDS = ("number", "year")
# Query by example in the browser (static/js/query_index.js): the embeddings whose vector
# the browser can compute, the most items an index is written for, its PCA dimensions and
# how many items the PCA is fitted on (evenly spaced ids).
QUERY_KINDS = ("pixels", "raw")
QUERY_MAX_ITEMS = 125_000  # 16 MB of codes at 128 dimensions
QUERY_COMPONENTS = 128
QUERY_FIT_ITEMS = 20_000
# The decode's constants the browser repeats (static/js/query_vector.js). The read side
# does not import mosaic.pipeline; tests/test_publish_query.py checks they are its values:
# thumbnail.DIRECT_DECODE_PIXELS, DEFAULT_MAX_PIXELS, embed.PIXELS_SIDE == RAW_SIDE,
# VGG_INPUT_SIZE (the model input that widens the decode's box) and MODEL_KINDS.
QUERY_DECODE = {"direct_decode_pixels": 512 * 512, "max_pixels": 40_000 * 40_000, "side": 16,
                "model_size": 224, "model_kinds": ("vgg16", "clip")}
_BATCH = int(np.lcm(TITLE_SHARD, ITEM_SHARD)) * 16  # items written per batch: whole shards


def write_site(directory: str | os.PathLike, site: str | os.PathLike,
               static: str | os.PathLike, *, thumbnails: bool = True,
               neighbors: bool = True, num_chunk: int = NUM_CHUNK,
               text_shard_bytes: int = TEXT_SHARD_BYTES,
               query_max_items: int = QUERY_MAX_ITEMS) -> dict[str, int]:
    """Write the static site of the bundle ``directory`` into ``site`` (created; files
    already there are replaced) with the viewer from ``static`` (the repository's
    static/ folder, OpenSeadragon installed by npm). Returns bytes written per part.

    ``num_chunk`` and ``text_shard_bytes`` size the search index's files (see
    write_search_index); the viewer reads the cuts from ``facets.json``, so any sizes
    give the same answers (tests publish a small bundle into many shards).
    ``query_max_items``: the most items a query-by-example index is written for."""
    site, static = Path(site), Path(static)
    bundle = Bundle.open(directory)
    osd = static / "node_modules" / "openseadragon" / "build" / "openseadragon"
    if not osd.is_dir():
        raise UsageError(f"OpenSeadragon is not installed in {static}: run `npm ci` there")
    data = site / DATA
    data.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    sizes["viewer"] = write_viewer(static, site)
    sizes["map"] = write_map(bundle, data)
    with closing(bundle.connect()) as conn:
        sizes["items"] = write_items(conn, bundle, data)
        sizes["search"] = write_search_index(conn, bundle, data, num_chunk=num_chunk,
                                             text_shard_bytes=text_shard_bytes)
    if thumbnails:
        sizes["thumbs"] = write_thumbnails(bundle, data)
    if neighbors:
        sizes["knn"] = write_neighbors(bundle, data)
    sizes["query"], query = write_query_indexes(bundle, data, max_items=query_max_items)
    sizes["collection"] = write_collection(bundle, data, neighbors=neighbors, query=query)
    return sizes


def write_viewer(static: Path, site: Path) -> int:
    """The viewer page as ``index.html`` (relative URLs, the static source) and its assets."""
    page = (static / "viewer.html").read_text(encoding="utf-8")
    page = page.replace('href="/static/', 'href="static/').replace('src="/static/', 'src="static/')
    page = page.replace('href="/" class="home"', 'href="./" class="home"')
    page = page.replace("<head>", '<head>\n  <meta name="mosaic-source" content="static">', 1)
    total = _put(site / "index.html", page.encode())
    for folder in ("js", "css"):
        total += _copy_tree(static / folder, site / "static" / folder)
    osd = static / "node_modules" / "openseadragon" / "build" / "openseadragon"
    total += _copy_tree(osd / "images", site / "static" / "openseadragon" / "images")
    return total + _put(site / "static" / "openseadragon" / "openseadragon.min.js",
                        (osd / "openseadragon.min.js").read_bytes())


def write_map(bundle: Bundle, data: Path) -> int:
    """Tiles and grid of every layout (hard links), at their bundle paths under ``data``."""
    total = 0
    for layout in bundle.layouts:
        tiles = layout.tiles.folder
        total += _link_tree(bundle.file(tiles), data / tiles)
        total += _link_file(bundle.file(layout.grid_file), data / layout.grid_file)
        if layout.overview:  # the collection lists it (the index page shows the first)
            total += _link_file(bundle.file(layout.overview.path), data / layout.overview.path)
    regions = bundle.regions
    for path in (regions.path, regions.order) if regions else ():  # as they are
        total += _link_file(bundle.file(path), data / path)
    found = bundle.duplicates
    if found:  # the duplicate groups: as they are, or without the items removed since
        total += _link_file(bundle.file(found.path), data / found.path) \
            if not len(bundle.removed_ids()) else \
            _put(data / found.path, document_bytes(read_stored(bundle)))
    return total


def write_collection(bundle: Bundle | dict, data: Path, *, neighbors: bool = True,
                     query: list[dict] | None = None) -> int:
    """``collection.json``: the server's collection body (``Bundle.collection_document``),
    its addresses the bundle paths the site holds the files at (``write_map``), and what
    the static viewer needs to read the site's shards (``query``: the query-by-example
    indexes, ``write_query_indexes``)."""
    bundle = _model(bundle)
    body = bundle.collection_document(lambda path: path)
    body.update(
        search_by_meaning=None,  # no text tower in a static site
        export_fields=[*SERVER_EXPORT_FIELDS,
                       *(META_PREFIX + c["name"] for c in bundle.columns)],
        static={"title_shard": TITLE_SHARD, "item_shard": ITEM_SHARD,
                "thumb_folder": THUMB_FOLDER, "knn_k": KNN_K, "knn_shard": KNN_SHARD,
                "query": query or [], "query_max_items": QUERY_MAX_ITEMS})
    if not neighbors:
        body["embeddings"] = []
    return _write_json(data / "collection.json", body)


def write_items(conn: sqlite3.Connection, bundle: Bundle | dict, data: Path) -> int:
    """``titles/<k>.json`` (a list of titles) and ``items/<k>.json`` (a list of items as
    the server's item endpoint has them, less the thumbnail URL), in id order."""
    columns = _model(bundle).columns
    total = 0
    items: list[dict] = []
    for fields, values in iter_export_rows(conn, columns, None, fields=ITEM_FIELDS):
        item = dict(zip(ITEM_FIELDS, fields, strict=True))
        item["metadata"] = {c["name"]: v for c, v in zip(columns, values, strict=True)}
        items.append(item)
        if len(items) == _BATCH:
            total += _flush_items(items, data)
            items = []
    if items:
        total += _flush_items(items, data)
    return total


def _flush_items(items: list[dict], data: Path) -> int:
    """Write whole shards of ``items`` (they start on a shard boundary)."""
    total = 0
    for size, folder, pick in ((TITLE_SHARD, "titles", lambda i: i["title"]),
                               (ITEM_SHARD, "items", lambda i: i)):
        (data / folder).mkdir(parents=True, exist_ok=True)
        for start in range(0, len(items), size):
            part = items[start:start + size]
            total += _write_json(data / folder / f"{part[0]['id'] // size}.json",
                                 [pick(i) for i in part])
    return total


def write_thumbnails(bundle: Bundle, data: Path) -> int:
    """Each item's cell as ``thumbs/<id // THUMB_FOLDER>/<id>.jpg`` (its bytes as stored)."""
    total = 0
    removed = set(bundle.removed_ids().tolist())
    with bundle.open_cells() as cells:
        for item in range(bundle.counts.items):
            if item in removed:  # a site published before the removal loses its picture
                (data / "thumbs" / str(item // THUMB_FOLDER) / f"{item}.jpg").unlink(
                    missing_ok=True)
                continue
            folder = data / "thumbs" / str(item // THUMB_FOLDER)
            if item % THUMB_FOLDER == 0:
                folder.mkdir(parents=True, exist_ok=True)
            encoded = cells.read_encoded(item)
            total += _put(folder / f"{item}.jpg", encoded)
    return total


def write_neighbors(bundle: Bundle, data: Path) -> int:
    """``knn/<embedding index>/<k>.bin``: for KNN_SHARD items in id order, each item's
    KNN_K nearest (itself excluded, nearest first) as little-endian int32 ids
    (``KNN_SHARD x KNN_K``, -1 past the end) then float32 distances (same shape),
    annoy's distances for the embedding's metric. They are the lists the pipeline
    stored in the bundle (``embeddings[].top``); a bundle made before them has them
    computed here, as the pipeline does (``knn.iter_top_neighbors``)."""
    n = bundle.counts.items
    total = 0
    for e, embedding in enumerate(bundle.embeddings):
        folder = data / "knn" / str(e)
        folder.mkdir(parents=True, exist_ok=True)
        for start, ids, distances in top_neighbor_blocks(bundle.path, embedding, n):
            for offset in range(0, len(ids), KNN_SHARD):  # blocks are whole shards
                body = ids[offset:offset + KNN_SHARD].astype("<i4").tobytes() + \
                    distances[offset:offset + KNN_SHARD].astype("<f4").tobytes()
                total += _put(folder / f"{(start + offset) // KNN_SHARD}.bin", body)
    return total


def write_query_indexes(bundle: Bundle, data: Path, *, max_items: int = QUERY_MAX_ITEMS
                        ) -> tuple[int, list[dict]]:
    """``query/<e>.json``, ``.f32`` and ``.i8`` for each ``pixels`` or ``raw`` embedding
    (``e``: its position), when the bundle has at most ``max_items`` items; the bytes and
    the ``[{embedding, url}]`` the collection lists. Beyond the limit none is written, and
    a warning says so (the viewer's control stays hidden).

    - ``<e>.json``: the embedding, its kind and scale, the decode the browser repeats
      (cell size, fit, background, the box the picture is shrunk into, side, limits) and
      the index's layout (``dim``, ``components`` d, ``n_items``, ``removed`` ids);
    - ``<e>.f32``: little-endian float32: the mean vector (dim), the d principal axes
      (d x dim, one per row) and the d quantisation steps;
    - ``<e>.i8``: every item's projection on the axes divided by the steps, int8 (n x d;
      a removed item's row is zeros, never a match).

    The PCA is fitted on up to QUERY_FIT_ITEMS evenly spaced items' stored uint8 vectors:
    their sums and products are exact in float64, so the same bundle gives the same axes
    and, published again, the same bytes (unchanged files are not rewritten)."""
    folder = data / "query"
    entries: list[dict] = []
    wanted: set[str] = set()
    total = 0
    usable = [(e, m) for e, m in enumerate(bundle.embeddings) if m.kind in QUERY_KINDS]
    n = bundle.counts.items
    if usable and n > max_items:
        log.warning("query by example is left out of the site: %s items, over the limit of "
                    "%s for an index the browser searches", f"{n:,}", f"{max_items:,}")
        usable = []
    for e, embedding in usable:
        meta, model, codes = build_query_index(bundle, embedding)
        folder.mkdir(parents=True, exist_ok=True)
        meta["index"].update(model=f"query/{e}.f32", codes=f"query/{e}.i8")
        total += _put(folder / f"{e}.f32", model) + _put(folder / f"{e}.i8", codes)
        total += _write_json(folder / f"{e}.json", meta)
        wanted |= {f"{e}.json", f"{e}.f32", f"{e}.i8"}
        entries.append({"embedding": embedding.name, "url": f"query/{e}.json"})
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name not in wanted:
                path.unlink()
        if not wanted:
            folder.rmdir()
    return total, entries


def build_query_index(bundle: Bundle, embedding: Embedding,
                      components: int = QUERY_COMPONENTS) -> tuple[dict, bytes, bytes]:
    """One embedding's query index (see write_query_indexes): its JSON body, the
    ``.f32`` bytes and the ``.i8`` bytes."""
    stored = np.load(bundle.file(embedding.vectors), mmap_mode="r")
    n, dim = stored.shape
    removed = bundle.removed_ids()
    kept = np.setdiff1d(np.arange(n), removed)
    fit = stored[kept[np.linspace(0, len(kept) - 1, min(len(kept), QUERY_FIT_ITEMS))
                      .round().astype(np.int64)]] if len(kept) else stored[:0]
    sample = np.asarray(fit, dtype=np.float64)
    count = max(len(sample), 1)
    mean = sample.sum(axis=0) / count
    covariance = sample.T @ sample / count - np.outer(mean, mean)
    values, axes = np.linalg.eigh(covariance)
    d = min(components, dim)
    axes = axes[:, ::-1][:, :d].T  # (d, dim), largest variance first
    axes *= np.where(axes[np.arange(d), np.abs(axes).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    mean32, axes32 = mean.astype(np.float32), axes.astype(np.float32)
    projected = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 8192):
        block = np.asarray(stored[start:start + 8192], dtype=np.float32)
        projected[start:start + len(block)] = (block - mean32) @ axes32.T
    projected[removed] = 0
    steps = np.abs(projected).max(axis=0) / 127 if n else np.ones(d, np.float32)
    steps = np.where(steps > 0, steps, 1).astype(np.float32)
    codes = np.clip(np.rint(projected / steps), -127, 127).astype(np.int8)
    kinds = {m.kind for m in bundle.embeddings}
    model_size = QUERY_DECODE["model_size"] if kinds & set(QUERY_DECODE["model_kinds"]) else 0
    meta = {
        "embedding": embedding.name, "kind": embedding.kind, "scale": embedding.scale,
        "metric": embedding.metric,
        "decode": {"cell_size": bundle.grid.cell_size, "fit": bundle.fit,
                   "background": list(bundle.background),
                   "box": max(bundle.grid.cell_size, model_size),
                   "side": QUERY_DECODE["side"],
                   "direct_decode_pixels": QUERY_DECODE["direct_decode_pixels"],
                   "max_pixels": int(bundle.parameters.get("max_pixels")
                                     or QUERY_DECODE["max_pixels"])},
        "index": {"dim": int(dim), "components": int(d), "n_items": int(n),
                  "removed": [int(i) for i in removed], "fitted_on": int(len(sample)),
                  "variance_kept": float(values[::-1][:d].sum() / max(values.sum(), 1e-12))},
    }
    model = mean32.astype("<f4").tobytes() + axes32.astype("<f4").tobytes() + \
        steps.astype("<f4").tobytes()
    return meta, model, codes.tobytes()


def top_neighbor_blocks(directory: Path, embedding: Embedding, n: int
                        ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(start, ids, distances)`` blocks of every item's KNN_K nearest, in id order,
    each ``TOP_READ`` items (whole shards) but the last."""
    stored = embedding.open_top_neighbors(directory)
    if stored is not None and stored[0].shape[1] >= KNN_K:
        ids_rows, distance_rows = stored
        for start in range(0, n, TOP_READ):
            rows = np.arange(start, min(start + TOP_READ, n))
            yield (start, ids_rows.read_rows(rows)[:, :KNN_K],
                   distance_rows.read_rows(rows)[:, :KNN_K])
        return
    from annoy import AnnoyIndex

    log.info("%s has no stored neighbour lists: computing them", embedding.name)
    vectors = embedding.open_vectors(directory)
    index = AnnoyIndex(embedding.dim, embedding.metric)
    index.load(str(Path(directory) / embedding.index))
    yield from iter_top_neighbors(vectors, index, embedding.metric, embedding.search_k, KNN_K,
                                  os.cpu_count() or 1, block=TOP_READ)


def write_search_index(conn: sqlite3.Connection, bundle: Bundle | dict, data: Path, *,
                       num_chunk: int = NUM_CHUNK,
                       text_shard_bytes: int = TEXT_SHARD_BYTES) -> int:
    """The sharded search index under ``search/`` and ``facets.json``, which describes it.

    - facets (``facet`` and ``tags`` columns): ``search/f<c>/<v>.u32``, the sorted ids
      of items whose column ``c`` equals (carries) value ``v`` (its position in
      ``facets.json``, the server's order: count descending, then value);
    - numeric columns: ``search/n<c>/<k>.bin``, the items with a value sorted by
      (value, id), ``num_chunk`` per file: float64 values then uint32 ids;
      ``facets.json`` has each chunk's first and last value;
    - words: ``search/t/<k>.bin``, FTS5's own tokens (its ``fts5vocab`` of items_fts,
      so the tokenizer is SQLite's) in sorted order, cut every ``text_shard_bytes``:
      uint32 term count, uint32 header length, a JSON header ``[[term, n_ids],...]``,
      padding to 4 bytes, then each term's sorted uint32 ids; ``facets.json`` has
      each shard's first term.
    """
    columns = _model(bundle).columns
    # Written whole into a fresh folder, then synced into place: only shards whose bytes
    # changed are rewritten, and shards that are no longer written go.
    final = data / "search"
    search = data / ".search.new"
    if search.exists():
        shutil.rmtree(search)
    search.mkdir(parents=True)
    total = 0
    facets, numeric = [], []
    counts: dict[str, list] = {}
    for name, value, count in conn.execute(
            "SELECT name, value, count FROM facet_values ORDER BY name, count DESC, value"):
        counts.setdefault(name, []).append({"value": value, "count": count})
    for position, column in enumerate(columns):
        kind, name = column["kind"], column["name"]
        if kind in ("facet", "tags"):
            values = counts.get(name, [])
            folder = search / f"f{position}"
            folder.mkdir()
            if kind == "facet":
                rows = conn.execute(f"SELECT {sql_name(position)}, id FROM metadata "
                                    f"WHERE {sql_name(position)} IS NOT NULL ORDER BY id")
            else:
                rows = conn.execute(f"SELECT value, id FROM {TAGS_TABLE} WHERE name = ? "
                                    "ORDER BY id", (name,))
            postings: dict[Any, list[int]] = {}
            for value, item in rows:
                postings.setdefault(value, []).append(item)
            for v, entry in enumerate(values):
                ids = sorted(set(postings.get(entry["value"], [])))
                total += _write_ids(folder / f"{v}.u32", ids)
            facets.append({"name": name, "kind": kind, "position": position,
                           "values": values})
        elif kind in NUMERIC_KINDS:
            stored = sql_name(position)
            rows = conn.execute(f"SELECT {stored}, id FROM metadata WHERE typeof({stored}) "
                                f"IN ('integer', 'real') ORDER BY {stored}, id").fetchall()
            folder = search / f"n{position}"
            folder.mkdir()
            chunks = []
            for k, start in enumerate(range(0, len(rows), num_chunk)):
                part = rows[start:start + num_chunk]
                values = np.array([r[0] for r in part], dtype="<f8")
                ids = np.array([r[1] for r in part], dtype="<u4")
                body = values.tobytes() + ids.tobytes()
                (folder / f"{k}.bin").write_bytes(body)
                total += len(body)
                chunks.append([float(values[0]), float(values[-1]), len(part)])
            numeric.append({"name": name, "kind": kind, "position": position,
                            "min": rows[0][0] if rows else None,
                            "max": rows[-1][0] if rows else None,
                            "count": len(rows), "chunks": chunks})
    text = write_text_index(conn, search / "t", shard_bytes=text_shard_bytes)
    total += text["bytes"]
    _sync_tree(search, final)
    shutil.rmtree(search)
    body = {"facets": [{"name": f["name"], "values": f["values"]} for f in facets],
            "numeric": [{k: n[k] for k in ("name", "kind", "min", "max", "count")}
                        for n in numeric],
            "index": {"facets": [{k: f[k] for k in ("name", "kind", "position")}
                                 for f in facets],
                      "numeric": [{k: n[k] for k in ("name", "position", "chunks")}
                                  for n in numeric],
                      "text": text["shards"]}}
    return total + _write_json(data / "facets.json", body)


def write_text_index(conn: sqlite3.Connection, folder: Path, *,
                     shard_bytes: int = TEXT_SHARD_BYTES) -> dict:
    """Token shards from FTS5's vocabulary (see write_search_index)."""
    folder.mkdir(parents=True)
    conn.execute("DROP TABLE IF EXISTS temp.publish_vocab")
    conn.execute("CREATE VIRTUAL TABLE temp.publish_vocab "
                 "USING fts5vocab(main, 'items_fts', 'instance')")
    shards: list[str] = []
    total = 0
    pending: list[tuple[str, list[int]]] = []
    size = 0

    def flush() -> None:
        nonlocal total, size, pending
        header = json.dumps([[t, len(ids)] for t, ids in pending],
                            ensure_ascii=False, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 4)
        body = struct.pack("<II", len(pending), len(header)) + header + b"".join(
            np.array(ids, dtype="<u4").tobytes() for _, ids in pending)
        (folder / f"{len(shards)}.bin").write_bytes(body)
        shards.append(pending[0][0])
        total += len(body)
        pending, size = [], 0

    term, ids = None, []
    for token, doc in _vocab_rows(conn):
        if token != term:
            if term is not None:
                pending.append((term, ids))
                size += 4 * len(ids) + len(term.encode()) + 8
                if size >= shard_bytes:
                    flush()
            term, ids = token, []
        if not ids or ids[-1] != doc:
            ids.append(doc)
    if term is not None:
        pending.append((term, ids))
    if pending:
        flush()
    conn.execute("DROP TABLE temp.publish_vocab")
    return {"shards": shards, "bytes": total}


def _vocab_rows(conn: sqlite3.Connection) -> Iterable[tuple[str, int]]:
    """``(term, doc)`` in term order, then doc order (fts5vocab's own order)."""
    previous = None
    docs: list[int] = []
    for token, doc in conn.execute("SELECT term, doc FROM temp.publish_vocab"):
        if token != previous:
            yield from ((previous, d) for d in sorted(set(docs)))
            previous, docs = token, []
        docs.append(doc)
    if previous is not None:
        yield from ((previous, d) for d in sorted(set(docs)))


def site_snapshot(site: str | os.PathLike) -> dict[str, tuple[int, int, int]]:
    """``{relative path: (inode, mtime ns, size)}`` of every file under ``site``."""
    site = Path(site)
    if not site.is_dir():
        return {}
    snapshot = {}
    for path in site.rglob("*"):
        if path.is_file():
            stat = path.stat()
            snapshot[str(path.relative_to(site))] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return snapshot


def site_changes(before: dict, after: dict) -> dict[str, int]:
    """What a sync of the site to a static host uploads and deletes between two
    snapshots: files new or rewritten (a new inode, mtime or size) and their bytes,
    and files removed."""
    changed = [path for path, facts in after.items() if before.get(path) != facts]
    return {"files": len(after), "bytes": sum(facts[2] for facts in after.values()),
            "rewritten_files": len(changed),
            "rewritten_bytes": sum(after[path][2] for path in changed),
            "removed_files": len(before.keys() - after.keys())}


# Publishing into a site folder that holds an earlier publish rewrites only the files
# whose bytes change (and removes those no longer written), so a sync to a static host
# uploads little after a small change (write_site reports what changed).

def _model(bundle: Bundle | dict) -> Bundle:
    """The model of ``bundle``; a manifest dict is typed (bench/publish_bench.py passes
    one for a bundle that has only a metadata.sqlite)."""
    return bundle if isinstance(bundle, Bundle) else Bundle.from_manifest(bundle)


def _put(path: Path, body: bytes) -> int:
    """Write ``body`` at ``path`` unless the file already holds exactly it; its size."""
    try:
        if path.stat().st_size == len(body) and path.read_bytes() == body:
            return len(body)
    except FileNotFoundError:
        pass
    path.write_bytes(body)
    return len(body)


def _write_ids(path: Path, ids: list[int]) -> int:
    return _put(path, np.array(ids, dtype="<u4").tobytes())


def _write_json(path: Path, body: Any) -> int:
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _put(path, text.encode())


def _link_file(source: Path, target: Path) -> int:
    """Hard-link ``source`` at ``target`` (a copy across file systems) unless it already
    is that file or a copy of it; its size."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and (os.path.samefile(source, target) or (
            target.stat().st_size == source.stat().st_size
            and target.read_bytes() == source.read_bytes())):
        return target.stat().st_size
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target.stat().st_size


def _link_tree(source: Path, target: Path) -> int:
    return _mirror_tree(source, target, _link_file)


def _copy_tree(source: Path, target: Path) -> int:
    return _mirror_tree(source, target, lambda s, t: _put(t, s.read_bytes()))


def _sync_tree(source: Path, target: Path) -> int:
    """Move the files of ``source`` whose bytes differ into ``target``, and remove the
    files of ``target`` that ``source`` lacks."""
    def move(path: Path, into: Path) -> int:
        size = path.stat().st_size
        if not (into.exists() and into.stat().st_size == size
                and into.read_bytes() == path.read_bytes()):
            os.replace(path, into)
        return size
    return _mirror_tree(source, target, move)


def _mirror_tree(source: Path, target: Path, place) -> int:
    """``place(file, its path under target)`` for every file of ``source`` (folders
    made), then the files and empty folders under ``target`` that ``source`` lacks
    removed; the bytes placed."""
    wanted = {p.relative_to(source) for p in source.rglob("*") if p.is_file()}
    total = 0
    for relative in sorted(wanted):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        total += place(source / relative, target / relative)
    for path in sorted(target.rglob("*"), reverse=True):
        if path.is_file() and path.relative_to(target) not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return total
