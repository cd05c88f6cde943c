"""Search semantics: mosaic.query on its own, and /search and export.csv over it."""

from __future__ import annotations

import re
import sqlite3

import pytest
from server_data import XSS_NAME, collection_rows

from mosaic.query import QueryError, SearchQuery, fts_expression, parse_search_args, search_items

pytest_plugins = ["server_fixtures"]

BASE = "/api/collections/test/search"
COLUMNS = [{"name": "category", "kind": "facet"}, {"name": "parity", "kind": "facet"},
           {"name": "year", "kind": "year"}, {"name": "weight", "kind": "number"},
           {"name": "notes", "kind": "text"}]


@pytest.fixture(scope="module")
def rows_by_id(server_bundle) -> dict[int, dict]:
    """The CSV row of every item id (ids follow the sorted file names)."""
    rows = {r["filename"]: r for r in collection_rows()}
    with sqlite3.connect(server_bundle / "metadata.sqlite") as conn:
        return {i: rows[f] for i, f in conn.execute("SELECT id, filename FROM items")}


def words(row: dict) -> set[str]:
    """What FTS5's default tokenizer sees: title, text and facet values, file name."""
    text = " ".join([row["name"], row["notes"], row["category"], row["parity"],
                     row["filename"]])
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def ids_of(client, query: str) -> list[int]:
    body = client.get(f"{BASE}?{query}&limit=1000").get_json()
    assert body["ok"] is True and body["total"] == len(body["items"])
    return [item["id"] for item in body["items"]]


# mosaic.query on its own

def test_parse_reads_facets_ranges_and_keyword():
    query = parse_search_args({"q": " red tile ", "category": "red", "year_min": "1960",
                               "weight_max": "2.5", "limit": "10"}, COLUMNS)
    assert query == SearchQuery(q="red tile", facets={"category": "red"},
                                ranges={"year": (1960.0, None), "weight": (None, 2.5)})
    assert not query.is_empty


def test_parse_treats_empty_values_as_unset():
    query = parse_search_args({"q": "", "category": "", "year_min": " ", "year_max": ""},
                              COLUMNS)
    assert query == SearchQuery() and query.is_empty


@pytest.mark.parametrize("args, message", [
    ({"colour": "red"}, "colour"),
    ({"notes": "x"}, "notes"),          # text columns are searched with q, not filtered
    ({"notes_min": "1"}, "notes_min"),
    ({"year_min": "abc"}, "year_min must be a number"),
    ({"weight_max": "inf"}, "finite"),
    ({"_searchmode": "fuzzy"}, "_searchmode"),
])
def test_parse_rejects_unknown_and_bad_parameters(args, message):
    with pytest.raises(QueryError, match=message):
        parse_search_args(args, COLUMNS)


def test_parse_accepts_the_callers_extra_parameters():
    assert parse_search_args({"n": "5", "seed": "1"}, COLUMNS, extra=("n", "seed")).is_empty


def test_fts_expression_quotes_every_word():
    assert fts_expression('red "tile') == '"red" """tile"'
    assert fts_expression("ti* AND") == '"ti"* "AND"'
    assert fts_expression("a OR b", raw=True) == "a OR b"


def test_search_items_pages_and_counts(server_bundle):
    conn = sqlite3.connect(server_bundle / "metadata.sqlite")
    total, every = search_items(conn, SearchQuery())
    assert total == 60 and every == list(range(60))
    assert search_items(conn, SearchQuery(), limit=0) == (60, [])
    assert search_items(conn, SearchQuery(), limit=7, offset=56) == (60, [56, 57, 58, 59])
    both = SearchQuery(q="tile", facets={"parity": "even"})
    total, ids = search_items(conn, both)
    assert search_items(conn, both, limit=0) == (total, [])
    assert search_items(conn, both, limit=4, offset=2) == (total, ids[2:6])
    assert search_items(conn, both, limit=4, offset=1000) == (total, [])
    with pytest.raises(QueryError):
        search_items(conn, SearchQuery(q="AND OR (", raw=True))
    with pytest.raises(QueryError):
        search_items(conn, SearchQuery(), limit=-1)
    conn.close()


# through the API

def test_no_filter_matches_everything_in_id_order(client):
    assert ids_of(client, "") == list(range(60))


@pytest.mark.parametrize("q", ["red", "odd", "tile", "sample", "png", "green 3", "blu*",
                               "script", "quotes"])
