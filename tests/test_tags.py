"""PixPlot's ``tags`` convention: a column of pipe-delimited tags is a multi-valued
facet, counted per tag, searchable per tag and by keyword, exported as written.

The bundle is built by the real CLI as a subprocess, from a relative ``--out``, as a
user runs it; the expected counts and matches are computed from the CSV here.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import pyvips

from mosaic.pipeline.collect import Metadata, infer_column_kinds, split_tags
from mosaic.query import parse_search_args
from server import create_app

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)

# Item i is img_<i>.png (ids follow the sorted paths). "Tags" is found by its name (any
# case); "subjects" only through --tags-column. Item 11 has no CSV row at all.
TAGS = ["red|sky", "sky| sea ", "red|red|sky", "", "sea", "  |sky||", "zebraword|red",
        "Sky", "red | sky | sea", "sky", "sea|red"]
SUBJECTS = ["a|b", "b", "", "a", "c|a", "b|c", "", "a", "b", "c", "a|b|c"]
CATEGORY = ["x", "y"] * 5 + ["x"]
# By hand: the items carrying each tag, and each tag's count (a tag counts once per item).
EXPECTED_TAGS = {"red": 5, "sky": 6, "sea": 4, "zebraword": 1, "Sky": 1}
EXPECTED_SUBJECTS = {"a": 5, "b": 5, "c": 4}
N_IMAGES = 12


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def write_project(work: Path, with_tags: bool = True) -> None:
    (work / "pics").mkdir(parents=True)
    for index in range(N_IMAGES):
        pyvips.Image.black(20, 20).new_from_image([index * 20, 255 - index * 20, 60]) \
            .cast("uchar").pngsave(str(work / "pics" / f"img_{index:02d}.png"))
    fields = ["filename", "Tags", "subjects", "category", "notes"] if with_tags \
        else ["filename", "category", "notes"]
    with open(work / "meta.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for index in range(len(TAGS)):
            writer.writerow({"filename": f"img_{index:02d}.png", "Tags": TAGS[index],
                             "subjects": SUBJECTS[index], "category": CATEGORY[index],
                             "notes": f"note {index}"})


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("tags")
    write_project(work)
    result = run_cli("-q", "pipeline", "--images", "pics", "--metadata", "meta.csv",
                     "--tags-column", "subjects", "--embedding", "raw", "--cell-size", "16",
                     "--out", "bundles", cwd=work)
    assert result.returncode == 0, result.stderr
    return work


@pytest.fixture(scope="module")
def client(project):
    return create_app({"TESTING": True}, out_dir=project / "bundles").test_client()


def carrying(column: list[str], tag: str) -> list[int]:
    """The items whose value of ``column`` (TAGS or SUBJECTS) carries ``tag``: Python's
    own reading of the CSV, not the store's."""
    return [i for i, value in enumerate(column)
            if tag in {t.strip() for t in value.split("|")}]


def search_ids(client, query: str) -> list[int]:
    response = client.get(f"/api/collections/pics/search?{query}&ids=all&limit=0")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["ids"]


def test_split_tags_strips_drops_empties_and_repeats():
    assert split_tags("red|sky|  sea ") == ["red", "sky", "sea"]
    assert split_tags("  |sky||sky") == ["sky"]
    assert split_tags("") == split_tags(None) == []
    assert split_tags("Sky|sky") == ["Sky", "sky"]  # tags are case-sensitive, as facets are


def test_tags_columns_are_found_by_name_or_flag_only():
    metadata = Metadata(columns=["filename", "TAGS", "tagline", "kw"], filename_column="filename",
                        encoding="utf-8",
                        rows=[{"filename": f"{i}.png", "TAGS": "a|b", "tagline": "a|b",
                               "kw": "x|y"} for i in range(6)])
    kinds = infer_column_kinds(metadata)
    assert kinds["TAGS"] == "tags" and "tags" not in (kinds["tagline"], kinds["kw"])
    assert infer_column_kinds(metadata, ["kw"])["kw"] == "tags"


def test_manifest_and_columns_know_the_tags_kind(project):
    manifest = json.loads((project / "bundles/pics/manifest.json").read_text())
    kinds = {c["name"]: c["kind"] for c in manifest["columns"]}
    assert kinds == {"Tags": "tags", "subjects": "tags", "category": "facet", "notes": "text"}
    assert manifest["facets"] == ["Tags", "subjects", "category"]
    assert manifest["parameters"]["tags_columns"] == ["subjects"]


def test_facet_counts_are_one_per_item_carrying_the_tag(project, client):
    body = client.get("/api/collections/pics/facets").get_json()
    facets = {f["name"]: {v["value"]: v["count"] for v in f["values"]} for f in body["facets"]}
    assert facets["Tags"] == EXPECTED_TAGS
    assert facets["subjects"] == EXPECTED_SUBJECTS
    assert facets["category"] == dict(Counter(CATEGORY)) == {"x": 6, "y": 5}
    # The hand counts are the CSV's, read another way.
    for tag, count in EXPECTED_TAGS.items():
        assert len(carrying(TAGS, tag)) == count
    # Most frequent first, as for any facet.
    counts = [v["count"] for v in next(f for f in body["facets"] if f["name"] == "Tags")["values"]]
    assert counts == sorted(counts, reverse=True)


