"""Query by example in a published static site: the browser embeds the image itself.

A bundle of distinct generated pictures (JPEG, PNG, WebP, TIFF; grey, RGB, RGBA; EXIF
orientations; bench/distinct_images.py) with the ``pixels`` and ``raw`` embeddings is
built and published by the real CLI (relative paths) and served by ``python -m
http.server``. In Debian chromium (Playwright, tests/browser/conftest.py):

1. static/js/query_vector.js's vector of a file equals ``embed_query``'s (the
   pipeline's) within rounding, on files of several kinds;
2. picking or dropping an item's own file in the site finds that item first, and the
   top 10 overlap ``run.py similar``'s exact neighbours; with the index's rows
   shuffled (the negative control) they do not;
3. a file that is not an image gives one clear message in the panel.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from static_host import static_host
from viewer_page import watch

from mosaic.bundle import Bundle
from mosaic.pipeline.decode import embed_query

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import distinct_images  # noqa: E402

N = 120
K = 20  # static/js/similar.js
QUERIED = (0, 13, 47, 88, 119)
# Tolerances, in stored units (0-255), of the browser's vector against the pipeline's
# (max, mean absolute difference), by how the browser reads the file:
TOLERANCE = {
    # the pipeline's very pixels (opaque PNG, WebP, TIFF; a JPEG decoded whole, or at
    # 1/2 to 1/8 in the DCT domain, which static/js/jpeg_scaled.js does too): equal
    "exact": (0, 0.0),
    # with alpha: the canvas keeps pixels premultiplied, a level off before the flatten
    "alpha": (2, 0.3),
    # a picture libvips shrinks with thumbnail()'s lanczos3: box-averaged here instead
    "near": (12, 1.0),
}
OVERLAP = 0.8  # top 10 shared with the exact neighbours, at least (measured: 1.0)


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def photo(work: Path) -> Image.Image:
    """A picture with detail: one of the generated collection's, upscaled."""
    source = sorted((work / "pictures" / "images").rglob("*.jpg"))[0]
    with Image.open(source) as image:
        return image.convert("RGB").resize((1200, 900), Image.Resampling.BICUBIC)


