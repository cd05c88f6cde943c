"""IIIF out, served: ``/iiif/<cid>/...`` (Image API 3 level 0 and Presentation 3).

- ``map/info.json`` and the map's level-0 tiles: a IIIF tile request is answered
  with the one Deep Zoom tile it names (``mosaic.iiif.dzi_tile``), sent from the
  bundle's ``tiles/`` with ``send_from_directory``; ``full/max`` is ``overview.jpg``.
- ``items/<id>/info.json`` and ``items/<id>/full/max/0/default.jpg``: the item's
  cell, its stored JPEG bytes as they are.
- ``manifest.json``, ``annotations/<k>.json`` and ``items/<id>/manifest.json``.

Every id in these documents is built from the request's own URL, so they are
right behind any prefix or proxy that sets the forwarded headers. IIIF viewers
run on other origins: every response allows any origin (CORS).
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, jsonify, request, send_from_directory, url_for

from mosaic import iiif
from server.bundles import ServedBundle
from server.db import get_bundle
from server.files import _cache

bp = Blueprint("iiif", __name__, url_prefix="/iiif/<cid>")

JSON_LD = 'application/ld+json;profile="http://iiif.io/api/image/3/context.json"'
PRESENTATION = 'application/ld+json;profile="http://iiif.io/api/presentation/3/context.json"'


@bp.after_request
def _allow_any_origin(response: Response) -> Response:
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


def _base(cid: str) -> str:
    return url_for("iiif.manifest", cid=cid, _external=True).rsplit("/", 1)[0]


def _document(document: dict, bundle: ServedBundle, mimetype: str = PRESENTATION) -> Response:
    response = jsonify(document)
    if "application/ld+json" in request.headers.get("Accept", ""):
        response.mimetype = mimetype.split(";")[0]
        response.headers["Content-Type"] = mimetype
    _cache(response, bundle)
    return response


@bp.get("/manifest.json")
def manifest(cid: str):
    bundle = get_bundle(cid)
    return _document(iiif.build_manifest(bundle.model, _base(cid)), bundle)


@bp.get("/annotations/<int:page>.json")
def annotation_page(cid: str, page: int):
    bundle = get_bundle(cid)
    try:
        document = iiif.build_annotation_page(bundle.model, _base(cid), page)
    except IndexError:
        abort(404, description=f"collection {cid!r} has no annotation page {page}")
    return _document(document, bundle)


@bp.get("/map")
@bp.get("/items/<int:item_id>")
def service_base(cid: str, item_id: int | None = None):
    """The service's base URI redirects to its info.json (Image API 3, section 2.2)."""
    return Response(status=303, headers={"Location": request.base_url + "/info.json"})


@bp.get("/map/info.json")
def map_info(cid: str):
    bundle = get_bundle(cid)
    model = bundle.model
    return _document(iiif.map_info(model.tiles, model.overview, f"{_base(cid)}/map"), bundle,
                     JSON_LD)


@bp.get("/map/<region>/<size>/<rotation>/<quality>.<fmt>")
def map_image(cid: str, region: str, size: str, rotation: str, quality: str, fmt: str):
    bundle = get_bundle(cid)
    tiles, overview = bundle.model.tiles, bundle.model.overview
    _check_image_request(rotation, quality, fmt)
    if region == "full" and size in iiif.full_sizes(tiles.width, tiles.height,
                                                    overview.width, overview.height):
        return _send(bundle, ".", overview.path)
    info = iiif.map_info(tiles, overview, "")
    if "tiles" not in info:
        abort(404, description=f"collection {cid!r} offers no IIIF tiles "
                               f"(its tiles overlap or are not jpeg); full/max only")
    found = iiif.full_tile(tiles, size) if region == "full" else iiif.dzi_tile(tiles, region,
                                                                              size)
    if found is None:
        abort(400, description=f"{region}/{size} is not a tile of this level-0 image: "
                               f"see its info.json for the tile size and scale factors")
    level, col, row = found
    return _send(bundle, "tiles", f"map_files/{level}/{col}_{row}.jpg")


@bp.get("/items/<int:item_id>/info.json")
def item_info(cid: str, item_id: int):
    bundle = _item_bundle(cid, item_id)
    return _document(iiif.item_info(bundle.model, f"{_base(cid)}/items/{item_id}"),
                     bundle, JSON_LD)


@bp.get("/items/<int:item_id>/manifest.json")
def item_manifest(cid: str, item_id: int):
    bundle = _item_bundle(cid, item_id)
    return _document(iiif.build_item_manifest(bundle.model, _base(cid), item_id), bundle)


@bp.get("/items/<int:item_id>/<region>/<size>/<rotation>/<quality>.<fmt>")
def item_image(cid: str, item_id: int, region: str, size: str, rotation: str, quality: str,
               fmt: str):
    bundle = _item_bundle(cid, item_id)
    cell = bundle.model.grid.cell_size
    _check_image_request(rotation, quality, fmt)
    if region not in ("full", "square", f"0,0,{cell},{cell}") \
            or size not in iiif.full_sizes(cell, cell, cell, cell):
        abort(400, description=f"level 0: this image is only full/max ({cell}x{cell})")
    response = Response(bundle.cells.read_encoded(item_id), mimetype="image/jpeg")
    _cache(response, bundle)
    return response


def _item_bundle(cid: str, item_id: int) -> ServedBundle:
    bundle = get_bundle(cid)
    if not 0 <= item_id < bundle.n_items or bundle.is_removed(item_id):
        abort(404, description=f"item {item_id} not in collection {cid!r}")
    return bundle


def _check_image_request(rotation: str, quality: str, fmt: str) -> None:
    if rotation != "0" or quality != "default" or fmt != "jpg":
        abort(400, description="level 0: rotation 0, quality default and format jpg only")


def _send(bundle: ServedBundle, folder: str, filename: str) -> Response:
    response = send_from_directory(bundle.path / folder, filename, mimetype="image/jpeg")
    _cache(response, bundle)
    return response
