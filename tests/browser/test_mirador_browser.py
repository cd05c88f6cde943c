"""Mirador, the IIIF community's viewer, opens our IIIF Presentation manifest.

The server's ``/iiif/<cid>/manifest.json`` (built with iiif-prezi3) is loaded
into Mirador (npm ``mirador``, pinned, served by ``/mirador``) in Chromium; the
test passes when Mirador shows the map's canvas with its label and draws it
from our level-0 image service: tiles requested under ``/iiif/<cid>/map/`` and
answered 200, and no console error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["server_fixtures"]
# Mirador 4.0.0's own bundle logs this React 19 deprecation on every start; any other
# console error fails the test.
MIRADOR_OWN_WARNING = "Accessing element.ref was removed in React 19"
pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


def test_mirador_opens_the_manifest_and_draws_the_map(browser, live_server, server_bundle):
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    tiles: list[tuple[str, int]] = []
    page.on("response", lambda r: tiles.append((r.url, r.status))
            if "/iiif/test/map/" in r.url and r.url.endswith(".jpg") else None)
    manifest = f"{live_server}/iiif/test/manifest.json"
    page.goto(f"{live_server}/mirador?manifest={manifest}")
    page.wait_for_selector(".mirador-viewer .openseadragon-canvas canvas", timeout=60_000)
    page.wait_for_function("() => document.querySelectorAll('.mirador-window').length === 1")
    page.wait_for_timeout(1500)  # let OpenSeadragon fetch the visible tiles
    page.screenshot(path=str(Path(__file__).resolve().parents[2] / "test-artifacts" /
                             "mirador.png"))
    assert tiles and all(status == 200 for _, status in tiles), tiles
    assert page.inner_text(".mirador-window-top-bar").strip() == "test"  # the manifest's label
    assert [p for p in problems if not p.startswith(MIRADOR_OWN_WARNING)] == []
    page.context.close()