def query_files(work: Path) -> dict[str, tuple[Path, str]]:
    """Files of several kinds: {name: (path, its TOLERANCE)}."""
    folder = work / "queries"
    folder.mkdir()
    picture = photo(work)
    rgba = picture.resize((300, 200)).convert("RGBA")
    alpha = np.asarray(rgba).copy()
    alpha[..., 3] = np.linspace(0, 255, 300, dtype=np.uint8)[None, :]
    Image.fromarray(alpha, "RGBA").save(folder / "alpha.png")
    picture.resize((257, 190)).convert("L").save(folder / "grey.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show it
    picture.resize((400, 300)).save(folder / "exif6.jpg", quality=90, exif=exif)
    picture.resize((1000, 180)).save(folder / "wide.jpg", quality=90)
    picture.resize((150, 700)).save(folder / "tall.png")
    picture.resize((100, 250)).save(folder / "small.jpg", quality=90)  # decoded whole
    picture.resize((900, 700)).save(folder / "large.png")  # thumbnail() in libvips
    # exif6.jpg at 1/2 and wide.jpg at 1/4 in the DCT domain
    kinds = {"alpha.png": "alpha", "grey.png": "exact", "exif6.jpg": "exact", "wide.jpg": "exact",
             "tall.png": "exact", "small.jpg": "exact", "large.png": "near"}
    return {name: (folder / name, kind) for name, kind in kinds.items()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("query-site")
    distinct_images.generate(work / "pictures", N, seed=5, classes=10, jobs=1, quiet=True)
    done = run_cli(work, "-q", "pipeline", "--images", "pictures/images", "--id", "pics",
                   "--embedding", "pixels", "--embedding", "raw")
    assert done.returncode == 0, done.stderr
    done = run_cli(work, "-q", "publish", "--id", "pics", "--to", "www/site")
    assert done.returncode == 0, done.stderr
    return work


@pytest.fixture(scope="module")
def site(work):
    with static_host(work / "www", "site/") as root:
        yield root + "site/"


@pytest.fixture(scope="module")
def sources(work) -> dict[int, Path]:
    import sqlite3

    with sqlite3.connect(work / "output" / "pics" / "metadata.sqlite") as conn:
        return {i: Path(s) for i, s in conn.execute("SELECT id, source FROM items")}


@pytest.fixture
def page(browser, site):
    """A fresh page; the test fails on a console error, a page error or a request that
    leaves the site."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    problems: list[str] = []
    watch(page, problems, site)
    yield page
    context.close()
    assert problems == []


def open_site(page, site: str) -> None:
    page.goto(site)
    page.wait_for_selector("#viewer[data-ready=true]", timeout=30_000)


def browser_vectors(page, path: Path) -> dict[str, list[int]]:
    """query_vector.js's pixels and raw vectors of a file, with the site's parameters."""
    return page.evaluate("""async ([name, data]) => {
        const { decodeFile, queryVector } = await import("./static/js/query_vector.js");
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const out = {};
        for (const e of [0, 1]) {
            const meta = await (await fetch(`data/query/${e}.json`)).json();
            const image = await decodeFile(new File([bytes], name), meta.decode);
            out[meta.kind] = Array.from(queryVector(image, meta.kind, meta.decode));
        }
        return out;
    }""", [path.name, base64.b64encode(path.read_bytes()).decode()])


def python_vector(work: Path, path: Path, kind: str) -> np.ndarray:
    bundle = Bundle.open(work / "output" / "pics")
    embedding = next(e for e in bundle.embeddings if e.kind == kind)
    return np.rint(embed_query(path, bundle, embedding) / embedding.scale).astype(int)


def test_the_browsers_vector_equals_the_pipelines(page, site, work, sources):
    open_site(page, site)
    files = query_files(work)
    # the collection's own files too: a few of each format
    for suffix in sorted({path.suffix for path in sources.values()}):
        for path in [p for p in sources.values() if p.suffix == suffix][:3]:
            with Image.open(path) as image:
                alpha = "A" in image.mode or "transparency" in image.info
            files[path.name] = (path, "alpha" if alpha else "exact")
    report, failed = {}, []
    for name, (path, tolerance) in files.items():
        found = browser_vectors(page, path)
        for kind in ("pixels", "raw"):
            difference = np.abs(np.array(found[kind]) - python_vector(work, path, kind))
            report[f"{name} {kind}"] = (tolerance, int(difference.max()),
                                        round(float(difference.mean()), 3))
            top, mean = TOLERANCE[tolerance]
            if not (difference.max() <= top and difference.mean() <= mean):
                failed.append(f"{name} {kind}")
    print(json.dumps(report))
    assert not failed, (failed, report)


def strip_ids(page) -> list[int]:
    return page.locator("#similar .strip-item").evaluate_all(
        "nodes => nodes.map(n => Number(n.dataset.id))")


def exact_neighbours(work: Path, path: Path, embedding: str) -> list[int]:
    done = run_cli(work, "similar", "--id", "pics", "-k", "10", "--format", "json",
                   "--embedding", embedding, str(path.relative_to(work))
                   if path.is_relative_to(work) else str(path))
    assert done.returncode == 0, done.stderr
    return [row["id"] for row in json.loads(done.stdout)]


def ask(page, path: Path) -> list[int]:
    page.evaluate("document.querySelector('#similar-clear').click()")
    page.set_input_files("#similar-file", str(path))
    page.wait_for_selector("#similar-status[data-state='done']", timeout=30_000)
    return strip_ids(page)


def test_an_items_own_file_finds_it_first_and_its_neighbours(page, site, work, sources):
    open_site(page, site)
    assert page.locator("#similar-section").is_visible()
    overlaps = []
    for item in QUERIED:
        shown = ask(page, sources[item])
        assert len(shown) == K and shown[0] == item
        exact = exact_neighbours(work, sources[item], "pixels")
        overlaps.append(len(set(shown[:10]) & set(exact)) / 10)
    assert min(overlaps) >= OVERLAP, overlaps
    status = page.locator("#similar-status").inner_text()
    assert status == f"{K} nearest to {sources[QUERIED[-1]].name} by pixels"
    # dropped on the map: the same answer
    item = QUERIED[1]
    data = sources[item].read_bytes()
    page.evaluate("document.querySelector('#similar-clear').click()")
    page.evaluate("""([name, data]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name));
        const map = document.querySelector("#viewer .openseadragon-canvas");
        const at = { bubbles: true, cancelable: true, dataTransfer: transfer };
        map.dispatchEvent(new DragEvent("dragover", at));
        map.dispatchEvent(new DragEvent("drop", at));
    }""", [sources[item].name, base64.b64encode(data).decode()])
    page.wait_for_selector("#similar-status[data-state='done']", timeout=30_000)
    assert strip_ids(page)[0] == item
    assert page.evaluate("document.querySelector('#viewer').dataset.selected") in (None, "-1")


def test_a_shuffled_index_does_not_find_them(browser, site, work, sources):
    """The negative control: the same site with the index's rows shuffled."""
    shuffled = work / "www" / "shuffled"
    shutil.copytree(work / "www" / "site", shuffled, copy_function=os.link)
    codes_path = shuffled / "data" / "query" / "0.i8"
    meta = json.loads((shuffled / "data" / "query" / "0.json").read_text())
    codes = np.fromfile(codes_path, np.int8).reshape(N, meta["index"]["components"])
    codes_path.unlink()
    codes[np.random.default_rng(0).permutation(N)].tofile(codes_path)
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    try:
        open_site(page, site.replace("/site/", "/shuffled/"))
        firsts, overlaps = [], []
        for item in QUERIED:
            shown = ask(page, sources[item])
            firsts.append(shown[0] == item)
            overlaps.append(len(set(shown[:10]) & set(exact_neighbours(
                work, sources[item], "pixels"))) / 10)
        assert sum(firsts) <= 1 and np.mean(overlaps) < 0.3, (firsts, overlaps)
    finally:
        page.context.close()


def test_a_file_that_is_not_an_image_gets_a_message(page, site):
    open_site(page, site)
    page.set_input_files("#similar-file", files=[{
        "name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello, not an image\n"}])
    page.wait_for_selector("#similar-status[data-state='error']")
    assert page.locator("#similar-status").inner_text() == \
        "Error: notes.txt is not an image this browser can decode"
    assert page.locator("#similar .strip-item").count() == 0
    page.set_input_files("#similar-file", files=[{
        "name": "empty.png", "mimeType": "image/png", "buffer": b""}])
    page.wait_for_function("document.querySelector('#similar-status').textContent"
                           " === 'Error: the file is empty'")
    assert urlsplit(page.url).path.endswith("/site/")
