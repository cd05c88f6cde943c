"""Bundle files under ``/collections/<cid>/``: tiles, overview, grid and thumbnails.

Files go out only through ``send_from_directory`` (traversal is a 404). URLs
that carry the bundle's version (``?v=``, as the API hands them out) are
cached for a year; others for ``MOSAIC_TILE_MAX_AGE`` seconds, with ETags.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, request, send_from_directory

from mosaic.bundle import Layout, Regions
from server.bundles import ServedBundle
from server.db import get_bundle

bp = Blueprint("files", __name__, url_prefix="/collections/<cid>")

YEAR = 365 * 24 * 3600


@bp.get("/tiles/<path:filename>")
def tiles(cid: str, filename: str):
    bundle = get_bundle(cid)
    mimetype = "application/xml" if filename.endswith(".dzi") else None
    return _send(bundle, "tiles", filename, mimetype)


@bp.get("/overview.jpg")
def overview(cid: str):
    bundle = get_bundle(cid)
    overview = bundle.model.overview
    if overview is None:
        abort(404, description=f"collection {cid!r} has no overview image")
    return _send(bundle, ".", overview.path)


@bp.get("/grid.i32")
def grid(cid: str):
    """The raw little-endian int32 grid (cell -> item id, -1 empty), row-major."""
    bundle = get_bundle(cid)
    return _send_grid(bundle, bundle.model.similarity)


@bp.get("/regions.json")
def regions(cid: str):
    """The labelled regions (``Bundle.regions.path``, docs/bundle.md)."""
    return _send(get_bundle(cid), ".", _regions_entry(cid).path, "application/json")


@bp.get("/regions.order.i32")
def regions_order(cid: str):
    """Item ids as raw little-endian int32, region by region: a region's items are
    ``[start, end)`` of it."""
    return _send(get_bundle(cid), ".", _regions_entry(cid).order)


def _regions_entry(cid: str) -> Regions:
    entry = get_bundle(cid).model.regions
    if entry is None:
        abort(404, description=f"collection {cid!r} has no regions (pipeline --region-size)")
    return entry


@bp.get("/duplicates.json")
def duplicates(cid: str):
    """The duplicate groups the pipeline stored (``Bundle.duplicates.path``,
    docs/bundle.md), as they are: the viewer leaves out items removed since."""
    bundle = get_bundle(cid)
    entry = bundle.model.duplicates
    if entry is None:
        abort(404, description=f"collection {cid!r} has no stored duplicate groups "
                               f"(pipeline --duplicates, with the pixels embedding)")
    return _send(bundle, ".", entry.path, "application/json")


@bp.get("/layouts/<slug>/tiles/<path:filename>")
def layout_tiles(cid: str, slug: str, filename: str):
    """A ``--layout``'s pyramid (``Layout.tiles``)."""
    bundle = get_bundle(cid)
    layout = _layout(bundle, slug)
    mimetype = "application/xml" if filename.endswith(".dzi") else None
    return _send(bundle, layout.tiles.folder, filename, mimetype)


@bp.get("/layouts/<slug>/overview.jpg")
def layout_overview(cid: str, slug: str):
    bundle = get_bundle(cid)
    overview = _layout(bundle, slug).overview
    if overview is None:
        abort(404, description=f"layout {slug!r} of {cid!r} has no overview image")
    return _send(bundle, ".", overview.path)


@bp.get("/layouts/<slug>/grid.i32")
def layout_grid(cid: str, slug: str):
    """One layout's raw int32 grid, like ``/grid.i32``; X-Grid-Shape gives its size."""
    bundle = get_bundle(cid)
    return _send_grid(bundle, _layout(bundle, slug))


def _send_grid(bundle: ServedBundle, layout: Layout) -> Response:
    response = _send(bundle, ".", layout.grid_file)
    response.headers["X-Grid-Shape"] = f"{layout.grid.n_rows},{layout.grid.n_cols}"
    return response


def _layout(bundle: ServedBundle, slug: str) -> Layout:
    layout = bundle.layout_by_slug(slug)
    if layout is None:
        abort(404, description=f"collection {bundle.cid!r} has no layout {slug!r} (layouts: "
                               f"{', '.join(e.slug for e in bundle.layouts)})")
    return layout


@bp.get("/thumbs/<int:item_id>.jpg")
def thumbnail(cid: str, item_id: int):
    """One item's cell: its stored JPEG bytes from ``cells.pack``, sent as they are."""
    bundle = get_bundle(cid)
    if not 0 <= item_id < bundle.n_items or bundle.is_removed(item_id):
        abort(404, description=f"item {item_id} not in collection {cid!r}")
    response = Response(mimetype="image/jpeg")
    response.set_etag(f"{bundle.version}-{item_id}")
    _cache(response, bundle)
    if request.if_none_match.contains(f"{bundle.version}-{item_id}"):
        response.status_code = 304
        return response
    # open_cells reads only JPEG packs, so the stored bytes are the response: no re-encode.
    response.set_data(bundle.cells.read_encoded(item_id))
    return response


def _send(bundle: ServedBundle, folder: str, filename: str, mimetype: str | None = None
          ) -> Response:
    response = send_from_directory(bundle.path / folder, filename, mimetype=mimetype)
    _cache(response, bundle)
    return response


def _cache(response: Response, bundle: ServedBundle) -> None:
    response.cache_control.no_cache = None
    response.cache_control.public = True
    if request.args.get("v") == bundle.version:
        response.cache_control.max_age = YEAR
        response.cache_control.immutable = True
    else:
        response.cache_control.max_age = current_app.config["MOSAIC_TILE_MAX_AGE"]
