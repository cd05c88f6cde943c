"""The mosaic web server: a JSON API, tiles and the viewer over the bundles in one folder.

``create_app`` is the app factory (also for gunicorn)::

    gunicorn -w 4 -b 127.0.0.1:8000 "server:create_app(out_dir='output')"
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask

from mosaic.bundle import DEFAULT_OUT

# Exact search reads items x dim float32 values per query: 5M is ~3 ms on one core.
EXACT_MAX = 5_000_000
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def create_app(test_config: dict | None = None, out_dir: str | os.PathLike | None = None
               ) -> Flask:
    """Build the app. Settings: ``MOSAIC_OUT`` (bundle folder; env var MOSAIC_OUT,
    default ``output``), ``MOSAIC_EXACT_MAX`` (exact neighbour search where items x
    dimensions is at most this; annoy above), ``MOSAIC_STATIC`` and ``MOSAIC_TILE_MAX_AGE``."""
    from server import api, db, errors, files, iiif, pages, posters

    app = Flask(__name__, static_folder=None)
    app.config.from_mapping(
        MOSAIC_OUT=os.environ.get("MOSAIC_OUT", DEFAULT_OUT),
        MOSAIC_EXACT_MAX=EXACT_MAX,
        MOSAIC_STATIC=str(STATIC_DIR),
        MOSAIC_TILE_MAX_AGE=3600,
    )
    if test_config:
        app.config.update(test_config)
    if out_dir is not None:
        app.config["MOSAIC_OUT"] = str(out_dir)
    # send_from_directory resolves a relative folder against the app's root, not the
    # working directory: every folder the app serves from is made absolute here, once.
    for key in ("MOSAIC_OUT", "MOSAIC_STATIC"):
        app.config[key] = str(Path(app.config[key]).resolve())
    app.json.sort_keys = False
    app.url_map.merge_slashes = False  # "tiles//etc/passwd" is a 404, not a redirect
    db.init_app(app)
    errors.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(iiif.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(posters.bp)
    return app
