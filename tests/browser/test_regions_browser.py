"""Region labels on the map in the real browser (static/js/regions.js).

One 120-item collection (three colour clusters, a category column) built with small
regions (--region-size 5: 12 at the top, split below), served by the app and
published as a static site. Zoomed out the map shows level 1; zoomed in, a finer
level; the shown labels are the regions' own (regions.json), never overlap, and sit
over their region's anchor cell. A click selects the region's items (exactly
regions.order.i32's run for it) ANDed with a facet filter, and round-trips through
the URL (sel=r<id>); the toggle hides them (labels=off). Debian chromium through
Playwright (tests/browser/conftest.py).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import test_selection_browser as selection_test
from bundle_sql import col
from sample_collection import make_collection
from test_selection_browser import new_page, open_map, selection

from mosaic.cli.main import main as mosaic_main

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
CID = "regions"
SHOWN = ".region-label:not([hidden])"
# The app on a loopback port serving this module's `bundle`, and a page of it that
# fails the test on a console error: the selection tests' fixtures.
live = selection_test.live
page = selection_test.page
site = selection_test.site  # the bundle published under a prefix, on http.server


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("regions")
    csv_path = make_collection(work / "images", per_cluster=40)
    code = mosaic_main([
        "-q", "pipeline", "--images", str(work / "images"), "--metadata", str(csv_path),
        "--out", str(work / "out"), "--id", CID, "--title", "{name}", "--cell-size", "32",
        "--tile-size", "128", "--perplexity", "10", "--jobs", "2", "--embedding", "raw",
        "--region-size", "5"])
    assert code == 0
    return work / "out" / CID


@pytest.fixture(scope="module")
def facts(bundle) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["regions"]
    return {"regions": json.loads((bundle / entry["path"]).read_text())["regions"],
            "order": np.fromfile(bundle / entry["order"], dtype="<i4"),
            "levels": entry["levels"], "grid": manifest["grid"], "tiles": manifest["tiles"],
            "category": _categories(bundle)}


def _categories(bundle: Path) -> dict[int, str]:
    with sqlite3.connect(bundle / "metadata.sqlite") as conn:
        return dict(conn.execute(f"SELECT id, {col(conn, 'category')} FROM metadata"))


def shown(page, level_min: int = 1) -> list[dict]:
    """The labels on screen once drawn at a level: region id, level, text and box."""
    page.wait_for_function(f"Number(document.querySelector('#viewer').dataset.regionLevel)"
                           f" >= {level_min}")
    page.wait_for_timeout(100)
    return page.locator(SHOWN).evaluate_all("""nodes => nodes.map(n => {
        const b = n.getBoundingClientRect();
        return {id: Number(n.dataset.region), text: n.textContent,
                box: [b.left, b.top, b.right, b.bottom]};
    })""")


def level_shown(page) -> int:
    return int(page.get_attribute("#viewer", "data-region-level"))


def go(page, url: str, view: str) -> None:
    open_map(page, f"{url}#view={view}")


def assert_apart(labels: list[dict]) -> None:
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            ax0, ay0, ax1, ay1 = a["box"]
            bx0, by0, bx1, by1 = b["box"]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, (a, b)


def test_labels_follow_the_zoom_and_never_overlap(page, facts):
    regions = facts["regions"]
    go(page, f"/c/{CID}", "0.5,0.5,0.7")
    coarse = shown(page)
    assert level_shown(page) == 1 and len(coarse) >= 3
    assert_apart(coarse)
    for label in coarse:
        region = regions[label["id"]]
        assert label["text"] == region["label"] and region["levels"][0] == 1
    # zoomed in on the finest level's region nearest the map's centre (where regions fall
    # depends on the layout): a finer level, other regions, still apart
    size = facts["grid"]["cell_size"] / facts["tiles"]["width"]
    finest = len(facts["levels"])
    centre = (facts["grid"]["n_rows"] / 2, facts["grid"]["n_cols"] / 2)
    target = min((r for r in regions if r["levels"][0] <= finest <= r["levels"][1]),
                 key=lambda r: (r["row"] - centre[0]) ** 2 + (r["col"] - centre[1]) ** 2)
    view_x = (target["col"] + 0.5) * size
    page.evaluate(f"location.hash = 'view={view_x},{(target['row'] + 0.5) * size},4'")
    page.wait_for_function("document.querySelector('#viewer').dataset.regionLevel > 1")
    fine = shown(page, 2)
    at = level_shown(page)
    assert at == len(facts["levels"]) and fine
    assert_apart(fine)
    for label in fine:
        first, last = regions[label["id"]]["levels"]
        assert first <= at <= last and label["text"] == regions[label["id"]]["label"]
    assert {label["id"] for label in fine} != {label["id"] for label in coarse}
    # each label sits on its region's anchor cell
    box = page.locator("#viewer").bounding_box()
    _, _, zoom = (float(v) for v in parse_qs(urlsplit(page.url).fragment)["view"][0].split(","))
    assert target["id"] in {label["id"] for label in fine}
    for label in fine:
        region = regions[label["id"]]
        offset = (region["col"] + 0.5) * size - view_x
        x = box["x"] + box["width"] / 2 + offset * box["width"] * zoom
        x0, _, x1, _ = label["box"]
        assert abs((x0 + x1) / 2 - x) <= 1.5


def test_a_click_selects_the_region_and_ands_the_filter(page, facts):
    go(page, f"/c/{CID}", "0.5,0.5,0.7")
    label = shown(page)[0]
    region = facts["regions"][label["id"]]
    page.locator(f".region-label[data-region='{label['id']}']").click()
    total, strip = selection(page)
    members = sorted(facts["order"][region["start"]:region["end"]].tolist())
    assert total == region["size"] == len(members) and strip == members[:len(strip)]
    assert region["label"] in page.inner_text("#selection-count")
    page.wait_for_function(f"location.hash.includes('sel=r{label['id']}')")
    # the URL reproduces it, with a facet filter ANDed
    other = next(c for c in ("red", "green", "blue") if c != region["label"])
    url = page.url.split("#")[0] + f"#sel=r{label['id']}&category={other}&view=0.5,0.5,0.7"
    page.goto("about:blank")
    open_map(page, url)
    page.wait_for_selector("#selection-count[data-total]", state="attached")
    expected = [i for i in members if facts["category"][i] == other]
    assert int(page.get_attribute("#selection-count", "data-total")) == len(expected)


def test_the_toggle_hides_the_labels_and_the_url_keeps_it(page):
    go(page, f"/c/{CID}", "0.5,0.5,0.7")
    assert shown(page)
    page.click("#regions-toggle")
    page.wait_for_function("location.hash.includes('labels=off')")
    page.wait_for_selector(".region-labels", state="hidden")
    assert page.get_attribute("#regions-toggle", "aria-pressed") == "false"
    url = page.url
    page.goto("about:blank")
    open_map(page, url)
    assert page.locator(".region-labels").is_hidden()
    page.click("#regions-toggle")
    assert shown(page)


def test_the_published_site_shows_and_selects_regions(browser, site, facts):
    page, problems = new_page(browser, static_root=site)
    go(page, site, "0.5,0.5,0.7")
    labels = shown(page)
    assert labels and level_shown(page) == 1
    assert_apart(labels)
    region = facts["regions"][labels[0]["id"]]
    page.locator(f".region-label[data-region='{region['id']}']").click()
    total, _ = selection(page)
    assert total == region["size"]
    page.context.close()
    assert problems == []
