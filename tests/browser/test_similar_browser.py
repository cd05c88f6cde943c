"""Query by example in the real browser: "Find similar…" and a file dropped on the map.

The viewer served by the app uploads the file to ``POST …/similar``: the strip shows
the server's answer (an item's own source image finds that item first), the cells
are outlined on the map and the view flies to the best match; the server's error
shows in the panel. A published static site has no server: the browser answers from
the site's index and nothing asks /api. Debian chromium through Playwright
(tests/browser/conftest.py).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from static_host import static_host
from viewer_page import cell_centre, view_of
from werkzeug.serving import make_server

from server import create_app

pytest_plugins = ["server_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
VIEWPORT = {"width": 1280, "height": 800}
K = 20  # static/js/similar.js
FOUND = (255, 61, 242)  # static/js/overlay.js, the outline of a found item
ITEM = 41


@pytest.fixture(scope="module")
def layout(server_bundle) -> dict:
    manifest = json.loads((server_bundle / "manifest.json").read_text())
    return {"grid": manifest["grid"], "tiles": manifest["tiles"],
            "positions": np.load(server_bundle / "positions.npy")}


def api(live_server: str, path: str) -> dict:
    return json.load(urllib.request.urlopen(f"{live_server}/api/collections/test{path}"))


def source_image(server_bundle: Path, live_server: str, item_id: int) -> Path:
    """The collection's own file of an item (server_fixtures writes them to images/)."""
    filename = api(live_server, f"/items/{item_id}")["filename"]
    path = server_bundle.parent.parent / "images" / filename
    assert path.is_file()
    return path


NETWORK_ERROR = "Failed to load resource: the server responded with a status of {} "


def watch(page, problems: list[str], requests: list[str], answered: list[int]) -> None:
    """Console errors, page errors and dialogs go to ``problems``, but the browser's own
    log line of a response with a status in ``answered`` (an error the test asks for)."""
    def console(message) -> None:
        if message.type == "error" and not any(
                message.text.startswith(NETWORK_ERROR.format(status)) for status in answered):
            problems.append(f"console: {message.text}")

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("request", lambda r: requests.append(f"{r.method} {urlsplit(r.url).path}"))


@pytest.fixture
def page(browser, live_server):
    """A fresh page on the app; the test fails on a console error, page error or dialog
    (a status in ``page.answered`` is an error response the test asks for).
    ``page.requests`` lists every request as "METHOD path"."""
    context = browser.new_context(viewport=VIEWPORT, base_url=live_server)
    page = context.new_page()
    problems: list[str] = []
    page.requests, page.answered = [], []
    watch(page, problems, page.requests, page.answered)
    yield page
    context.close()
    assert problems == []


def open_viewer(page, url: str = "/c/test") -> None:
    page.goto(url)
    page.wait_for_selector("#viewer[data-ready=true]", timeout=20_000)
    page.wait_for_selector("#viewer[data-fully-loaded=true]", timeout=20_000)
    page.wait_for_function("location.hash.includes('view=')")


def strip_ids(page) -> list[int]:
    return page.locator("#similar .strip-item").evaluate_all(
        "nodes => nodes.map(n => Number(n.dataset.id))")


def wait_for_flight(page, before: tuple[float, float, float]) -> tuple[float, float, float]:
    """The view once the fly-to has ended and the hash has been rewritten."""
    page.wait_for_function("""(before) => {
        const view = new URLSearchParams(location.hash.slice(1)).get("view") || "";
        const now = view.split(",").map(Number);
        return now.length === 3 && now.some((v, i) => Math.abs(v - before[i]) > 1e-6);
    }""", arg=list(before))
    page.wait_for_timeout(1200)  # the rest of the animation, then the debounced hash write
    return view_of(page)


def cell_in_viewport(layout, item_id: int) -> tuple[float, float]:
    """The centre of an item's cell in OpenSeadragon's viewport coordinates (width 1)."""
    row, col = layout["positions"][item_id]
    size = layout["grid"]["cell_size"] / layout["tiles"]["width"]
    return (col + 0.5) * size, (row + 0.5) * size


