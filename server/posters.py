"""Poster downloads: the viewer's current filter as a small print-ready poster.

Rendered synchronously and only up to ``SERVER_MAX_PIXELS``; bigger posters are
refused with a message pointing to ``python run.py poster``. Cells come from the
bundle only (never the source images), like everything the server reads.
"""

from __future__ import annotations

import numpy as np
from flask import Blueprint, Response, abort, request

from mosaic.errors import PosterError
from mosaic.poster.compose import PosterOptions, render_poster_bytes
from mosaic.poster.paper import resolve_page
from mosaic.query import parse_search_args, search_items
from server.api import posted_ids
from server.db import get_bundle, get_db

bp = Blueprint("posters", __name__, url_prefix="/api")

FORMATS = {"png": "image/png", "pdf": "application/pdf", "jpeg": "image/jpeg"}
POSTER_ARGS = ("paper", "landscape", "dpi", "title")
MAX_TITLE = 200


@bp.route("/collections/<cid>/poster.<fmt>", methods=["GET", "POST"])
def poster(cid: str, fmt: str):
    """A POST's ``ids`` (server.api.posted_ids) keeps those items among the matches."""
    if fmt not in FORMATS:
        abort(404, description=f"posters are .png, .pdf or .jpeg, not .{fmt}")
    bundle = get_bundle(cid)
    query = parse_search_args(request.args, bundle.columns, extra=POSTER_ARGS)
    ids = None if query.is_empty else search_items(get_db(bundle), query)[1]
    posted = posted_ids(bundle)
    if posted is not None:
        ids = posted if ids is None else np.intersect1d(ids, posted)
    title = request.args.get("title", "")[:MAX_TITLE] or None
    try:
        dpi = float(request.args.get("dpi", "150"))
    except ValueError:
        raise PosterError(f"dpi must be a number, not {request.args.get('dpi')!r}") from None
    page = resolve_page(paper=request.args.get("paper", "A4"),
                        landscape=request.args.get("landscape", "") in ("1", "true"), dpi=dpi)
    options = PosterOptions(page=page, title=title, sources=False)
    # "map": the selection in its cells' reading order on the stored map. The server
    # reads the bundle only; laying a subset out afresh is the grid stage's work.
    data = render_poster_bytes(bundle.model, ids, options, fmt=fmt,
                               arrange="map")
    filename = f"{bundle.cid}-poster.{fmt}"
    return Response(data, mimetype=FORMATS[fmt],
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
