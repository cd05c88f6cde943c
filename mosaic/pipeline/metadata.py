"""Index stage, part 2: the SQLite metadata store with FTS5 and facet counts.

Schema in docs/bundle.md. The user's CSV columns are stored under positional
names (``mosaic.store.sql_name``), their verbatim names in the ``columns`` table.
A ``tags`` column keeps its raw pipe-delimited string in ``metadata``, and one
``item_tags`` row per (item, tag); each distinct tag is a ``facet_values`` row.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mosaic.pipeline.collect import split_tags
from mosaic.store import TAGS_TABLE, quote_ident, sql_name

SQL_TYPES = {"number": "REAL", "year": "INTEGER", "facet": "TEXT", "text": "TEXT",
             "tags": "TEXT"}
COUNTED_KINDS = ("facet", "tags")  # their values are counted in facet_values


@dataclass(frozen=True)
class ItemRecord:
    id: int
    source: str
    row: int
    col: int
    x: float
    y: float
    title: str | None
    url: str | None
    width: int
    height: int
    metadata: dict[str, str] | None  # the matched CSV row, if any


def write_metadata_db(path: Path, items: Iterable[ItemRecord], kinds: dict[str, str]) -> None:
    """Create the database at ``path`` (which must not exist) from ``items``."""
    conn = sqlite3.connect(path)
    try:
        _create_schema(conn, kinds)
        counts = insert_items(conn, items, kinds)
        for name, counter in counts.items():
            conn.executemany("INSERT INTO facet_values VALUES (?, ?, ?)",
                             [(name, value, n) for value, n in counter.most_common()])
        conn.commit()
    finally:
        conn.close()


def insert_items(conn: sqlite3.Connection, items: Iterable[ItemRecord], kinds: dict[str, str]
                 ) -> dict[str, Counter]:
    """Insert ``items`` into every table but ``facet_values`` (the pipeline's new database,
    or ``run.py add``'s copy of one); returns each counted column's values and how many
    of the items carry each, for ``facet_values``."""
    counts: dict[str, Counter] = {name: Counter() for name, k in kinds.items()
                                  if k in COUNTED_KINDS}
    insert_tag = f"INSERT INTO {TAGS_TABLE} (name, value, id) VALUES (?, ?, ?)"
    stored = [sql_name(i) for i in range(len(kinds))]
    placeholders = ", ".join("?" * (len(stored) + 1))
    insert_meta = f"INSERT INTO metadata (id{''.join(', ' + s for s in stored)}) " \
                  f"VALUES ({placeholders})"
    for item in items:
        conn.execute(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (item.id, item.source, Path(item.source).name, item.row, item.col,
             item.x, item.y, item.title, item.url, item.width, item.height))
        values = [_typed(item.metadata, name, kind) for name, kind in kinds.items()]
        conn.execute(insert_meta, (item.id, *values))
        body = [Path(item.source).name]
        for name, kind in kinds.items():
            value = (item.metadata or {}).get(name, "")
            if kind in ("text", "facet") and value:
                body.append(value)
            if kind == "facet" and value:
                counts[name][value] += 1
            if kind == "tags" and value:
                tags = split_tags(value)
                body.extend(tags)
                counts[name].update(tags)
                conn.executemany(insert_tag, [(name, tag, item.id) for tag in tags])
        conn.execute("INSERT INTO items_fts (rowid, title, body) VALUES (?, ?, ?)",
                     (item.id, item.title or "", " ".join(body)))
    return counts


def _create_schema(conn: sqlite3.Connection, kinds: dict[str, str]) -> None:
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, source TEXT NOT NULL, "
        "filename TEXT NOT NULL, row INTEGER NOT NULL, col INTEGER NOT NULL, "
        "x REAL NOT NULL, y REAL NOT NULL, title TEXT, url TEXT, width INTEGER, "
        "height INTEGER)")
    meta_columns = "".join(f", {sql_name(i)} {SQL_TYPES[k]}"
                           for i, k in enumerate(kinds.values()))
    conn.execute(f"CREATE TABLE metadata (id INTEGER PRIMARY KEY{meta_columns})")
    conn.execute("CREATE TABLE columns (name TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                 "position INTEGER NOT NULL)")
    conn.executemany("INSERT INTO columns VALUES (?, ?, ?)",
                     [(n, k, i) for i, (n, k) in enumerate(kinds.items())])
    conn.execute("CREATE TABLE facet_values (name TEXT NOT NULL, value TEXT NOT NULL, "
                 "count INTEGER NOT NULL)")
    conn.execute("CREATE VIRTUAL TABLE items_fts USING fts5(title, body)")
    if "tags" in kinds.values():  # only then: a CSV without tags makes the same file as ever
        conn.execute(f"CREATE TABLE {TAGS_TABLE} (name TEXT NOT NULL, value TEXT NOT NULL, "
                     "id INTEGER NOT NULL)")
        conn.execute(f"CREATE INDEX {TAGS_TABLE}_value ON {TAGS_TABLE} (name, value, id)")
    for position, kind in enumerate(kinds.values()):
        if kind in ("facet", "number", "year"):
            column = sql_name(position)
            conn.execute(f"CREATE INDEX {quote_ident('metadata_' + column)} "
                         f"ON metadata ({column})")


def _typed(row: dict[str, str] | None, name: str, kind: str):
    value = (row or {}).get(name, "")
    if value == "":
        return None
    if kind == "number":
        return float(value)
    if kind == "year":
        return int(float(value))
    return value