def test_search_by_tag_returns_exactly_the_items_carrying_it(client):
    for column, values, expected in (("Tags", TAGS, EXPECTED_TAGS),
                                     ("subjects", SUBJECTS, EXPECTED_SUBJECTS)):
        for tag in expected:
            wanted = carrying(values, tag)
            assert search_ids(client, f"{column}={tag}") == wanted, (column, tag)
            assert search_ids(client, f"meta.{column}={tag}") == wanted
    # Not a substring or a case-folded match: "Sky" is its own tag.
    assert search_ids(client, "Tags=Sky") == [7]
    assert search_ids(client, "Tags=sk") == []
    assert search_ids(client, "Tags=no-such-tag") == []  # zero matches, not an error


def test_repeated_tags_all_must_be_carried_and_combine_with_other_filters(client):
    both = sorted(set(carrying(TAGS, "red")) & set(carrying(TAGS, "sky")))
    assert both == [0, 2, 8]
    assert search_ids(client, "Tags=red&Tags=sky") == both
    assert search_ids(client, "Tags=red&meta.Tags=sky") == both
    assert search_ids(client, "Tags=red&Tags=no-such-tag") == []
    with_facet = [i for i in both if CATEGORY[i] == "x"]
    assert search_ids(client, "Tags=red&Tags=sky&category=x") == with_facet == [0, 2, 8]
    assert search_ids(client, "Tags=sky&category=y") == \
        [i for i in carrying(TAGS, "sky") if CATEGORY[i] == "y"]
    assert search_ids(client, "Tags=sky&subjects=a") == \
        sorted(set(carrying(TAGS, "sky")) & set(carrying(SUBJECTS, "a")))
    assert search_ids(client, "Tags=sea&q=note") == carrying(TAGS, "sea")
    assert search_ids(client, "Tags=sea&q=zebraword") == []


def test_parse_reads_every_value_of_a_repeated_tags_parameter():
    columns = [{"name": "tags", "kind": "tags"}, {"name": "c", "kind": "facet"}]
    query = parse_search_args({"tags": ["a", "", "b", "a"], "c": "x"}, columns)
    assert query.tags == {"tags": ("a", "b")} and query.facets == {"c": "x"}
    assert parse_search_args({"tags": ""}, columns).is_empty


def test_keyword_search_finds_a_tag(client):
    assert search_ids(client, "q=zebraword") == [6]
    assert search_ids(client, "q=sea") == carrying(TAGS, "sea")
    assert search_ids(client, "q=nowhereword") == []  # the control


def test_the_item_and_the_export_keep_the_raw_string(project, client):
    assert client.get("/api/collections/pics/items/1").get_json()["metadata"]["Tags"] == \
        "sky| sea"  # the CSV reader strips a value's ends, nothing else
    result = run_cli("export", "--id", "pics", "--out", "bundles", "-o", "-", cwd=project)
    assert result.returncode == 0, result.stderr
    rows = {int(r["id"]): r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert len(rows) == N_IMAGES
    for item in range(len(TAGS)):
        assert rows[item]["meta.Tags"] == TAGS[item].strip()
        assert rows[item]["meta.subjects"] == SUBJECTS[item].strip()
    assert rows[11]["meta.Tags"] == ""  # no CSV row


def test_item_tags_table_holds_one_row_per_item_and_tag(project):
    conn = sqlite3.connect(project / "bundles/pics/metadata.sqlite")
    rows = conn.execute("SELECT name, value, id FROM item_tags").fetchall()
    conn.close()
    expected = {("Tags", tag, i) for i, v in enumerate(TAGS) for tag in split_tags(v)} | \
               {("subjects", tag, i) for i, v in enumerate(SUBJECTS) for tag in split_tags(v)}
    assert len(rows) == len(set(rows)) and set(rows) == expected


def test_a_csv_without_tags_is_unchanged(tmp_path):
    write_project(tmp_path, with_tags=False)
    result = run_cli("-q", "pipeline", "--images", "pics", "--metadata", "meta.csv",
                     "--embedding", "raw", "--cell-size", "16", "--out", "bundles",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "bundles/pics/manifest.json").read_text())
    assert manifest["columns"] == [{"name": "category", "kind": "facet"},
                                   {"name": "notes", "kind": "text"}]
    assert manifest["facets"] == ["category"]
    conn = sqlite3.connect(tmp_path / "bundles/pics/metadata.sqlite")
    tables = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'items_fts_%'")}
    conn.close()
    assert tables == {"items", "metadata", "columns", "facet_values", "items_fts"}


@pytest.mark.parametrize("flags, named", [
    (["--tags-column", "nope"], "nope"),
    (["--tags-column", "filename"], "filename"),
])
def test_a_bad_tags_column_is_one_error_line(project, flags, named):
    result = run_cli("pipeline", "--images", "pics", "--metadata", "meta.csv",
                     "--out", "elsewhere", *flags, cwd=project)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: --tags-column") and repr(named) in lines[0]
    assert not (project / "elsewhere").exists()  # checked before any work


def test_many_repeated_tags_are_a_400_not_a_500(client):
    many = "&".join(f"Tags=t{i}" for i in range(2000))
    response = client.get(f"/api/collections/pics/search?{many}")
    assert response.status_code == 400 and "tags" in response.get_json()["error"]
    assert search_ids(client, "&".join(["Tags=red"] * 2000)) == carrying(TAGS, "red")
