"""A published static site in a real browser, served by ``python -m http.server``.

The site is written by the real CLI (``run.py publish``, relative paths) from the
server tests' bundle into ``www/sub/site``; ``http.server`` serves ``www``, so
the site lives under a URL prefix (``/sub/site/``). The same bundle is served by
the Flask app too, so the static site's answers are checked against the API's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from static_host import static_host
from viewer_page import cell_centre, overlay_alpha, view_of, watch

pytest_plugins = ["server_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
VIEWPORT = {"width": 1280, "height": 800}
DIM_ALPHA = 190  # static/js/overlay.js


@pytest.fixture(scope="module")
def site(server_bundle):
    """Base URL of the published site under a prefix, served by http.server."""
    work = server_bundle.parent.parent
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-q", "publish", "--out", "out", "--id", "test",
         "--to", "www/sub/site"],
        cwd=work, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    with static_host(work / "www", "sub/site/") as root:
        yield root + "sub/site/"


@pytest.fixture
def page(browser, site):
    """A fresh page that fails the test on a console error or a request to /api."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    problems: list[str] = []
    watch(page, problems, site, deny_api=True)
    yield page
    context.close()
    assert problems == []


@pytest.fixture(scope="module")
def layout(server_bundle) -> dict:
    manifest = json.loads((server_bundle / "manifest.json").read_text())
    return {"grid": manifest["grid"], "tiles": manifest["tiles"],
            "positions": np.load(server_bundle / "positions.npy")}


def api(live_server: str, path: str) -> dict:
    return json.load(urllib.request.urlopen(f"{live_server}/api/collections/test{path}"))


def open_site(page, site: str, hash_: str = "") -> None:
    page.goto(site + hash_)
    page.wait_for_selector("#viewer[data-ready=true]", timeout=20_000)
    page.wait_for_selector("#viewer[data-fully-loaded=true]", timeout=20_000)
    page.wait_for_function("location.hash.includes('view=')")


def test_tiles_paint_and_a_click_opens_the_item(page, site, layout, live_server):
    open_site(page, site)
    assert page.locator("#poster-link").locator("xpath=..").is_hidden()  # posters need a server
    item_id = 17
    x, y = cell_centre(page, layout, item_id)
    page.mouse.move(x, y)
    page.locator("#tooltip").wait_for(state="visible")
    page.mouse.click(x, y)
    page.wait_for_selector(f"#panel[data-id='{item_id}']:not([hidden])")
    item = api(live_server, f"/items/{item_id}")
    assert page.locator("#panel-title").inner_text() == item["title"]
    assert page.locator("#tooltip").inner_text() == item["title"]
    assert item["metadata"]["notes"] in page.locator("#panel-metadata").inner_text()
    page.wait_for_function("document.querySelector('#panel-thumb').naturalWidth > 0")
    # Neighbours: the server's for the same bundle (exact search on both sides).
    page.wait_for_function("document.querySelectorAll('#neighbours .strip-item').length === 20")
    shown = [int(i) for i in page.locator("#neighbours .strip-item").evaluate_all(
        "nodes => nodes.map(n => n.dataset.id)")]
    expected = api(live_server, f"/items/{item_id}/neighbors?k=20")["neighbors"]
    assert shown == [n["id"] for n in expected]
    page.screenshot(path=ARTIFACTS / "publish-selected.png")
    # A painted tile: the canvas is not blank where the item is.
    painted = page.evaluate("""([x, y]) => {
        const canvas = document.querySelector(".openseadragon-canvas canvas");
        const box = canvas.getBoundingClientRect();
        const r = canvas.width / box.width;
        return Array.from(canvas.getContext("2d").getImageData(
            Math.floor((x - box.left) * r), Math.floor((y - box.top) * r), 1, 1).data);
    }""", [x, y])
    assert painted[3] == 255 and painted[:3] != [0, 0, 0]


