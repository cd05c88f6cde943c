"""Tests that read metadata.sqlite directly name the user's columns through this."""

from __future__ import annotations

import sqlite3

from mosaic.store import read_columns, sql_names


def col(conn: sqlite3.Connection, name: str) -> str:
    """The SQL column of the user's column ``name`` (mosaic.store's namespace rule)."""
    return sql_names(read_columns(conn))[name]
