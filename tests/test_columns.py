"""Any CSV column name works: the user's columns never collide with the item's own
fields, whatever their case, in the store, search, facets, the API, export and
templates. Built through the real CLI, with relative paths, as a user runs it."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import pyvips

from server import create_app

ROOT = Path(__file__).resolve().parents[1]
N = 12
# Every item field, search parameter and hash key, in several cases.
RESERVED = ["id", "Id", "ID", "source", "Source", "row", "ROW", "col", "x", "y", "title",
            "Title", "url", "filename", "stem", "width", "height", "q", "limit", "offset",
            "view", "item", "emb", "metadata", "meta.x"]


def _value(name: str, index: int) -> str:
    # Two values per column: a facet, and distinct from every item field's value.
    return f"v{zlib.crc32(name.encode()) % 997}{'even' if index % 2 == 0 else 'odd'}"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("columns")
    (work / "pics").mkdir()
    rows = []
    for index in range(N):
        name = f"img_{index:02d}.png"
        pyvips.Image.black(24, 24).new_from_image([index * 20, 255 - index * 20, 90]) \
            .cast("uchar").pngsave(str(work / "pics" / name))
        rows.append({"file": name, **{c: _value(c, index) for c in RESERVED},
                     "notes": f"zebra{index}"})
    with open(work / "meta.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = run_cli("-q", "pipeline", "--images", "pics", "--metadata", "meta.csv",
                     "--filename-column", "file", "--embedding", "raw", "--cell-size", "16",
                     "--url", "https://example.org/{Id}/", "--title", "{title} / {ID}",
                     cwd=work)
    assert result.returncode == 0, result.stderr
    return work


def csv_value(name: str, item: int, project: Path) -> str:
    with open(project / "meta.csv", encoding="utf-8") as handle:
        rows = {r["file"]: r for r in csv.DictReader(handle)}
    return rows[f"img_{item:02d}.png"][name]


def test_the_export_keeps_the_items_fields_and_every_csv_column(project):
    result = run_cli("export", "--id", "pics", "-o", "-", cwd=project)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    header = list(rows[0])
    assert len(header) == len(set(header))
    own, users = header[:8], header[8:]
    # No CSV column can be read as an item field, whatever its case.
    assert not {h.lower() for h in own} & {h.lower() for h in users}
    assert header[:8] == ["id", "source", "row", "col", "x", "y", "title", "url"]
    positions = np.load(project / "output/pics/positions.npy")
    for row in rows:
        item = int(row["id"])
        assert row["source"].endswith(f"img_{item:02d}.png")       # the item's own source
        assert (int(row["row"]), int(row["col"])) == tuple(positions[item])
        assert 0.0 <= float(row["x"]) <= 1.0                        # the layout, not the CSV's
        for name in RESERVED:
            assert row[f"meta.{name}"] == csv_value(name, item, project), name
    assert {row["id"] for row in rows} == {str(i) for i in range(N)}


def test_json_export_nests_the_csv_columns(project):
    assert run_cli("export", "--id", "pics", "--format", "json", "-o", "pics.json",
                   cwd=project).returncode == 0
    items = json.loads((project / "pics.json").read_text())
    assert [item["id"] for item in items] == list(range(N))
    for item in items:
        assert set(RESERVED) <= set(item["metadata"])
        assert item["metadata"]["id"] == csv_value("id", item["id"], project)


def test_templates_see_the_csv_columns(project):
    client = create_app({"TESTING": True}, out_dir=project / "output").test_client()
    for item in range(N):
        body = client.get(f"/api/collections/pics/items/{item}").get_json()
        assert body["url"] == f"https://example.org/{csv_value('Id', item, project)}/"
        assert body["title"] == f"{csv_value('title', item, project)} / " \
                                f"{csv_value('ID', item, project)}"


def test_the_api_keeps_both_and_filters_any_column(project):
    client = create_app({"TESTING": True}, out_dir=project / "output").test_client()
    body = client.get("/api/collections/pics/items/3").get_json()
    assert body["id"] == 3 and isinstance(body["row"], int)          # the item's own
    assert body["filename"] == "img_03.png"
    for name in RESERVED:                                              # the panel's data
        assert body["metadata"][name] == csv_value(name, 3, project)
    for name in ("Id", "q", "limit", "view", "meta.x", "source"):
        wanted = _value(name, 0)
        found = client.get(f"/api/collections/pics/search?meta.{name}={wanted}&limit=100")
        assert found.status_code == 200, found.get_json()
        ids = [item["id"] for item in found.get_json()["items"]]
        assert ids == [i for i in range(N) if csv_value(name, i, project) == wanted], name
        assert ids  # the control: half of the items match
    # A plain reserved name is still the API's own parameter: limit=1 limits.
    assert len(client.get("/api/collections/pics/search?limit=1").get_json()["items"]) == 1
    facets = client.get("/api/collections/pics/facets").get_json()["facets"]
    assert {"Id", "id", "ID", "q"} <= {facet["name"] for facet in facets}


def test_full_text_search_finds_a_value_in_such_a_column(project):
    client = create_app({"TESTING": True}, out_dir=project / "output").test_client()
    body = client.get("/api/collections/pics/search?q=zebra5").get_json()
    assert [item["id"] for item in body["items"]] == [5]
