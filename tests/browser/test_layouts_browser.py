"""Layouts in the real browser: switch, keep the selection and the filter, round-trip the URL.

One collection (three colour clusters with a category and a year per image) is
built by the real CLI as a subprocess, with a relative ``--out`` and three
layouts; the server runs on a loopback port. Screenshots of each layout go to
test-artifacts/ (bench/screenshots.py retakes the README's).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from bundle_sql import col
from sample_collection import make_collection
from werkzeug.serving import make_server

from mosaic.bundle import read_manifest
from server import create_app

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
VIEWPORT = {"width": 1280, "height": 800}
LAYOUTS = ["similarity", "category:category", "date:year"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(base URL, bundle folder) of a collection with three layouts, served on loopback."""
    work = tmp_path_factory.mktemp("layouts")
    make_collection(work / "images", per_cluster=14)
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-q", "pipeline", "--images", "images",
         "--metadata", "images.csv", "--id", "lay", "--title", "{name}",
         "--cell-size", "32", "--tile-size", "128", "--perplexity", "10",
         "--layout", "category", "--layout", "date"],
        cwd=work, capture_output=True, text=True, timeout=150,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    bundle = work / "output" / "lay"
    app = create_app(out_dir=work / "output")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", bundle
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def bundle_facts(site):
    _, bundle = site
    manifest = read_manifest(bundle)  # every layout entry whole (schema-4 form)
    layouts = {entry["name"]: entry for entry in manifest["layouts"]}
    positions = {name: np.load(bundle / entry["positions"]) for name, entry in layouts.items()}
    with sqlite3.connect(bundle / "metadata.sqlite") as conn:
        category = dict(conn.execute(f"SELECT id, {col(conn, 'category')} FROM metadata"))
    return {"layouts": layouts, "positions": positions, "category": category}


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport=VIEWPORT, base_url=site[0])
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    yield page
    context.close()
    assert problems == []


def open_viewer(page, hash_: str = "") -> None:
    page.goto(f"/c/lay{hash_}")
    page.wait_for_selector("#viewer[data-ready=true]", timeout=30_000)
    page.wait_for_selector("#viewer[data-fully-loaded=true]", timeout=30_000)


def hash_params(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).fragment).items()}


def switch(page, name: str) -> None:
    page.select_option("#layout-select", name)
    page.wait_for_selector(f"#viewer[data-layout='{name}'][data-fully-loaded=true]",
                           timeout=30_000)
    page.wait_for_function(  # the hash names the layout (the first one by its absence)
        "name => (new URLSearchParams(location.hash.slice(1)).get('layout') ?? 'similarity')"
        " === name", arg=name)


def view_centre_cell(page, facts, name: str) -> tuple[float, float]:
    """The (row, col) at the centre of the view, from the view in the URL hash."""
    page.wait_for_timeout(400)  # the hash is written 150 ms after the animation ends
    x, y, _ = (float(v) for v in hash_params(page)["view"].split(","))
    entry = facts["layouts"][name]
    width = entry["tiles"]["width"]
    cell = entry["grid"]["cell_size"]
    return y * width / cell, x * width / cell


def test_the_switch_lists_every_layout_and_shows_labels(page, bundle_facts):
    open_viewer(page)
    options = page.eval_on_selector_all("#layout-select option", "els => els.map(e => e.value)")
    assert options == LAYOUTS
    page.screenshot(path=str(ARTIFACTS / "layout-similarity.png"))
    switch(page, "category:category")
    labels = page.eval_on_selector_all(".layout-label", "els => els.map(e => e.textContent)")
    assert sorted(labels) == ["blue", "green", "red"]
    page.screenshot(path=str(ARTIFACTS / "layout-category.png"))
    switch(page, "date:year")
    labels = page.eval_on_selector_all(  # (x on screen, text), left to right
        ".layout-label", "els => els.map(e => [e.getBoundingClientRect().left, e.textContent])")
    texts = [text for _, text in sorted(labels)]
    assert len(texts) >= 2 and texts == sorted(texts)  # years (or buckets) in order
    page.screenshot(path=str(ARTIFACTS / "layout-date.png"))


def test_switching_keeps_selection_and_filter_and_flies_to_the_item(page, bundle_facts):
    open_viewer(page, "#category=green")
    page.wait_for_function("document.getElementById('match-count').dataset.total === '14'")
    green = sorted(i for i, c in bundle_facts["category"].items() if c == "green")
    item = green[5]
    page.evaluate(f"location.hash = location.hash + '&item={item}'")
    page.wait_for_selector(f"#viewer[data-selected='{item}']")
    for name in ("category:category", "date:year", "similarity"):
        switch(page, name)
        assert page.get_attribute("#viewer", "data-selected") == str(item)
        assert page.locator("#match-count").get_attribute("data-total") == "14"
        assert not page.locator("#panel").is_hidden()
        params = hash_params(page)
        assert params.get("category") == "green" and params.get("item") == str(item)
        assert params.get("layout", "similarity") == name
        if name != "similarity":  # the view flew to the item's cell in this layout
            row, col = bundle_facts["positions"][name][item]
            centre_row, centre_col = view_centre_cell(page, bundle_facts, name)
            assert abs(centre_row - (row + 0.5)) < 1 and abs(centre_col - (col + 0.5)) < 1


def test_the_url_state_round_trips_the_layout(page, browser, site, bundle_facts):
    open_viewer(page)
    switch(page, "category:category")
    page.evaluate("location.hash = location.hash + '&item=3&q=blue'")
    page.wait_for_selector("#viewer[data-selected='3']")
    page.wait_for_timeout(400)
    url = page.url
    assert hash_params(page)["layout"] == "category:category"
    other = browser.new_context(viewport=VIEWPORT).new_page()
    other.goto(url)
    other.wait_for_selector("#viewer[data-ready=true]", timeout=30_000)
    other.wait_for_selector("#viewer[data-layout='category:category'][data-fully-loaded=true]",
                            timeout=30_000)
    assert other.input_value("#layout-select") == "category:category"
    assert other.get_attribute("#viewer", "data-selected") == "3"
    assert other.input_value("#search-q") == "blue"
    other.context.close()
