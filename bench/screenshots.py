"""Retake the README's screenshots from the demo, in Debian chromium (Playwright).

    python bench/screenshots.py [--bundles DIR]

Builds the demo into a temporary folder (or uses ``--bundles``, a folder that
holds ``digits/``), serves it on a free loopback port, and writes
docs/images/viewer-neighbours.jpg, viewer-filter.jpg and poster-digits.jpg.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
RUN = [sys.executable, str(ROOT / "run.py")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def save_jpeg(png: Path, name: str, width: int = 1280) -> None:
    image = Image.open(png).convert("RGB")
    image.thumbnail((width, width))
    image.save(IMAGES / name, quality=80, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=Path, help="a folder holding digits/ (default: build)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mosaic-shots-"))
    out = args.bundles
    if out is None:
        subprocess.run([*RUN, "-q", "demo"], cwd=work, check=True)
        out = work / "output"
    port = free_port()
    server = subprocess.Popen([*RUN, "serve", "--out", str(out), "--port", str(port)])
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/api/collections", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{base}/c/digits")
            page.wait_for_selector("#viewer[data-ready=true]", timeout=30_000)
            page.wait_for_selector("#viewer[data-fully-loaded=true]", timeout=30_000)
            box = page.locator("#viewer").bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.45)
            page.wait_for_selector("#panel:not([hidden])", timeout=10_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(work / "neighbours.png"))
            save_jpeg(work / "neighbours.png", "viewer-neighbours.jpg")
            page.goto(f"{base}/c/digits")
            page.wait_for_selector("#viewer[data-fully-loaded=true]", timeout=30_000)
            page.locator("#facets .chip[data-facet='label'][data-value='3']").click()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(work / "filter.png"))
            save_jpeg(work / "filter.png", "viewer-filter.jpg")
            browser.close()
        poster = work / "poster.png"
        subprocess.run([*RUN, "poster", "--out", str(out), "--id", "digits", "-o", str(poster),
                        "--paper", "A4", "--dpi", "100", "--title",
                        "Handwritten digits, laid out by shape"], check=True)
        save_jpeg(poster, "poster-digits.jpg", width=900)
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"wrote {', '.join(p.name for p in sorted(IMAGES.glob('*.jpg')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
