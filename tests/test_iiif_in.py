"""IIIF in: ``--images LIST.txt`` of IIIF URLs, against our own IIIF out on loopback."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from static_host import free_port, static_host

from mosaic.pipeline import iiif_in

pytest_plugins = ["server_fixtures"]
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]


def _pipeline(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "-q", "pipeline", *args,
                           "--out", "out", "--embedding", "raw", "--cell-size", "32",
                           "--jobs", "2"], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def _titles(bundle: Path) -> dict[str, str]:
    conn = sqlite3.connect(bundle / "metadata.sqlite")
    try:
        return dict(conn.execute("SELECT filename, title FROM items"))
    finally:
        conn.close()


def test_round_trip_every_item_arrives_with_its_metadata(live_server, tmp_path):
    """Our served per-item manifests, read back by the real CLI: same titles, same columns."""
    n_items = 60
    lines = [f"{live_server}/iiif/test/items/{i}/manifest.json" for i in range(n_items)]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    result = _pipeline(tmp_path, "--images", "list.txt", "--id", "back")
    assert result.returncode == 0, result.stderr
    bundle = tmp_path / "out" / "back"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["counts"]["items"] == n_items and manifest["skipped"] == []
    conn = sqlite3.connect(bundle / "metadata.sqlite")
    got = sorted(t for (t,) in conn.execute("SELECT title FROM items"))
    conn.close()
    served = sorted(
        json.loads(_get(f"{live_server}/iiif/test/items/{i}/manifest.json"))["label"]["none"][0]
        for i in range(n_items))
    assert got == served and "red tile 3" in got
    names = {c["name"] for c in manifest["columns"]}
    assert {"label", "manifest", "category", "parity", "year"} <= names
    facets = set(manifest["facets"])
    assert "category" in facets  # the metadata pairs are columns like a CSV's
    # Every download is kept in the bundle's cache (a rerun fetches nothing), no .part left.
    cached = sorted((bundle / "cache" / "iiif").iterdir())
    assert len(cached) == n_items and not [p for p in cached if p.suffix == ".part"]


def _get(url: str) -> bytes:
    return iiif_in.fetch_bytes(url)


def test_a_404_and_garbage_are_skipped_with_reasons(live_server, tmp_path):
    good = [f"{live_server}/iiif/test/items/{i}/manifest.json" for i in (1, 2, 3)]
    missing = f"{live_server}/iiif/test/items/9999/manifest.json"
    garbage = f"{live_server}/collections/test/grid.i32"
    service = f"{live_server}/iiif/test/items/4"  # an image service's base URL
    (tmp_path / "list.txt").write_text("\n".join([*good, missing, garbage, service]) + "\n")
    result = _pipeline(tmp_path, "--images", "list.txt", "--id", "mixed")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "mixed" / "manifest.json").read_text())
    assert manifest["counts"]["items"] == 4
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {missing, garbage}
    assert "404" in reasons[missing] and "not JSON" in reasons[garbage]


def test_a_list_of_only_failures_is_an_error(live_server, tmp_path):
    (tmp_path / "list.txt").write_text(f"{live_server}/nothing/here.json\n")
    result = _pipeline(tmp_path, "--images", "list.txt", "--id", "none")
    assert result.returncode == 1 and "no usable images" in result.stderr


V2_MANIFEST = {
    "@context": "http://iiif.io/api/presentation/2/context.json",
    "@id": "https://example.org/m2", "@type": "sc:Manifest", "label": "A v2 object",
    "metadata": [{"label": "Date", "value": "1901"},
                 {"label": "Maker", "value": [{"@value": "A", "@language": "en"}]}],
    "sequences": [{"canvases": [{"@id": "https://example.org/c1", "label": "p. 1", "images": [
        {"resource": {"@id": "https://example.org/i1/full/full/0/default.jpg",
                      "service": {"@id": "https://example.org/i1",
                                  "@context": "http://iiif.io/api/image/2/context.json",
                                  "profile": "http://iiif.io/api/image/2/level2.json"}}}]}]}],
}

V3_MANIFEST = {
    "@context": "http://iiif.io/api/presentation/3/context.json",
    "id": "https://example.org/m3", "type": "Manifest", "label": {"en": ["A v3 object"]},
    "metadata": [{"label": {"en": ["Date"]}, "value": {"none": ["1902"]}}],
    "items": [{"id": "https://example.org/c", "type": "Canvas", "items": [
        {"type": "AnnotationPage", "items": [{"type": "Annotation", "motivation": "painting",
         "body": {"id": "https://example.org/i3/full/max/0/default.jpg", "type": "Image",
                  "service": [{"id": "https://example.org/i3", "type": "ImageService3",
                               "profile": "level2"}]}}]}]}],
}


def test_v2_and_v3_manifests_read_alike():
    (v2,) = iiif_in.read_manifest("https://example.org/m2", V2_MANIFEST)
    (v3,) = iiif_in.read_manifest("https://example.org/m3", V3_MANIFEST)
    assert v2.label == "A v2 object" and v3.label == "A v3 object"
    assert v2.metadata == [("Date", "1901"), ("Maker", "A")]
    assert v3.metadata == [("Date", "1902")]
    assert iiif_in.image_url(v2, 128) == "https://example.org/i1/full/!128,128/0/default.jpg"
    assert iiif_in.image_url(v3, 224) == "https://example.org/i3/full/!224,224/0/default.jpg"


def test_a_list_mixing_urls_and_paths_is_a_usage_error(tmp_path):
    (tmp_path / "list.txt").write_text("https://example.org/m.json\nphoto.jpg\n")
    result = _pipeline(tmp_path, "--images", "list.txt")
    assert result.returncode == 2 and result.stderr.startswith("Error: ")


def test_round_trip_through_a_published_site(server_bundle, tmp_path):
    """Publish a collection as a static site with its IIIF files, serve it with
    ``python -m http.server`` under a prefix, and build a new collection from the
    site's per-item manifests: every item arrives with its title and columns."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/pub/test/"
    published = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-q", "publish", "--id", "test",
         "--out", str(server_bundle.parent), "--to", "www/pub/test", "--base-url", base],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert published.returncode == 0, published.stderr
    with static_host(tmp_path / "www", "pub/test/iiif/manifest.json", port):
        site = json.loads(_get(f"{base}iiif/manifest.json"))
        n_items = json.loads((server_bundle / "manifest.json").read_text())["counts"]["items"]
        assert site["id"] == f"{base}iiif/manifest.json"
        lines = [f"{base}iiif/items/{i}/manifest.json" for i in range(n_items)]
        (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
        result = _pipeline(tmp_path, "--images", "list.txt", "--id", "again")
        assert result.returncode == 0, result.stderr
    bundle = tmp_path / "out" / "again"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["counts"]["items"] == n_items and manifest["skipped"] == []
    conn = sqlite3.connect(server_bundle / "metadata.sqlite")
    original = sorted(t for (t,) in conn.execute("SELECT title FROM items"))
    conn.close()
    conn = sqlite3.connect(bundle / "metadata.sqlite")
    got = sorted(t for (t,) in conn.execute("SELECT title FROM items"))
    conn.close()
    assert got == original
    assert {"category", "year"} <= {c["name"] for c in manifest["columns"]}


def test_add_takes_a_list_of_iiif_urls(live_server, tmp_path):
    """``run.py add --images LIST`` of IIIF URLs: downloaded as the pipeline downloads
    them, each new item with its manifest's label and metadata in the collection's
    columns; a URL that fails is skipped with its reason; the same list again adds
    nothing (the same download, already an item)."""
    lines = [f"{live_server}/iiif/test/items/{i}/manifest.json" for i in range(60)]
    (tmp_path / "first.txt").write_text("\n".join(lines[:40]) + "\n")
    (tmp_path / "more.txt").write_text("\n".join(lines[40:] + [f"{live_server}/nope"]) + "\n")
    built = _pipeline(tmp_path, "--images", "first.txt", "--id", "grow")
    assert built.returncode == 0, built.stderr

    def add(listing: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "run.py"), "add", "--id", "grow",
                               "--out", "out", "--images", listing, "--jobs", "2"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)

    done = add("more.txt")
    assert done.returncode == 0, done.stderr
    assert "Added 20 items" in done.stdout and "/nope" in done.stderr  # skipped, with reason
    exported = subprocess.run([sys.executable, str(ROOT / "run.py"), "export", "--id", "grow",
                               "--out", "out", "-o", "-"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr
    rows = [row for row in csv.DictReader(io.StringIO(exported.stdout)) if int(row["id"]) >= 40]
    served = {json.loads(_get(line))["label"]["none"][0] for line in lines[40:]}
    assert {row["title"] for row in rows} == served
    assert all(row["meta.category"] for row in rows) and len(rows) == 20
    again = add("more.txt")
    assert again.returncode == 0, again.stderr
    assert "Nothing added" in again.stdout and "already item" in again.stderr