def outline_at(page, layout, item_id: int) -> bool:
    """Whether the found-item outline crosses the left edge of the item's cell."""
    x, y = cell_centre(page, layout, item_id)
    _, _, zoom = view_of(page)
    box = page.locator("#viewer").bounding_box()
    size = max(box["width"] * zoom * layout["grid"]["cell_size"] / layout["tiles"]["width"], 8)
    pixels = page.evaluate("""([x, y]) => {
        const canvas = document.querySelector("canvas.mosaic-overlay");
        const box = canvas.getBoundingClientRect();
        const r = canvas.width / box.width;
        const data = canvas.getContext("2d").getImageData(
            Math.floor((x - 4 - box.left) * r), Math.floor((y - box.top) * r), 9, 1).data;
        return Array.from(data);
    }""", [x - size / 2, y])
    return any(tuple(pixels[i:i + 3]) == FOUND and pixels[i + 3] == 255
               for i in range(0, len(pixels), 4))


def expected_neighbours(page, image: Path) -> list[int]:
    response = page.request.post("/api/collections/test/similar", multipart={
        "image": {"name": image.name, "mimeType": "image/png", "buffer": image.read_bytes()},
        "k": str(K)})
    assert response.ok, response.text()
    return [n["id"] for n in response.json()["neighbors"]]


def test_an_items_own_file_finds_it_and_the_view_flies_there(page, layout, live_server,
                                                             server_bundle):
    open_viewer(page)
    assert page.locator("#similar-section").is_visible()
    image = source_image(server_bundle, live_server, ITEM)
    title = api(live_server, f"/items/{ITEM}")["title"]
    before = view_of(page)

    page.set_input_files("#similar-file", str(image))
    page.wait_for_function(f"document.querySelectorAll('#similar .strip-item').length === {K}")
    shown = strip_ids(page)
    assert shown[0] == ITEM
    assert shown == expected_neighbours(page, image)  # the server's order, nearest first
    first = page.locator("#similar .strip-item").first
    assert first.get_attribute("title") == f"{title} (distance 0.000)"
    assert page.locator("#similar-status").get_attribute("data-state") == "done"
    assert page.locator("#similar-status").inner_text() == f"{K} nearest to {image.name} by raw"
    assert page.requests.count("POST /api/collections/test/similar") == 1

    after = wait_for_flight(page, before)
    target = cell_in_viewport(layout, ITEM)
    assert after[2] >= before[2]  # zoomed in on it (as far as 7 x 7 cells, this small map)
    assert np.hypot(*np.subtract(after[:2], target)) < np.hypot(*np.subtract(before[:2], target))
    x, y = cell_centre(page, layout, ITEM)
    box = page.locator("#viewer").bounding_box()
    assert box["x"] < x < box["x"] + box["width"] and box["y"] < y < box["y"] + box["height"]
    assert (x, y) == pytest.approx((box["x"] + box["width"] / 2, box["y"] + box["height"] / 2),
                                   abs=0.25 * box["height"])  # in the middle, within pan limits
    assert outline_at(page, layout, ITEM)
    assert page.locator("#panel").is_hidden()  # a query selects nothing by itself
    page.screenshot(path=ARTIFACTS / "viewer-similar.png")

    # A result opens its item; Esc clears the results and their outlines.
    page.locator(f"#similar .strip-item[data-id='{shown[1]}']").click()
    page.wait_for_selector(f"#panel[data-id='{shown[1]}']:not([hidden])")
    page.keyboard.press("Escape")
    page.wait_for_function("document.querySelectorAll('#similar .strip-item').length === 0")
    assert page.locator("#similar-status").inner_text() == ""
    assert page.locator("#similar-clear").is_hidden()
    page.wait_for_timeout(200)
    assert not outline_at(page, layout, ITEM)


def test_a_file_dropped_on_the_map_is_asked(page, layout, live_server, server_bundle):
    open_viewer(page)
    item_id = 8
    image = source_image(server_bundle, live_server, item_id)
    before = view_of(page)
    drop_file(page, image.name, "image/png", image.read_bytes())
    page.wait_for_function(f"document.querySelectorAll('#similar .strip-item').length === {K}")
    assert strip_ids(page)[0] == item_id
    wait_for_flight(page, before)
    assert outline_at(page, layout, item_id)
    assert not page.locator("#viewer").evaluate("e => e.classList.contains('drop-target')")
    page.locator("#similar-clear").click()
    page.wait_for_function("document.querySelectorAll('#similar .strip-item').length === 0")