def test_keyword_matches_items_holding_every_word(client, rows_by_id, q):
    terms = q.lower().split()

    def matches(row):
        tokens = words(row)
        return all(any(t.startswith(term[:-1]) for t in tokens) if term.endswith("*")
                   else term in tokens for term in terms)

    expected = sorted(i for i, row in rows_by_id.items() if matches(row))
    assert expected, q
    assert sorted(ids_of(client, f"q={q}")) == expected


def test_keyword_is_case_insensitive_and_punctuation_safe(client):
    assert ids_of(client, "q=RED") == ids_of(client, "q=red")
    for text in ['"red', "red)", "NEAR(", "AND", "*", "-", "ü"]:
        body = client.get(f"{BASE}", query_string={"q": text}).get_json()
        assert body["ok"] is True, text


def test_raw_mode_takes_fts5_syntax(client, rows_by_id):
    either = ids_of(client, "q=red OR blue&_searchmode=raw")
    expected = [i for i, r in rows_by_id.items() if r["category"] in ("red", "blue")]
    assert sorted(either) == sorted(expected)
    phrase = ids_of(client, 'q="green tile 3"&_searchmode=raw')
    assert [rows_by_id[i]["name"] for i in phrase] == ["green tile 3"]


def test_keyword_results_are_in_id_order(client, rows_by_id):
    ids = ids_of(client, "q=tile")
    assert len(ids) == 59  # every title but the XSS one
    assert ids == sorted(ids)
    assert ids_of(client, "q=tile&parity=odd") == [i for i in ids
                                                   if rows_by_id[i]["parity"] == "odd"]
    script = ids_of(client, "q=script")
    assert [rows_by_id[i]["name"] for i in script] == [XSS_NAME]


def test_facets_combine_with_and(client, rows_by_id):
    red = ids_of(client, "category=red")
    odd = ids_of(client, "parity=odd")
    both = ids_of(client, "category=red&parity=odd")
    assert len(red) == 20 and len(odd) == 30 and len(both) == 10
    assert both == sorted(set(red) & set(odd))
    assert all(rows_by_id[i]["category"] == "red" and rows_by_id[i]["parity"] == "odd"
               for i in both)
    assert ids_of(client, "category=purple") == []
    assert ids_of(client, "category=red&q=blue") == []


def test_ranges_are_inclusive_and_skip_missing_values(client, rows_by_id):
    def expect(test):
        return sorted(i for i, r in rows_by_id.items() if r["year"] and test(int(r["year"])))

    assert ids_of(client, "year_min=1980") == expect(lambda y: y >= 1980)
    assert ids_of(client, "year_max=1960") == expect(lambda y: y <= 1960)
    assert ids_of(client, "year_min=1960&year_max=1970") == expect(lambda y: 1960 <= y <= 1970)
    assert ids_of(client, "year_min=1950.0&year_max=1950") == expect(lambda y: y == 1950)
    assert len(ids_of(client, "year_min=0")) == 59  # the row without a year never matches
    heavy = ids_of(client, "weight_min=4.75&category=green")
    assert heavy == sorted(i for i, r in rows_by_id.items()
                           if float(r["weight"]) >= 4.75 and r["category"] == "green")
    assert len(heavy) == 3  # weights 4.75, 5.0 and 5.25


def test_paging_covers_every_match_once(client):
    full = ids_of(client, "q=sample")
    pages = []
    for offset in range(0, 70, 7):
        body = client.get(f"{BASE}?q=sample&limit=7&offset={offset}").get_json()
        assert body["total"] == len(full) and body["limit"] == 7 and body["offset"] == offset
        assert len(body["items"]) <= 7
        pages += [item["id"] for item in body["items"]]
    assert pages == full
    count_only = client.get(f"{BASE}?q=sample&limit=0").get_json()
    assert count_only["total"] == len(full) and count_only["items"] == []


def test_ids_all_returns_every_match_beside_one_page(client):
    body = client.get(f"{BASE}?parity=even&limit=3&ids=all").get_json()
    assert body["total"] == 30 and len(body["ids"]) == 30 and len(body["items"]) == 3
    assert [item["id"] for item in body["items"]] == body["ids"][:3]
    assert sorted(body["ids"]) == ids_of(client, "parity=even")


def test_search_items_carry_position_and_thumbnail(client, server_bundle):
    import numpy as np

    positions = np.load(server_bundle / "positions.npy")
    for item in client.get(f"{BASE}?category=blue").get_json()["items"]:
        assert (item["row"], item["col"]) == tuple(positions[item["id"]])
        assert item["thumbnail"] == f"/collections/test/thumbs/{item['id']}.jpg"
