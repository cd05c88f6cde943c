"""Labelled regions through the real CLI, with relative paths: the bundle's files and
manifest entry, ``info``, ``export``'s ``region_<level>`` columns, ``--region-size 0``,
and a collection without metadata (regions, no words)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pyvips
from sample_collection import make_collection

from mosaic.pipeline.regions import MIN_COUNT

ROOT = Path(__file__).resolve().parent.parent
N = 36
ARGS = ["--embedding", "raw", "--cell-size", "32", "--tile-size", "64", "--jobs", "2",
        "--perplexity", "5"]


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("regions")
    make_collection(work / "pics")  # 36 images in 3 colours, pics.csv with a category
    done = run_cli(work, "-q", "pipeline", "--images", "pics", "--metadata", "pics.csv",
                   "--region-size", "2", *ARGS)
    assert done.returncode == 0, done.stderr
    return work


def test_the_bundle_holds_nested_labelled_regions(project):
    bundle = project / "output" / "pics"
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["regions"]
    ids = np.load(bundle / entry["ids"])
    described = json.loads((bundle / entry["path"]).read_text())["regions"]
    order = np.fromfile(bundle / entry["order"], dtype="<i4")
    assert ids.shape == (N, len(entry["levels"])) and len(entry["levels"]) >= 2
    assert entry["levels"][0] == 12 and entry["region_size"] == 2  # at most 12 at the top
    assert sorted(order.tolist()) == list(range(N))
    positions = np.load(bundle / "positions.npy")
    categories = {}
    with open(project / "pics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            categories[Path(row["filename"]).name] = row["category"]
    for region in described:
        members = sorted(order[region["start"]:region["end"]].tolist())
        assert members == np.flatnonzero(ids[:, region["level"] - 1] == region["id"]).tolist()
        r0, c0, r1, c1 = region["bbox"]
        assert (positions[members] >= [r0, c0]).all() and (positions[members] <= [r1, c1]).all()
        assert [region["row"], region["col"]] in positions[members].tolist()
    # the three colours are far apart: every top region is one colour, and says so, unless
    # it is too small to be labelled (with 12 top regions of 36 pictures, a picture the
    # layout put apart can be a region of its own)
    top = [r for r in described if r["level"] == 1]
    for region in top:
        best = region["terms"][0]
        assert best["text"] in {"red", "green", "blue"} and best["share"] == 1.0
        small = region["end"] - region["start"] < MIN_COUNT
        assert region["label"] == (None if small else best["text"])
    assert {r["label"] for r in top} - {None} == {"red", "green", "blue"}
    assert entry["labelled"] >= len(top) and "category" in entry["terms_from"]

    info = run_cli(project, "info", "--id", "pics")
    assert info.returncode == 0, info.stderr
    assert f"regions {' / '.join(map(str, entry['levels']))} at levels" in info.stdout

    export = run_cli(project, "export", "--id", "pics", "-o", "-")
    assert export.returncode == 0, export.stderr
    rows = list(csv.DictReader(io.StringIO(export.stdout)))
    levels = [f"region_{k + 1}" for k in range(len(entry["levels"]))]
    assert list(rows[0])[8:8 + len(levels)] == levels
    for row in rows:
        item = int(row["id"])
        for level, name in enumerate(levels):
            region = described[ids[item, level]]
            assert row[name] == (region["label"] or f"#{region['id']}")
        if described[ids[item, 0]]["label"] is not None:
            assert row["region_1"] == row["meta.category"]
    exported = json.loads(run_cli(project, "export", "--id", "pics", "--format", "json",
                                  "-o", "-").stdout)
    assert [item["region_1"] for item in exported] == [row["region_1"] for row in rows]


def test_region_size_0_makes_none_and_only_that_stage_runs(project, tmp_path):
    done = run_cli(project, "pipeline", "--images", "pics", "--metadata", "pics.csv",
                   "--id", "plain", "--region-size", "0", *ARGS)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((project / "output" / "plain" / "manifest.json").read_text())
    assert manifest["regions"] is None
    assert not (project / "output" / "plain" / "regions.json").exists()
    export = run_cli(project, "export", "--id", "plain", "-o", "-")
    assert "region_1" not in export.stdout.splitlines()[0]
    bad = run_cli(project, "pipeline", "--images", "pics", "--region-size", "-1")
    assert bad.returncode == 2 and "--region-size" in bad.stderr


def test_without_metadata_regions_have_no_words(project):
    done = run_cli(project, "-q", "pipeline", "--images", "pics", "--id", "bare",
                   "--region-size", "6", *ARGS)
    assert done.returncode == 0, done.stderr
    bundle = project / "output" / "bare"
    manifest = json.loads((bundle / "manifest.json").read_text())
    described = json.loads((bundle / "regions.json").read_text())["regions"]
    assert manifest["regions"]["labelled"] == 0 and manifest["regions"]["terms_from"] == []
    assert all(r["label"] is None and r["terms"] == [] for r in described)
    export = run_cli(project, "export", "--id", "bare", "-o", "-")
    rows = list(csv.DictReader(io.StringIO(export.stdout)))
    assert all(row["region_1"].startswith("#") for row in rows)


def test_poster_labels_the_top_regions_where_there_are_no_hotspots(project):
    from mosaic.bundle import Bundle
    from mosaic.poster.compose import _label_spots

    bundle = project / "output" / "pics"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["hotspots"] == []
    described = json.loads((bundle / "regions.json").read_text())["regions"]
    spots = _label_spots(Bundle.open(bundle))
    top = [r for r in described if r["level"] == 1]
    assert [s["label"] for s in spots] == [r["label"] for r in
                                          sorted(top, key=lambda r: -r["size"]) if r["label"]]
    assert {s["label"] for s in spots} == {"red", "green", "blue"}
    anchors = {r["anchor"] for r in top}
    assert all(s["representative"] in anchors for s in spots)
    done = run_cli(project, "poster", "--id", "pics", "--paper", "A5", "--dpi", "50",
                   "--hotspots", "-o", "labelled.png")
    assert done.returncode == 0, done.stderr
    plain = run_cli(project, "poster", "--id", "pics", "--paper", "A5", "--dpi", "50",
                    "-o", "plain.png")
    assert plain.returncode == 0, plain.stderr
    labelled, bare = (pyvips.Image.new_from_file(str(project / name)).numpy()
                      for name in ("labelled.png", "plain.png"))
    assert labelled.shape == bare.shape and (labelled != bare).any()  # the label boxes


def test_the_server_hands_out_the_regions(project):
    from server import create_app

    client = create_app({"TESTING": True}, out_dir=project / "output").test_client()
    body = client.get("/api/collections/pics").get_json()
    bundle = project / "output" / "pics"
    entry = json.loads((bundle / "manifest.json").read_text())["regions"]
    assert body["regions"]["levels"] == entry["levels"]
    listed = client.get(body["regions"]["url"])
    assert listed.status_code == 200
    assert listed.get_json() == json.loads((bundle / "regions.json").read_text())
    order = client.get(body["regions"]["order_url"])
    assert order.data == (bundle / "regions.order.i32").read_bytes()
    if (project / "output" / "plain" / "manifest.json").exists():  # --region-size 0
        assert client.get("/api/collections/plain").get_json()["regions"] is None
        missing = client.get("/collections/plain/regions.json")
        assert missing.status_code == 404 and missing.get_json()["ok"] is False
