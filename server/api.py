"""The JSON API under ``/api``. Errors use the shape in server.errors."""

from __future__ import annotations

import csv
import io
import re
import secrets
import sqlite3
from collections.abc import Iterator, Mapping

import numpy as np
from flask import Blueprint, Response, abort, current_app, jsonify, request, stream_with_context
from werkzeug.exceptions import RequestEntityTooLarge

from mosaic.query import parse_search_args, search_items
from mosaic.store import (
    SERVER_EXPORT_FIELDS,
    export_header,
    iter_export_rows,
    read_metadata,
    sql_name,
)
from server.bundles import ServedBundle
from server.db import get_bundle, get_db, get_registry

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_K = 500
MAX_LIMIT = 1000
MAX_RANDOM = 1000
# A query image's upload (``similar``): the body's bytes; its pixels are limited by the
# bundle's own --max-pixels. Setting MOSAIC_UPLOAD_MAX overrides it.
MAX_UPLOAD = 20 * 2**20
ITEM_FIELDS = ("id", "row", "col", "title", "url", "filename", "width", "height")


# SQLite integers are 64-bit; far beyond any collection, and well inside that.
MAX_OFFSET = 2**53

@bp.get("/collections")
def collections():
    return jsonify(ok=True, collections=[_summary(b) for b in get_registry().list()])


@bp.get("/collections/<cid>")
def collection(cid: str):
    bundle = get_bundle(cid)
    version = f"?v={bundle.version}"
    body = bundle.model.collection_document(
        lambda path: _collection_url(bundle, path) + version)
    summary = _summary(bundle)
    body.update(version=bundle.version, overview=summary["overview"], url=summary["url"],
                thumbnail_url=_collection_url(bundle, "thumbs/{id}.jpg"))
    return jsonify(ok=True, **body)


@bp.get("/collections/<cid>/items/<int:item_id>")
def item(cid: str, item_id: int):
    bundle = get_bundle(cid)
    _check_item(bundle, item_id)
    conn = get_db(bundle)
    row = conn.execute(f"SELECT {', '.join(ITEM_FIELDS)} FROM items WHERE id = ?",
                       (item_id,)).fetchone()
    if row is None:
        abort(404, description=f"item {item_id} not in collection {cid!r}")
    # The item's own fields at the top, the CSV's columns (any names) under "metadata".
    fields = read_metadata(conn, bundle.columns, item_id)
    # The item's cell in every layout, so a viewer can fly to it in any of them.
    positions = {layout.name: [int(v) for v in bundle.layout_positions(layout)[item_id]]
                 for layout in bundle.layouts}
    return jsonify(ok=True, **dict(row), thumbnail=_thumb(bundle, item_id), metadata=fields,
                   positions=positions)


@bp.get("/collections/<cid>/items/<int:item_id>/neighbors")
def neighbors(cid: str, item_id: int):
    bundle = get_bundle(cid)
    _check_item(bundle, item_id)
    name = request.args.get("embedding") or (bundle.embedding_names or [None])[0]
    if name is None or bundle.embedding(name) is None:
        abort(400, description=f"unknown embedding {name!r}; this collection has "
                               f"{', '.join(bundle.embedding_names) or 'none'}")
    k = _int_arg("k", 20, 1, MAX_K)
    index = bundle.neighbor_index(name)
    ids, distances = index.query(item_id, k)
    return jsonify(ok=True, id=item_id, embedding=name, metric=index.metric,
                   method=index.method, k=k, neighbors=_neighbor_rows(bundle, ids, distances))


