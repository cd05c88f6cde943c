"""metadata.sqlite's names, shared by its writer and its readers.

The user's CSV columns live in their own namespace. In SQLite they are stored
under positional names (``c0``, ``c1``, ... in ``metadata``), so no CSV name,
whatever its case (``Id``, ``ID``, ``source``...), can collide with the
table's ``id`` or with another column; the ``columns`` table (and the
manifest's ``columns`` list, in the same order) keeps each verbatim name.
Outside SQLite:

- the API nests them under ``"metadata"`` in an item;
- search parameters may name them as ``meta.<name>`` (always the CSV column,
  even where the name is a reserved parameter such as ``q`` or ``limit``) or
  as plain ``<name>`` where that is not reserved;
- a CSV export prefixes them with ``meta.``; a JSON export nests them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

META_PREFIX = "meta."
# One row per (item, tag) of each ``tags`` column (pipe-delimited in the CSV; the raw
# string stays in ``metadata``): ``(name, value, id)``, indexed on (name, value, id).
TAGS_TABLE = "item_tags"
# The item's own fields in an export, before the user's columns: the CLI's, and the
# server's (which never hands out the paths of the machine that built the bundle).
EXPORT_FIELDS = ("id", "source", "row", "col", "x", "y", "title", "url")
SERVER_EXPORT_FIELDS = ("id", "row", "col", "x", "y", "title", "url", "filename")


def quote_ident(name: str) -> str:
    """An SQL identifier for any name (the one quoting rule)."""
    return '"' + name.replace('"', '""') + '"'


def sql_name(position: int) -> str:
    """The ``metadata`` table's column for the user's column at ``position``."""
    return f"c{int(position)}"


def sql_names(columns: list[dict]) -> dict[str, str]:
    """``{user name: SQL column}`` for a manifest's ``columns`` list (positions = order)."""
    return {column["name"]: sql_name(position) for position, column in enumerate(columns)}


def read_columns(conn: sqlite3.Connection) -> list[dict]:
    """The user's columns as stored: ``[{"name", "kind"}]`` in position order."""
    return [{"name": name, "kind": kind} for name, kind in conn.execute(
        "SELECT name, kind FROM columns ORDER BY position")]


def read_metadata(conn: sqlite3.Connection, columns: list[dict], item_id: int) -> dict:
    """One item's values of the user's columns, by their verbatim names (None when unset)."""
    if not columns:
        return {}
    selected = ", ".join(sql_name(i) for i in range(len(columns)))
    row = conn.execute(f"SELECT {selected} FROM metadata WHERE id = ?", (item_id,)).fetchone()
    if row is None:
        return {}
    return {column["name"]: row[i] for i, column in enumerate(columns)}


def iter_export_rows(conn: sqlite3.Connection, columns: list[dict],
                     ids: Iterable[int] | None = None, chunk: int = 500,
                     fields: tuple[str, ...] = EXPORT_FIELDS
                     ) -> Iterator[tuple[tuple, tuple]]:
    """``(item fields, user values)`` per item in id order: all items, or ``ids``."""
    item_fields = fields
    extra = "".join(f", m.{sql_name(i)}" for i in range(len(columns)))
    selected = ", ".join(f"i.{name}" for name in item_fields)
    base = f"SELECT {selected}{extra} FROM items AS i LEFT JOIN metadata AS m ON m.id = i.id"
    split = len(item_fields)
    if ids is None:
        for row in conn.execute(base + " ORDER BY i.id"):
            yield tuple(row[:split]), tuple(row[split:])
        return
    ids = sorted(ids)
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        sql = f"{base} WHERE i.id IN ({','.join('?' * len(part))}) ORDER BY i.id"
        for row in conn.execute(sql, part):
            yield tuple(row[:split]), tuple(row[split:])


def export_header(columns: list[dict], fields: tuple[str, ...] = EXPORT_FIELDS) -> list[str]:
    """A CSV export's header: the item's fields, then ``meta.<name>`` for each user column."""
    return [*fields, *(META_PREFIX + column["name"] for column in columns)]