def test_keyword_and_facet_dim_the_right_cells(page, site, layout, live_server):
    open_site(page, site)
    page.fill("#search-q", "red")
    page.press("#search-q", "Enter")
    expected = api(live_server, "/search?q=red&ids=all&limit=0")
    page.wait_for_selector(f"#match-count[data-total='{expected['total']}']")
    page.wait_for_timeout(300)
    matching = set(expected["ids"])
    inside = next(iter(matching))
    outside = next(i for i in range(len(layout["positions"])) if i not in matching)
    assert overlay_alpha(page, *cell_centre(page, layout, inside)) == 0
    assert overlay_alpha(page, *cell_centre(page, layout, outside)) == DIM_ALPHA

    page.locator("#search-clear").click()
    page.locator("#facets .chip[data-facet='category'][data-value='blue']").click()
    expected = api(live_server, "/search?category=blue&ids=all&limit=0")
    page.wait_for_selector(f"#match-count[data-total='{expected['total']}']")
    page.wait_for_timeout(300)
    blue = set(expected["ids"])
    assert overlay_alpha(page, *cell_centre(page, layout, next(iter(blue)))) == 0
    other = next(i for i in range(len(layout["positions"])) if i not in blue)
    assert overlay_alpha(page, *cell_centre(page, layout, other)) == DIM_ALPHA
    shown = page.locator("#results .strip-item").evaluate_all(
        "nodes => nodes.map(n => Number(n.dataset.id))")
    assert shown == expected["ids"][:len(shown)] and shown
    assert parse_qs(urlsplit(page.url).fragment)["category"] == ["blue"]
    # The CSV export of the selection, built in the browser.
    with page.expect_download() as download:
        page.locator("#export-link").click()
    lines = Path(download.value.path()).read_text().strip().splitlines()
    assert lines[0].startswith("id,row,col,x,y,title,url,filename,meta.")
    assert sorted(int(line.split(",")[0]) for line in lines[1:]) == sorted(blue)


def test_url_state_round_trips(page, browser, site, layout):
    open_site(page, site, "#item=5&category=green&year_min=1960")
    page.wait_for_selector("#panel[data-id='5']:not([hidden])")
    page.wait_for_function("Number(document.querySelector('#match-count').dataset.total) > 0")
    page.wait_for_function("location.hash.includes('view=')")
    hash_ = urlsplit(page.url).fragment
    again = browser.new_context(viewport=VIEWPORT).new_page()
    open_site(again, site, "#" + hash_)
    again.wait_for_selector("#panel[data-id='5']:not([hidden])")
    assert again.locator("#match-count").get_attribute("data-total") == \
        page.locator("#match-count").get_attribute("data-total")
    assert np.allclose(view_of(again), view_of(page), rtol=1e-3)
    assert again.locator("#search-q").input_value() == ""
    again.context.close()


def test_random_sample_and_hotspots(page, site):
    open_site(page, site)
    page.wait_for_function("document.querySelectorAll('#sample .strip-item').length === 24")
    first = page.locator("#sample").get_attribute("data-seed")
    page.click("#sample-button")
    page.wait_for_function(f"document.querySelector('#sample').dataset.seed !== '{first}'")
    if page.locator("#hotspots button").count():
        page.locator("#hotspots button").first.click()
        page.wait_for_selector("#panel:not([hidden])")


@pytest.fixture(scope="module")
def layouts_site(tmp_path_factory):
    """A collection with a category layout, published and served under a prefix."""
    from sample_collection import make_collection

    work = tmp_path_factory.mktemp("publish-layouts")
    make_collection(work / "images", per_cluster=8)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in (["pipeline", "--images", "images", "--metadata", "images.csv", "--id", "lay",
                  "--title", "{name}", "--cell-size", "32", "--tile-size", "128",
                  "--perplexity", "5", "--layout", "category"],
                 ["publish", "--id", "lay", "--to", "www/maps/lay"]):
        done = subprocess.run([sys.executable, str(ROOT / "run.py"), "-q", *args], cwd=work,
                              capture_output=True, text=True, timeout=200, env=env)
        assert done.returncode == 0, done.stderr
    with static_host(work / "www", "maps/lay/") as root:
        yield root + "maps/lay/"


def test_every_layout_is_published(browser, layouts_site):
    page = browser.new_context(viewport=VIEWPORT).new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    open_site(page, layouts_site)
    assert page.locator("#layout-box").is_visible()
    page.select_option("#layout-select", "category:category")
    page.wait_for_selector("#viewer[data-layout='category:category']")
    page.wait_for_selector("#viewer[data-fully-loaded=true]", timeout=20_000)
    assert any("/data/layouts/category-category/grid.i32" in url for url in requested)
    assert page.locator(".layout-label").count() > 0
    page.wait_for_function("location.hash.includes('layout=category')")
    page.screenshot(path=ARTIFACTS / "publish-layout.png")
    page.context.close()
    assert problems == []