@bp.post("/collections/<cid>/similar")
def similar(cid: str):
    """The items nearest to an uploaded image (multipart field ``image``; ``k`` and
    ``embedding`` as form fields or in the query string), nearest first, as
    ``neighbors`` lists them; an image of the collection finds itself at distance 0.

    The image is decoded in memory by the pipeline's own code with the bundle's settings,
    its pixel limit included (``mosaic.pipeline.decode.embed_query``), imported here only:
    no other request loads the decoder. A body over ``MOSAIC_UPLOAD_MAX`` bytes is a 413,
    never read past the limit; an upload that is no usable image is a 400.
    """
    bundle = get_bundle(cid)
    limit = current_app.config.get("MOSAIC_UPLOAD_MAX", MAX_UPLOAD)
    request.max_content_length = limit
    try:
        upload = request.files.get("image")
    except RequestEntityTooLarge:
        abort(413, description=f"the upload is over the limit of {limit} bytes")
    if upload is None:
        abort(400, description="send the query image as the multipart/form-data field 'image'")
    name = request.values.get("embedding") or (bundle.embedding_names or [None])[0]
    spec = bundle.embedding(name) if name else None
    if spec is None:
        abort(400, description=f"unknown embedding {name!r}; this collection has "
                               f"{', '.join(bundle.embedding_names) or 'none'}")
    if spec.kind == "vgg16":
        abort(400, description=f"embedding {name!r} needs the VGG16 model, which the server "
                               "never loads; query it with `python run.py similar`")
    k = _int_arg("k", 20, 1, MAX_K, request.values)
    from mosaic.pipeline.decode import embed_query

    vector = embed_query(upload.read(), bundle.model, spec)
    index = bundle.neighbor_index(name)
    ids, distances = index.query_vector(vector, k)
    return jsonify(ok=True, embedding=name, metric=index.metric, method=index.method, k=k,
                   neighbors=_neighbor_rows(bundle, ids, distances))


@bp.get("/collections/<cid>/search")
def search(cid: str):
    bundle = get_bundle(cid)
    mode = request.args.get("mode", "keyword")
    if mode == "meaning":
        return _search_meaning(bundle)
    if mode != "keyword":
        abort(400, description=f"mode must be keyword or meaning, not {mode!r}")
    query = parse_search_args(request.args, bundle.columns, extra=("ids", "mode"))
    limit = _int_arg("limit", 100, 0, MAX_LIMIT)
    offset = _int_arg("offset", 0, 0, MAX_OFFSET)
    want_ids = request.args.get("ids", "")
    if want_ids not in ("", "all"):
        abort(400, description=f"ids must be 'all' or absent, not {want_ids!r}")
    conn = get_db(bundle)
    if want_ids:
        total, all_ids = search_items(conn, query)
        page = all_ids[offset:offset + limit]
    else:
        total, page = search_items(conn, query, limit=limit, offset=offset)
    rows = _rows(bundle, page)
    body = dict(ok=True, total=total, limit=limit, offset=offset,
                items=[rows[i] for i in page])
    if want_ids:
        body["ids"] = all_ids
    return jsonify(body)


MEANING_ARGS = {"mode", "text", "embedding", "k", "limit", "offset", "ids"}


def _search_meaning(bundle: ServedBundle):
    """``search?mode=meaning&text=...``: the ``k`` items (default 100) nearest to the
    text in a clip embedding (``embedding``, default the first), nearest first, as
    ``total``, ``items`` (``limit`` from ``offset``, each with its angular ``distance``)
    and, with ``ids=all``, ``ids``. The text goes through the text tower of the model
    that embedded the images (``mosaic.pipeline.decode.embed_text_query``, imported here
    only: loaded once per worker process, on the first such search)."""
    unknown = sorted(set(request.args) - MEANING_ARGS)
    if unknown:
        abort(400, description=f"a search by meaning takes {', '.join(sorted(MEANING_ARGS))}; "
                               f"not {', '.join(unknown)}")
    text = request.args.get("text", "").strip()
    if not text:
        abort(400, description="a search by meaning needs text=...")
    name = request.args.get("embedding") or bundle.model.meaning_embedding
    spec = bundle.embedding(name) if name else None
    if spec is None or spec.kind != "clip":
        abort(400, description=f"a search by meaning needs a clip embedding; collection "
                               f"{bundle.cid!r} has {', '.join(bundle.embedding_names) or 'none'}"
                               f" (python run.py pipeline --embedding clip)")
    k = _int_arg("k", 100, 1, MAX_LIMIT)
    limit = _int_arg("limit", 100, 0, MAX_LIMIT)
    offset = _int_arg("offset", 0, 0, MAX_OFFSET)
    want_ids = request.args.get("ids", "")
    if want_ids not in ("", "all"):
        abort(400, description=f"ids must be 'all' or absent, not {want_ids!r}")
    from mosaic.pipeline.decode import embed_text_query

    vector = embed_text_query(text, bundle.model, spec)
    index = bundle.neighbor_index(name)
    ids, distances = index.query_vector(vector, k)
    body = dict(ok=True, total=len(ids), limit=limit, offset=offset, embedding=name,
                metric=index.metric, method=index.method,
                items=_neighbor_rows(bundle, ids[offset:offset + limit],
                                     distances[offset:offset + limit]))
    if want_ids:
        body["ids"] = [int(i) for i in ids]
    return jsonify(body)


