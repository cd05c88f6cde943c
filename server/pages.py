"""HTML pages and the viewer's static files.

``/`` lists the collections and ``/c/<cid>`` opens one; both pages fetch the
JSON API. ``/mirador?manifest=URL`` opens a IIIF manifest (ours: ``/iiif/<cid>/
manifest.json``, or anyone's) in Mirador, the IIIF community's viewer.
OpenSeadragon and Mirador are served from the npm packages pinned in
static/package.json (``cd static && npm ci``), never from a copy.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, abort, current_app, send_from_directory

from server.db import get_bundle

bp = Blueprint("pages", __name__)

ASSET_FOLDERS = ("js", "css")
OSD_BUILD = Path("node_modules", "openseadragon", "build", "openseadragon")
MIRADOR_BUILD = Path("node_modules", "mirador", "dist")


def _static() -> Path:
    return Path(current_app.config["MOSAIC_STATIC"])


@bp.get("/")
def index():
    return send_from_directory(_static(), "index.html", max_age=0)


@bp.get("/c/<cid>")
def viewer(cid: str):
    get_bundle(cid)
    return send_from_directory(_static(), "viewer.html", max_age=0)


@bp.get("/static/<folder>/<path:filename>")
def asset(folder: str, filename: str):
    if folder not in ASSET_FOLDERS:
        abort(404, description=f"no static folder {folder!r}")
    return send_from_directory(_static() / folder, filename, max_age=0)


@bp.get("/static/openseadragon/<path:filename>")
def openseadragon(filename: str):
    return _npm_build(OSD_BUILD, filename, "OpenSeadragon")


def _npm_build(folder: Path, filename: str, package: str):
    """A file of an npm package's build, pinned in static/package.json."""
    build = _static() / folder
    if not build.is_dir():
        abort(404, description=f"{package} is not installed: run `npm ci` in static/")
    return send_from_directory(build, filename, max_age=86400)


@bp.get("/mirador")
def mirador():
    return send_from_directory(_static(), "mirador.html", max_age=0)


@bp.get("/static/mirador/<path:filename>")
def mirador_build(filename: str):
    return _npm_build(MIRADOR_BUILD, filename, "Mirador")