def drop_file(page, name: str, mime: str, data: bytes) -> bool:
    """Drag a file over the map and drop it, as a file manager does; returns whether
    the page took the drag (called preventDefault on dragover)."""
    return page.evaluate("""([name, mime, data]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: mime }));
        const map = document.querySelector("#viewer .openseadragon-canvas");
        const box = map.getBoundingClientRect();
        const at = { bubbles: true, cancelable: true, dataTransfer: transfer,
                     clientX: box.left + box.width / 2, clientY: box.top + box.height / 2 };
        map.dispatchEvent(new DragEvent("dragenter", at));
        const over = new DragEvent("dragover", at);
        map.dispatchEvent(over);
        map.dispatchEvent(new DragEvent("drop", at));
        return over.defaultPrevented;
    }""", [name, mime, base64.b64encode(data).decode()])


def test_a_text_file_shows_the_servers_error_and_no_strip(page, layout, live_server,
                                                          server_bundle):
    page.answered.append(400)
    open_viewer(page)
    image = source_image(server_bundle, live_server, ITEM)
    page.set_input_files("#similar-file", str(image))
    page.wait_for_function(f"document.querySelectorAll('#similar .strip-item').length === {K}")
    page.wait_for_timeout(1500)

    page.set_input_files("#similar-file", files=[{
        "name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello, not an image\n"}])
    page.wait_for_selector("#similar-status[data-state='error']")
    message = page.locator("#similar-status").inner_text()
    assert message.startswith("Error: ") and "not in a known format" in message
    assert page.locator("#similar .strip-item").count() == 0
    page.wait_for_timeout(200)
    assert not outline_at(page, layout, ITEM)  # the earlier results' outlines are gone
    assert page.locator("#viewer").get_attribute("data-ready") == "true"
    page.screenshot(path=ARTIFACTS / "viewer-similar-error.png")
    page.keyboard.press("Escape")
    page.wait_for_function("document.querySelector('#similar-status').textContent === ''")


@pytest.fixture(scope="module")
def small_upload_server(server_bundle):
    """The app with a 4 KiB upload limit, on a loopback port."""
    app = create_app({"MOSAIC_UPLOAD_MAX": 4096}, out_dir=server_bundle.parent)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(timeout=5)


def test_a_file_over_the_limit_shows_the_servers_message(browser, small_upload_server,
                                                         server_bundle):
    context = browser.new_context(viewport=VIEWPORT, base_url=small_upload_server)
    page = context.new_page()
    problems: list[str] = []
    watch(page, problems, [], [413])
    try:
        open_viewer(page)
        image = source_image(server_bundle, small_upload_server, ITEM)
        assert image.stat().st_size > 4096
        page.set_input_files("#similar-file", str(image))
        page.wait_for_selector("#similar-status[data-state='error']")
        message = page.locator("#similar-status").inner_text()
        assert "limit of 4096 bytes" in message, message
        assert page.locator("#similar .strip-item").count() == 0
    finally:
        context.close()
    assert problems == []


@pytest.fixture(scope="module")
def site(server_bundle):
    """Base URL of the bundle published by the real CLI, served by http.server."""
    work = server_bundle.parent.parent
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-q", "publish", "--out", "out", "--id", "test",
         "--to", "www/similar/site"],
        cwd=work, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    with static_host(work / "www", "similar/site/") as root:
        yield root + "similar/site/"


def test_a_published_site_answers_in_the_browser_and_asks_no_api(browser, site,
                                                                 server_bundle):
    """The site has no server: the browser embeds the image and searches the site's
    index (tests/browser/test_query_site_browser.py checks its answers)."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    problems: list[str] = []
    requests: list[str] = []
    watch(page, problems, requests, [])
    try:
        open_viewer(page, site)
        assert page.locator("#similar-section").is_visible()
        image = next((server_bundle.parent.parent / "images").glob("*.png"))
        assert drop_file(page, image.name, "image/png", image.read_bytes())
        page.wait_for_function(
            f"document.querySelectorAll('#similar .strip-item').length === {K}")
        # StaticSource itself still has no server to upload to
        refused = page.evaluate("""async () => {
            const { pickSource } = await import("./static/js/source.js");
            try {
                await pickSource().similar(new Blob(["x"]), 5);
                return "answered";
            } catch (error) {
                return error.message;
            }
        }""")
        assert "needs the mosaic server" in refused
    finally:
        page.context.close()
    assert problems == []
    assert not [r for r in requests if "/api/" in r], requests