@bp.get("/collections/<cid>/random")
def random_items(cid: str):
    bundle = get_bundle(cid)
    query = parse_search_args(request.args, bundle.columns, extra=("n", "seed"))
    n = _int_arg("n", 50, 1, MAX_RANDOM)
    seed = _int_arg("seed", None, 0, 2**63 - 1)
    if seed is None:
        seed = secrets.randbelow(2**31)
    if query.is_empty:
        population = np.setdiff1d(np.arange(bundle.n_items), bundle.removed)
    else:
        population = np.array(search_items(get_db(bundle), query)[1], dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(population, size=min(n, len(population)), replace=False).tolist()
    rows = _rows(bundle, chosen)
    return jsonify(ok=True, seed=seed, total=len(population), items=[rows[i] for i in chosen])


@bp.get("/collections/<cid>/facets")
def facets(cid: str):
    bundle = get_bundle(cid)
    conn = get_db(bundle)
    values: dict[str, list] = {name: [] for name in bundle.model.facets}
    for row in conn.execute(
            "SELECT name, value, count FROM facet_values ORDER BY name, count DESC, value"):
        values.setdefault(row["name"], []).append({"value": row["value"], "count": row["count"]})
    numeric = []
    for position, column in enumerate(bundle.columns):
        if column["kind"] in ("number", "year"):
            stored = sql_name(position)
            low, high, count = conn.execute(
                f"SELECT MIN({stored}), MAX({stored}), COUNT({stored}) FROM metadata").fetchone()
            numeric.append({"name": column["name"], "kind": column["kind"],
                            "min": low, "max": high, "count": count})
    return jsonify(ok=True, facets=[{"name": k, "values": v} for k, v in values.items()],
                   numeric=numeric)


@bp.route("/collections/<cid>/export.csv", methods=["GET", "POST"])
def export_csv(cid: str):
    """The matching items as CSV; a POST's ``ids`` (``posted_ids``) keeps those among them."""
    bundle = get_bundle(cid)
    query = parse_search_args(request.args, bundle.columns)
    ids = sorted(search_items(get_db(bundle), query)[1])
    posted = posted_ids(bundle)
    if posted is not None:
        ids = np.intersect1d(ids, posted).tolist()
    conn = bundle.connect()  # owned by the generator, which outlives the request context
    headers = {"Content-Disposition": f'attachment; filename="{bundle.cid}.csv"'}
    return Response(stream_with_context(_csv_rows(conn, bundle.columns, ids)),
                    mimetype="text/csv", headers=headers)


_IDS = re.compile(rb"[\s,]*(?:\d{1,15}(?:[\s,]+\d{1,15})*)?[\s,]*")


def posted_ids(bundle: ServedBundle) -> np.ndarray | None:
    """The item ids a POST sends as its field ``ids`` (a text or file part of a form: ids
    separated by commas or white space; the viewer's selection on the map), sorted and
    without repeats; None for a GET. Not ids, or one outside ``0..N-1`` -> 400; a body over
    ``MOSAIC_UPLOAD_MAX`` -> 413. The search parameters stay in the query string."""
    if request.method != "POST":
        return None
    limit = current_app.config.get("MOSAIC_UPLOAD_MAX", MAX_UPLOAD)
    request.max_content_length = limit
    try:
        part = request.files.get("ids")
        data = part.read() if part is not None else request.form.get("ids")
    except RequestEntityTooLarge:
        abort(413, description=f"the request is over the limit of {limit} bytes")
    if data is None:
        abort(400, description="send the item ids as the form field 'ids' "
                               "(numbers separated by commas)")
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not _IDS.fullmatch(data):
        abort(400, description="ids must be item ids (integers) separated by commas")
    ids = np.unique(np.array(data.replace(b",", b" ").split(), dtype=np.int64))
    if len(ids) and ids[-1] >= bundle.n_items:
        abort(400, description=f"item {int(ids[-1])} not in collection {bundle.cid!r} "
                               f"(ids are 0..{bundle.n_items - 1})")
    return ids


def _csv_rows(conn: sqlite3.Connection, columns: list[dict], ids: list[int],
              chunk: int = 500) -> Iterator[str]:
    """The export's CSV (mosaic.store's header: item fields, then ``meta.<name>``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    try:
        writer.writerow(export_header(columns, SERVER_EXPORT_FIELDS))
        for count, (fields, values) in enumerate(iter_export_rows(conn, columns, ids, chunk,
                                                                  SERVER_EXPORT_FIELDS), 1):
            writer.writerow([*fields, *values])
            if count % chunk == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()
    finally:
        conn.close()


def _summary(bundle: ServedBundle) -> dict:
    return {
        "id": bundle.cid,
        "title": bundle.title,
        "n_items": bundle.n_items,
        "embeddings": bundle.embedding_names,
        "facets": bundle.model.facets,
        "overview": _collection_url(bundle, "overview.jpg") if bundle.model.overview else None,
        "url": f"{request.script_root}/c/{bundle.cid}",
    }


def _collection_url(bundle: ServedBundle, path: str) -> str:
    return f"{request.script_root}/collections/{bundle.cid}/{path}"


def _thumb(bundle: ServedBundle, item_id: int) -> str:
    return _collection_url(bundle, f"thumbs/{item_id}.jpg")


def _rows(bundle: ServedBundle, ids: list[int]) -> dict[int, dict]:
    """``{id: {id, row, col, title, thumbnail}}`` for ``ids``, in one query."""
    if not ids:
        return {}
    sql = f"SELECT id, row, col, title FROM items WHERE id IN ({','.join('?' * len(ids))})"
    return {r["id"]: dict(r, thumbnail=_thumb(bundle, r["id"]))
            for r in get_db(bundle).execute(sql, ids)}


def _neighbor_rows(bundle: ServedBundle, ids: np.ndarray, distances: np.ndarray) -> list[dict]:
    """A neighbour list as the API gives it: ``_rows``' fields and ``distance``, in order."""
    ids = [int(i) for i in ids]
    rows = _rows(bundle, ids)
    return [dict(rows[i], distance=float(d)) for i, d in zip(ids, distances, strict=True)]


def _check_item(bundle: ServedBundle, item_id: int) -> None:
    if not 0 <= item_id < bundle.n_items:
        abort(404, description=f"item {item_id} not in collection {bundle.cid!r} "
                               f"(ids are 0..{bundle.n_items - 1})")
    if bundle.is_removed(item_id):
        abort(404, description=f"item {item_id} was removed from collection {bundle.cid!r}")


def _int_arg(name: str, default: int | None, low: int, high: int | None,
             values: Mapping[str, str] | None = None) -> int | None:
    """An integer parameter of the query string (or of ``values``, e.g. a form), 400 if
    it is not one or out of ``low..high``."""
    text = (request.args if values is None else values).get(name, "")
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        abort(400, description=f"{name} must be an integer, not {text!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        abort(400, description=f"{name} must be {bound}, not {value}")
    return value
