"""Search by meaning in the real browser (issue 20, part 2): the "by meaning" box.

The viewer shows the box only for a collection with a ``clip`` embedding. Ticked, the
words typed go to ``search?mode=meaning`` (the server's text tower) and the results
strip lists the items nearest in meaning; a caption of the tiny CLIP trained in the
test suite (tests/tiny_clip.py, via tests/conftest.py's ``clip_work``) finds its own
pictures. The negative controls: the same words as a keyword search find nothing (the
titles are file names), and a collection without ``clip`` has no box. Debian chromium
through Playwright (tests/browser/conftest.py).
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from server_fixtures import serving
from viewer_page import watch

pytest_plugins = ["server_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

VIEWPORT = {"width": 1280, "height": 800}
CAPTION = "a red circle"


def open_page(browser, base: str, url: str, problems: list[str]):
    context = browser.new_context(viewport=VIEWPORT, base_url=base)
    page = context.new_page()
    watch(page, problems)
    page.goto(url)
    page.wait_for_selector("#viewer[data-fully-loaded=true]", timeout=30_000)
    return context, page


def results(page) -> list[int]:
    return page.locator("#results .strip-item").evaluate_all(
        "nodes => nodes.map(n => Number(n.dataset.id))")


def search_by_meaning(browser, base: str, cid: str, problems: list[str]) -> list[str]:
    """The file names of the first 10 results of the caption, searched by meaning in
    the viewer of collection ``cid``."""
    context, page = open_page(browser, base, f"/c/{cid}", problems)
    try:
        assert page.locator("#search-meaning-box").is_visible()
        page.check("#search-meaning")
        page.fill("#search-q", CAPTION)
        page.press("#search-q", "Enter")
        page.wait_for_function(
            "document.getElementById('match-count').textContent.includes('in meaning')")
        page.wait_for_function("location.href.includes('mode=meaning')")
        found = results(page)
        assert len(found) >= 10
        names = []
        for item in found[:10]:
            with urllib.request.urlopen(f"{base}/api/collections/{cid}/items/{item}") as r:
                names.append(json.load(r)["filename"])
        return names
    finally:
        context.close()


def test_by_meaning_finds_the_caption(browser, clip_work):
    """The trained model finds the caption's pictures; the same architecture with
    random weights (the ``control`` bundle, the negative control) does not."""
    problems: list[str] = []
    with serving(clip_work / "output") as base:
        trained = search_by_meaning(browser, base, "shapes", problems)
        control = search_by_meaning(browser, base, "control", problems)
    assert sum("red-circle" in name for name in trained) >= 9, trained
    assert sum("red-circle" in name for name in control) < 5, control
    assert problems == []


def test_no_clip_no_box(browser, server_bundle, live_server):
    problems: list[str] = []
    context, page = open_page(browser, live_server, "/c/test", problems)
    try:
        assert page.locator("#search-meaning-box").is_hidden()
    finally:
        context.close()
    assert problems == []
