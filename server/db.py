"""Per-request access to bundles, flaskr style: ``get_bundle`` and ``get_db``."""

from __future__ import annotations

import sqlite3

from flask import Flask, current_app, g

from server.bundles import BundleRegistry, ServedBundle


def get_registry() -> BundleRegistry:
    return current_app.extensions["mosaic"]


def get_bundle(cid: str) -> ServedBundle:
    """The bundle ``cid``; a missing or unreadable one is a BundleError (a 404)."""
    return get_registry().get(cid)


def get_db(bundle: ServedBundle) -> sqlite3.Connection:
    """This request's read-only connection to ``bundle``'s metadata.sqlite."""
    connections = g.setdefault("mosaic_db", {})
    if bundle.cid not in connections:
        connections[bundle.cid] = bundle.connect()
    return connections[bundle.cid]


def close_db(exception: BaseException | None = None) -> None:
    for conn in g.pop("mosaic_db", {}).values():
        conn.close()


def init_app(app: Flask) -> None:
    app.extensions["mosaic"] = BundleRegistry(
        app.config["MOSAIC_OUT"], exact_max=app.config["MOSAIC_EXACT_MAX"])
    app.teardown_appcontext(close_db)
