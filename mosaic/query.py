"""Search over a bundle's ``metadata.sqlite``: keyword, facets and numeric ranges.

Shared by the server (``/api/collections/<cid>/search`` and ``export.csv``)
and the poster CLI, so both read the same query string the same way::

    >>> columns = [{"name": "category", "kind": "facet"},
    ...            {"name": "year", "kind": "year"}]
    >>> query = parse_search_args({"q": "red", "category": "a", "year_min": "1990"}, columns)
    >>> query.facets, query.ranges
    ({'category': 'a'}, {'year': (1990.0, None)})

Parameters:

- ``q``: keyword search. Each word must occur (AND); a trailing ``*`` makes a
  word a prefix. With ``_searchmode=raw``, ``q`` is passed to SQLite FTS5 as
  is (``"exact phrase"``, ``OR``, ``NOT``, ``NEAR``); a syntax error there is
  a ``QueryError``.
- ``<facet>=VALUE``: the item's value of that facet column equals VALUE.
  Several facets combine with AND.
- ``<tags>=TAG`` (a ``tags`` column, e.g. ``tags=sky``): the item carries that
  tag (one of its pipe-delimited values, exactly). Repeated
  (``tags=sky&tags=sea``), every tag must be carried (AND), like every other
  filter; at most ``MAX_TAGS`` tags. A tag no item carries matches nothing; it
  is not an error.
- ``<numeric>_min`` / ``<numeric>_max``: inclusive bounds on a ``number`` or
  ``year`` column. Items without a value never match a bound.
- Any column may also be named ``meta.<name>`` (``meta.<name>_min``...): that
  form always means the CSV's column, even one called ``q`` or ``limit``
  (see mosaic.store for the namespace rule).

Empty values mean "not set", as an HTML form sends them. Results are ordered
by item id (see ``search_items``).
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mosaic.errors import QueryError
from mosaic.store import META_PREFIX, TAGS_TABLE, read_columns, sql_names

RESERVED = frozenset({"q", "_searchmode", "limit", "offset"})
NUMERIC_KINDS = frozenset({"number", "year"})
_WORD = re.compile(r"\S+")


# An error names at most this many unknown parameters, then counts the rest.
MAX_NAMED_UNKNOWN = 10
# Tags one search may require (each is a clause; SQLite caps an expression's depth).
MAX_TAGS = 100

@dataclass(frozen=True)
class SearchQuery:
    """A parsed search: keyword, facet equalities, tags carried and inclusive numeric
    ranges."""

    q: str | None = None
    facets: dict[str, str] = field(default_factory=dict)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    raw: bool = False
    tags: dict[str, tuple[str, ...]] = field(default_factory=dict)  # every tag must be carried

    @property
    def is_empty(self) -> bool:
        return not (self.q or self.facets or self.ranges or self.tags)


def parse_search_args(
    args: Mapping[str, str], columns: list[dict], extra: Iterable[str] = ()
) -> SearchQuery:
    """Parse query-string style ``args`` against a bundle's ``columns``.

    ``columns`` is ``Bundle.columns`` (dicts with ``name`` and ``kind``).
    ``extra`` names further parameters the caller handles itself (``n``,
    ``seed``...); any other unknown name raises QueryError. A repeated ``tags``
    parameter is read whole from a multi-valued mapping (``getlist``, as Flask's
    ``request.args``) or from a list value.
    """
    facet_names = {c["name"] for c in columns if c["kind"] == "facet"}
    tags_names = {c["name"] for c in columns if c["kind"] == "tags"}
    numeric_names = {c["name"] for c in columns if c["kind"] in NUMERIC_KINDS}
    allowed = RESERVED | set(extra)
    mode = (args.get("_searchmode") or "words").strip()
    if mode not in ("words", "raw"):
        raise QueryError(f"_searchmode must be 'words' or 'raw', not {mode!r}")

    facets: dict[str, str] = {}
    tags: dict[str, list[str]] = {}
    ranges: dict[str, list[float | None]] = {}
    unknown = []
    for name in args:
        value = args[name]
        prefixed = name.startswith(META_PREFIX)
        if name in allowed and not prefixed:
            continue
        column = name[len(META_PREFIX):] if prefixed else name
        if column in facet_names:
            if value != "":
                facets[column] = value
            continue
        if column in tags_names:
            wanted = tags.setdefault(column, [])
            for tag in _all_values(args, name):
                if tag != "" and tag not in wanted:
                    wanted.append(tag)
            if sum(map(len, tags.values())) > MAX_TAGS:
                raise QueryError(f"at most {MAX_TAGS} tags in one search")
            continue
        base, _, bound = column.rpartition("_")
        if base in numeric_names and bound in ("min", "max"):
            if value.strip() != "":
                pair = ranges.setdefault(base, [None, None])
                pair[0 if bound == "min" else 1] = _parse_number(name, value)
            continue
        unknown.append(name)
    if unknown:
        names = sorted(unknown)
        shown = ", ".join(names[:MAX_NAMED_UNKNOWN])
        if len(names) > MAX_NAMED_UNKNOWN:
            shown += f" and {len(names) - MAX_NAMED_UNKNOWN} more"
        raise QueryError(
            f"unknown search parameter(s): {shown}; valid are "
            f"q, {_describe(facet_names | tags_names, numeric_names)}"
        )
    q = (args.get("q") or "").strip() or None
    return SearchQuery(
        q=q, facets=facets, ranges={k: (v[0], v[1]) for k, v in ranges.items()},
        raw=mode == "raw", tags={k: tuple(v) for k, v in tags.items() if v},
    )


def search_items(
    conn: sqlite3.Connection, query: SearchQuery, limit: int | None = None, offset: int = 0
) -> tuple[int, list[int]]:
    """Return ``(total, ids)``: how many items match and one page of their ids.

    ``limit=None`` returns every match from ``offset`` on. Always ordered by
    id: ranking by FTS5 relevance costs a sort of every match (seconds for a
    common word at 100k items), and id order is stable while paging.
    """
    if limit is not None and limit < 0 or offset < 0:
        raise QueryError("limit and offset must be >= 0")
    filtered = query.facets or query.ranges or query.tags
    stored = sql_names(read_columns(conn)) if filtered else {}
    unknown = sorted((set(query.facets) | set(query.ranges) | set(query.tags)) - set(stored))
    if unknown:
        raise QueryError(f"this collection has no column {', '.join(map(repr, unknown))}")
    source, where, params, column = _build_sql(query, stored)
    count_sql = f"SELECT COUNT(*) FROM {source}{where}"
    try:
        if limit == 0:
            return conn.execute(count_sql, params).fetchone()[0], []
        page = [*params, -1 if limit is None else limit, offset]
        if query.q and filtered:
            # Keyword and filters: count in the same pass, so the full-text
            # match (the costly part) runs once.
            rows = conn.execute(f"SELECT {column}, COUNT(*) OVER () FROM {source}{where} "
                                f"ORDER BY {column} LIMIT ? OFFSET ?", page).fetchall()
            if rows or offset == 0:
                return (rows[0][1] if rows else 0), [row[0] for row in rows]
        total = conn.execute(count_sql, params).fetchone()[0]
        rows = conn.execute(f"SELECT {column} FROM {source}{where} ORDER BY {column} "
                            "LIMIT ? OFFSET ?", page).fetchall()
        return total, [row[0] for row in rows]
    except sqlite3.OperationalError as error:
        if query.q and not str(error).startswith("no such table"):
            raise QueryError(f"bad full-text query q={query.q!r}: {error}") from None
        raise


def fts_expression(q: str, raw: bool = False) -> str:
    """The FTS5 MATCH expression for ``q``: every word quoted (AND), or ``q`` itself."""
    if raw:
        return q
    terms = []
    for word in _WORD.findall(q):
        prefix = word.endswith("*") and len(word) > 1
        word = word.rstrip("*") if prefix else word
        terms.append('"' + word.replace('"', '""') + '"' + ("*" if prefix else ""))
    return " ".join(terms)


def _build_sql(query: SearchQuery, stored: dict[str, str]) -> tuple[str, str, list, str]:
    """``(source, where, params, id column)``. The metadata table (with its
    indexes) drives filtered searches and FTS5 is a set to test ids against:
    the other way round SQLite runs one full-text match per candidate row."""
    clauses: list[str] = []
    params: list = []
    for name, value in query.facets.items():
        clauses.append(f"m.{stored[name]} = ?")
        params.append(value)
    for name, values in query.tags.items():
        for value in values:  # the (name, value, id) index answers each one
            clauses.append(f"m.id IN (SELECT id FROM {TAGS_TABLE} WHERE name = ? AND value = ?)")
            params += [name, value]
    for name, (low, high) in query.ranges.items():
        if low is not None:
            clauses.append(f"m.{stored[name]} >= ?")
            params.append(low)
        if high is not None:
            clauses.append(f"m.{stored[name]} <= ?")
            params.append(high)
    if clauses:
        source, column = "metadata AS m", "m.id"
        if query.q:
            clauses.append("m.id IN (SELECT rowid FROM items_fts WHERE items_fts MATCH ?)")
            params.append(fts_expression(query.q, query.raw))
    elif query.q:
        source, column = "items_fts", "items_fts.rowid"
        clauses.append("items_fts MATCH ?")
        params.append(fts_expression(query.q, query.raw))
    else:
        source, column = "items", "items.id"
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    return source, where, params, column


def _all_values(args: Mapping, name: str) -> list[str]:
    """Every value of a parameter: a MultiDict's ``getlist``, a list, or the one value."""
    getlist = getattr(args, "getlist", None)
    values = getlist(name) if getlist is not None else args[name]
    return [str(v).strip() for v in ([values] if isinstance(values, str) else values)]


def _parse_number(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise QueryError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise QueryError(f"{name} must be a finite number, not {value!r}")
    return number


def _describe(facet_names: set[str], numeric_names: set[str]) -> str:
    parts = [f"{name}=VALUE" for name in sorted(facet_names)]
    parts += [f"{name}_min, {name}_max" for name in sorted(numeric_names)]
    return ", ".join(parts) or "(this collection has no facet or numeric columns)"
