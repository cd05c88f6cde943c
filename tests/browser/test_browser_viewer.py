"""The viewer in a real browser: Debian chromium driven by Playwright, headless.

Runs under plain ``pytest``; fails, saying what to install, where
/usr/bin/chromium or the playwright package is missing (tests/browser/conftest.py).
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from bundle_sql import col
from server_data import XSS_NAME
from viewer_page import cell_centre, overlay_alpha, view_of

pytest_plugins = ["server_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
VIEWPORT = {"width": 1280, "height": 800}
DIM_ALPHA = 190  # static/js/overlay.js


@pytest.fixture
def page(browser, live_server):
    """A fresh page; the test fails on any console error, page error or dialog."""
    context = browser.new_context(viewport=VIEWPORT, base_url=live_server)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    yield page
    context.close()
    assert problems == []


@pytest.fixture(scope="module")
def layout(server_bundle) -> dict:
    manifest = json.loads((server_bundle / "manifest.json").read_text())
    with sqlite3.connect(server_bundle / "metadata.sqlite") as conn:
        category = dict(conn.execute(f"SELECT id, {col(conn, 'category')} FROM metadata"))
        xss = conn.execute("SELECT id FROM items WHERE title = ?", (XSS_NAME,)).fetchone()[0]
    return {"grid": manifest["grid"], "tiles": manifest["tiles"], "category": category,
            "positions": np.load(server_bundle / "positions.npy"), "xss": xss}


def open_viewer(page, hash_: str = "") -> None:
    page.goto(f"/c/test{hash_}")
    page.wait_for_selector("#viewer[data-ready=true]", timeout=20_000)
    page.wait_for_selector("#viewer[data-fully-loaded=true]", timeout=20_000)
    page.wait_for_function("location.hash.includes('view=')")


def screen_brightness(page, x: float, y: float) -> float:
    import pyvips

    image = pyvips.Image.new_from_buffer(page.screenshot(), "")
    patch = image.crop(int(x) - 3, int(y) - 3, 6, 6).numpy()[..., :3]
    return float(patch.mean())


def test_collection_list_links_to_the_viewer(page):
    page.goto("/")
    link = page.locator(".collections a")
    link.wait_for()
    assert link.get_attribute("href") == "/c/test"
    assert "60 images" in link.inner_text()
    page.wait_for_function("document.querySelector('.collections img').naturalWidth > 0")
    page.screenshot(path=ARTIFACTS / "index.png")


def test_tiles_load_and_controls_render(page):
    open_viewer(page)
    assert page.locator("#viewer > .openseadragon-container").count() == 1
    assert page.locator(".navigator").count() == 1
    assert page.locator("#match-count").inner_text() == "60 items"
    assert page.locator("#facets .chip").count() == 5  # 3 categories + 2 parities
    assert page.locator("#ranges input").count() == 4  # year and weight, min and max
    assert page.locator("#hotspots button").count() == 3
    page.wait_for_function("document.querySelectorAll('#sample .strip-item').length === 24")
    page.screenshot(path=ARTIFACTS / "viewer.png")


def test_clicking_a_cell_opens_its_item_and_neighbours(page, layout, live_server):
    open_viewer(page)
    item_id = 17
    x, y = cell_centre(page, layout, item_id)
    page.mouse.move(x, y)
    tooltip = page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    page.mouse.click(x, y)
    page.wait_for_selector(f"#panel[data-id='{item_id}']:not([hidden])")
    item = json.load(urllib.request.urlopen(f"{live_server}/api/collections/test/items/{item_id}"))
    assert page.locator("#panel-title").inner_text() == item["title"]
    assert tooltip.inner_text() == item["title"]
    assert page.locator("#panel-link").get_attribute("href") == item["url"]
    assert item["metadata"]["notes"] in page.locator("#panel-metadata").inner_text()
    page.wait_for_function("document.querySelectorAll('#neighbours .strip-item').length === 20")
    shown = [int(i) for i in page.locator("#neighbours .strip-item").evaluate_all(
        "nodes => nodes.map(n => n.dataset.id)")]
    expected = json.load(urllib.request.urlopen(
        f"{live_server}/api/collections/test/items/{item_id}/neighbors?k=20"))
    assert shown == [n["id"] for n in expected["neighbors"]]
    page.wait_for_function(f"location.hash.includes('item={item_id}')")  # written debounced
    assert parse_qs(urlsplit(page.url).fragment)["item"] == [str(item_id)]
    page.screenshot(path=ARTIFACTS / "viewer-selected.png")

    nearest = shown[0]
    page.locator(f"#neighbours .strip-item[data-id='{nearest}']").click()
    page.wait_for_selector(f"#panel[data-id='{nearest}']")
    page.wait_for_function(f"location.hash.includes('item={nearest}')")


def test_facet_filter_dims_non_matching_cells(page, layout):
    open_viewer(page)
    red = next(i for i, c in layout["category"].items() if c == "red")
    blue = next(i for i, c in layout["category"].items() if c == "blue")
    red_xy, blue_xy = cell_centre(page, layout, red), cell_centre(page, layout, blue)
    blue_before = screen_brightness(page, *blue_xy)
    assert overlay_alpha(page, *blue_xy) == 0

    page.locator("#facets .chip[data-facet='category'][data-value='red']").click()
    page.wait_for_selector("#match-count[data-total='20']")
    page.wait_for_timeout(200)
    assert overlay_alpha(page, *red_xy) == 0
    assert overlay_alpha(page, *blue_xy) == DIM_ALPHA
    assert screen_brightness(page, *blue_xy) < 0.5 * blue_before
    assert page.locator("#results .strip-item").count() == 20
    assert parse_qs(urlsplit(page.url).fragment)["category"] == ["red"]
    page.screenshot(path=ARTIFACTS / "viewer-filtered.png")
    poster_url = urlsplit(page.locator("#poster-link").get_attribute("href"))
    assert poster_url.path.endswith("/poster.png")
    assert parse_qs(poster_url.query)["category"] == ["red"]  # the poster follows the filter
    poster = page.request.get(page.locator("#poster-link").evaluate("a => a.href"))
    assert poster.status == 200 and poster.headers["content-type"] == "image/png"

    page.locator("#search-clear").click()
    page.wait_for_selector("#match-count[data-total='60']")
    page.wait_for_timeout(200)
    assert overlay_alpha(page, *blue_xy) == 0


def test_keyword_and_range_filters(page):
    open_viewer(page)
    page.fill("#search-q", "sample")
    page.press("#search-q", "Enter")
    page.wait_for_selector("#match-count[data-total='59']")  # all notes but the XSS row
    page.fill("input[name='year_min']", "1990")
    page.press("input[name='year_min']", "Tab")
    page.wait_for_function("location.hash.includes('year_min=1990')")
    # the hash changes first; the count follows when the filtered search answers
    page.wait_for_function(
        "document.querySelector('#match-count').dataset.total !== '59'", timeout=30_000)
    total = int(page.locator("#match-count").get_attribute("data-total"))
    assert 0 < total < 59


def test_url_hash_round_trips(page, browser, live_server, layout):
    open_viewer(page)
    page.locator("#facets .chip[data-facet='parity'][data-value='odd']").click()
    page.wait_for_selector("#match-count[data-total='30']")
    x, y = cell_centre(page, layout, 40)
    page.mouse.click(x, y)
    page.wait_for_selector("#panel[data-id='40']")
    page.mouse.move(x, y)
    for _ in range(4):
        page.mouse.wheel(0, -120)
        page.wait_for_timeout(50)
    page.wait_for_function("location.hash.includes('item=40') && location.hash.includes('parity')")
    page.wait_for_timeout(1500)  # zoom animation, then the debounced hash write
    link = page.url
    cx, cy, zoom = view_of(page)
    assert zoom > 1.0 and (cx, cy) != (0.5, 0.5)  # home is 0.87 at (0.5, 0.5)

    context = browser.new_context(viewport=VIEWPORT, base_url=live_server)
    other = context.new_page()
    try:
        open_viewer(other, "#" + urlsplit(link).fragment)
        other.wait_for_selector("#panel[data-id='40']")
        other.wait_for_selector("#match-count[data-total='30']")
        pressed = other.locator("#facets .chip[aria-pressed='true']")
        assert pressed.count() == 1 and pressed.get_attribute("data-value") == "odd"
        other.wait_for_timeout(400)
        x2, y2, zoom2 = view_of(other)
        assert zoom2 == pytest.approx(zoom, rel=1e-3)
        assert (x2, y2) == pytest.approx((cx, cy), abs=1e-3)
        other.screenshot(path=ARTIFACTS / "viewer-from-link.png")
    finally:
        context.close()


def test_metadata_is_shown_as_text(page, layout):
    item_id = layout["xss"]
    open_viewer(page, f"#item={item_id}")
    page.wait_for_selector(f"#panel[data-id='{item_id}']:not([hidden])")
    assert page.locator("#panel-title").inner_text() == XSS_NAME
    assert page.locator("#panel script, #panel-metadata img").count() == 0
    assert "onerror" in page.locator("#panel-metadata").inner_text()


def test_hotspot_flies_to_its_representative(page, server_bundle, layout):
    manifest = json.loads((server_bundle / "manifest.json").read_text())
    open_viewer(page)
    for index, hotspot in enumerate(manifest["hotspots"]):
        button = page.locator("#hotspots button").nth(index)
        assert button.inner_text() == f"{hotspot['label']} ({hotspot['size']})"
        button.click()
        page.wait_for_selector(f"#panel[data-id='{hotspot['representative']}']")
        page.wait_for_timeout(1200)
        x, y, _zoom = view_of(page)
        size = layout["grid"]["cell_size"] / layout["tiles"]["width"]
        target = ((hotspot["col"] + 0.5) * size, (hotspot["row"] + 0.5) * size)
        assert (x, y) == pytest.approx(target, abs=0.2)  # near it, within the pan limits
