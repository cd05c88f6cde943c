"""``make demo`` in a real browser: the Makefile's recipe run for real (the shared
``demo_server`` fixture of tests/user_path_demo_helpers.py), then the viewer at
/c/digits in Debian chromium (Playwright, headless, never a downloaded browser).

The bug this guards against: the map stayed black with "Error: grid: 404 NOT FOUND"
because the server could not find the files of a bundle under a relative --out.
Skipped (with the reason) only where /usr/bin/chromium or playwright is missing.
Screenshots go to test-artifacts/user-path-demo-map.png (the map as it opened) and
user-path-demo.png (an item selected).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from user_path_helpers import http_get

pytest_plugins = ["user_path_demo_helpers"]
pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
VIEWPORT = {"width": 1280, "height": 800}


def cell_centre(page, manifest: dict, row: int, col: int) -> tuple[float, float]:
    """Where cell (row, col) is on screen, from the view the page wrote to its hash."""
    cx, cy, zoom = (float(v) for v in
                    parse_qs(urlsplit(page.url).fragment)["view"][0].split(","))
    box = page.locator("#viewer").bounding_box()
    scale = box["width"] * zoom  # screen pixels per viewport unit (image width = 1)
    size = manifest["grid"]["cell_size"] / manifest["tiles"]["width"]
    vx, vy = (col + 0.5) * size, (row + 0.5) * size
    return (box["x"] + box["width"] / 2 + (vx - cx) * scale,
            box["y"] + box["height"] / 2 + (vy - cy) * scale)


def map_patch(page, x: float, y: float, half: int = 80) -> np.ndarray:
    """RGB pixels of the screen around (x, y)."""
    import pyvips

    image = pyvips.Image.new_from_buffer(page.screenshot(), "")
    return image.crop(int(x) - half, int(y) - half, 2 * half, 2 * half).numpy()[..., :3]


def test_make_demo_viewer_paints_the_map_and_opens_an_item(browser, demo_server):
    base = demo_server.server.base
    manifest = json.loads((demo_server.bundle / "manifest.json").read_text())
    grid = np.fromfile(demo_server.bundle / manifest["files"]["grid"], dtype="<i4").reshape(
        manifest["grid"]["n_rows"], manifest["grid"]["n_cols"])

    context = browser.new_context(viewport=VIEWPORT, base_url=base)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}")
            if r.status >= 400 else None)
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    try:
        page.goto("/c/digits")
        try:
            page.wait_for_selector("#viewer[data-ready=true]", timeout=30_000)
            page.wait_for_selector("#viewer[data-fully-loaded=true]", timeout=30_000)
            page.wait_for_function("location.hash.includes('view=')", timeout=10_000)
        except Exception as error:
            page.screenshot(path=ARTIFACTS / "user-path-demo.png")
            status = page.locator("#match-count").inner_text()
            raise AssertionError(f"the viewer did not open the demo map: {status!r}; "
                                 f"{problems}") from error
        assert page.locator("#match-count").get_attribute("data-total") == "1797"

        page.screenshot(path=ARTIFACTS / "user-path-demo-map.png")

        # The tiles painted: the middle of the map is digits (mostly white paper with
        # dark strokes), not the uniform black background of an unloaded map.
        box = page.locator("#viewer").bounding_box()
        patch = map_patch(page, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        grey = patch.mean(axis=2)
        light, dark = (grey > 200).mean(), (grey < 100).mean()
        assert light > 0.3 and 0.005 < dark < 0.5 and grey.std() > 30, (
            f"the map is not painted: {light:.0%} light, {dark:.0%} dark, std {grey.std():.0f}")

        # A click on a cell in the middle opens that item's panel, with its record.
        row, col = grid.shape[0] // 2, grid.shape[1] // 2
        while grid[row, col] < 0:
            col -= 1
        item_id = int(grid[row, col])
        page.mouse.click(*cell_centre(page, manifest, row, col))
        page.wait_for_selector(f"#panel[data-id='{item_id}']:not([hidden])", timeout=10_000)
        item = http_get(f"{base}/api/collections/digits/items/{item_id}").json()
        assert page.locator("#panel-title").inner_text() == item["title"]
        assert item["title"].startswith("Digit ")
        page.wait_for_function("document.querySelectorAll('#neighbours .strip-item').length > 0"
                               " && [...document.querySelectorAll('#neighbours img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=ARTIFACTS / "user-path-demo.png")
    finally:
        context.close()
    assert problems == []
