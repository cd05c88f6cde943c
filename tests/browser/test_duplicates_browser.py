"""The Duplicates filter in the real browser (static/js/duplicates.js).

A 40-picture collection of random colour blocks (no two alike) plus copies of some of
them (a smaller PNG; one picture also as a JPEG of its size, a group of three), built
by the pipeline with its default embedding and duplicate search, served
by the app and published as a static site. "N duplicate groups" shows the manifest's
count; turned on, it lists exactly the stored groups (duplicates.json), their members'
thumbnails in order with the stored largest marked, and dims the cells of items in no
group; a click on a group selects exactly its members, outlines them on the map, fits
the view to them and round-trips through the URL (dups=on, sel=d<group>). Debian
chromium through Playwright (tests/browser/conftest.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import test_selection_browser as selection_test
from PIL import Image
from sample_collection import write_image
from test_selection_browser import new_page, open_map, selection
from viewer_page import cell_centre, overlay_alpha, view_of

from mosaic.cli.main import main as mosaic_main

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

CID = "dups"
DIM_ALPHA = 190  # static/js/overlay.js
SLACK = 4  # pixels: where the overlay draws a border against where the URL's view puts it
PICTURES = 40
COPIED = (3, 11, 19, 27, 35)  # pictures given a smaller copy; the first also a JPEG one
live = selection_test.live
page = selection_test.page
site = selection_test.site  # this module's bundle published under a prefix, on http.server


def blocks(seed: int) -> np.ndarray:
    """A 48 x 64 RGB picture of 6 x 8 random colour blocks."""
    colours = np.random.default_rng(seed).integers(0, 256, (6, 8, 3))
    return np.kron(colours, np.ones((8, 8, 1))).astype(np.uint8)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("duplicates")
    images = work / "images"
    for i in range(PICTURES):
        write_image(images / f"pic_{i:03d}.png", blocks(i))
    (images / "copies").mkdir()
    for i in COPIED:
        Image.fromarray(blocks(i)).resize((48, 36), Image.Resampling.LANCZOS).save(
            images / "copies" / f"small_{i:03d}.png")
    Image.fromarray(blocks(COPIED[0])).save(images / "copies" / f"same_{COPIED[0]:03d}.jpg",
                                            quality=95)
    code = mosaic_main([
        "-q", "pipeline", "--images", str(images), "--out", str(work / "out"), "--id", CID,
        "--cell-size", "32", "--tile-size", "128", "--perplexity", "10", "--jobs", "2"])
    assert code == 0
    return work / "out" / CID


@pytest.fixture(scope="module")
def facts(bundle) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["duplicates"]
    stored = json.loads((bundle / entry["path"]).read_text())["groups"]
    layout = {"positions": np.load(bundle / "positions.npy"), "grid": manifest["grid"],
              "tiles": manifest["tiles"]}
    return {"entry": entry, "groups": stored, "layout": layout,
            "n": manifest["counts"]["items"]}


def test_the_bundle_groups_each_copy_with_its_original(facts):
    """What the viewer shows below is the pipeline's: one group per copied picture."""
    groups = facts["groups"]
    assert facts["entry"]["groups"] == len(groups) == len(COPIED)
    assert sorted(len(g["ids"]) for g in groups) == [2] * (len(COPIED) - 1) + [3]
    assert facts["entry"]["items"] == sum(len(g["ids"]) for g in groups)


def listed(page) -> list[dict]:
    """The groups the panel lists: their number, member ids and the marked largest."""
    page.wait_for_selector("#duplicate-groups[data-ready=true]", state="attached")
    return page.locator(".duplicate-group").evaluate_all("""nodes => nodes.map(n => ({
        group: Number(n.dataset.group),
        ids: [...n.querySelectorAll("img")].map(i => Number(i.dataset.id)),
        largest: [...n.querySelectorAll("img[data-largest=true]")].map(i => Number(i.dataset.id)),
    }))""")


def turn_on(page, facts) -> list[dict]:
    toggle = page.locator("#duplicates-toggle")
    groups = facts["entry"]["groups"]
    assert toggle.inner_text() == f"{groups} duplicate groups"
    assert toggle.get_attribute("aria-pressed") == "false"
    toggle.click()
    shown = listed(page)
    assert toggle.get_attribute("aria-pressed") == "true"
    assert int(page.get_attribute("#duplicates-status", "data-total")) == groups
    return shown


def assert_lists_the_stored_groups(shown: list[dict], facts) -> None:
    assert [entry["group"] for entry in shown] == list(range(len(facts["groups"])))
    for entry, stored in zip(shown, facts["groups"]):
        assert entry["ids"] == stored["ids"] and entry["largest"] == [stored["largest"]]


def outlined(page, x: float, y: float, half: float) -> bool:
    """Whether the overlay draws the group colour (#76ff03) on the border of the cell
    centred at page point (x, y), ``half`` pixels each side: across the middle of every
    side inside the canvas (at least two), within ``SLACK`` pixels of where the view in
    the URL (rounded) puts it."""
    return page.evaluate("""([x, y, half, slack]) => {
        const canvas = document.querySelector("canvas.mosaic-overlay");
        const box = canvas.getBoundingClientRect();
        const r = canvas.width / box.width;
        const context = canvas.getContext("2d");
        const group = (px, py) => {
            const d = context.getImageData(px, py, 1, 1).data;
            return d[3] > 200 && d[1] > 200 && d[0] < 170 && d[2] < 110;
        };
        const inside = (px, py) => px >= 0 && py >= 0 && px < canvas.width && py < canvas.height;
        const sides = [[x - half, y, 1, 0], [x + half, y, 1, 0], [x, y - half, 0, 1],
                       [x, y + half, 0, 1]]
            .map(([px, py, dx, dy]) => [Math.floor((px - box.left) * r),
                                        Math.floor((py - box.top) * r), dx, dy])
            .filter(([px, py]) => inside(px, py));
        return sides.length >= 2 && sides.every(([px, py, dx, dy]) => {
            for (let k = -slack; k <= slack; k++) {
                const [qx, qy] = [px + k * dx, py + k * dy];
                if (inside(qx, qy) && group(qx, qy)) return true;
            }
            return false;
        });
    }""", [x, y, half, SLACK])


def eventually(check, seconds: float = 5.0) -> bool:
    """Whether ``check()`` comes true within ``seconds`` (polled every 0.2 s)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def px_per_cell(page, facts) -> float:
    layout = facts["layout"]
    return page.locator("#viewer").bounding_box()["width"] * view_of(page)[2] \
        * layout["grid"]["cell_size"] / layout["tiles"]["width"]


def on_screen(page, xy: tuple[float, float]) -> bool:
    box = page.locator("#viewer").bounding_box()
    return box["x"] < xy[0] < box["x"] + box["width"] and \
        box["y"] < xy[1] < box["y"] + box["height"]


def test_the_filter_lists_the_groups_and_dims_the_rest(page, facts):
    open_map(page, f"/c/{CID}#view=0.5,0.5,0.8")  # the whole map on screen
    shown = turn_on(page, facts)
    assert_lists_the_stored_groups(shown, facts)
    page.wait_for_function("location.hash.includes('dups=on')")
    page.wait_for_timeout(300)
    layout = facts["layout"]
    members = {i for g in facts["groups"] for i in g["ids"]}
    centres = {i: cell_centre(page, layout, i) for i in range(facts["n"])}
    assert all(on_screen(page, xy) for xy in centres.values())
    for item, xy in centres.items():
        assert overlay_alpha(page, *xy) == (0 if item in members else DIM_ALPHA), item
    # off again: nothing dimmed, the list gone
    page.click("#duplicates-toggle")
    page.wait_for_selector("#duplicate-groups", state="hidden")
    page.wait_for_timeout(100)
    assert all(overlay_alpha(page, *xy) == 0 for xy in centres.values())


def test_a_click_selects_outlines_and_flies_to_a_group(page, facts):
    open_map(page, f"/c/{CID}#view=0.5,0.5,0.8")
    turn_on(page, facts)
    number = max(range(len(facts["groups"])), key=lambda g: len(facts["groups"][g]["ids"]))
    ids = facts["groups"][number]["ids"]
    page.locator(f".duplicate-group[data-group='{number}']").click()
    total, strip = selection(page)
    assert total == len(ids) and strip == ids
    assert f"duplicate group {number + 1}" in page.inner_text("#selection-count")
    assert page.get_attribute("#viewer", "data-duplicate-group") == str(number)
    assert page.get_attribute(f".duplicate-group[data-group='{number}']",
                              "aria-pressed") == "true"
    page.wait_for_function(f"location.hash.includes('sel=d{number}')")
    # the view flies to the members' cells: centred on them (fitted, 2 cells around)
    rows, cols = facts["layout"]["positions"][ids].T
    cell = facts["layout"]["grid"]["cell_size"] / facts["layout"]["tiles"]["width"]
    centre = [(cols.min() + cols.max() + 1) / 2 * cell, (rows.min() + rows.max() + 1) / 2 * cell]
    page.wait_for_function("""([x, y]) => {
        const view = new URLSearchParams(location.hash.slice(1)).get("view").split(",");
        return Math.abs(view[0] - x) < 0.01 && Math.abs(view[1] - y) < 0.01;
    }""", arg=[float(v) for v in centre], timeout=10_000)
    # (the URL holds the view the fly goes to at once: the drawing follows in ~1.2 s)
    half = px_per_cell(page, facts) / 2
    for item in ids:  # on screen, outlined, bright
        x, y = cell_centre(page, facts["layout"], item)
        assert on_screen(page, (x, y)), item
        assert eventually(lambda x=x, y=y: outlined(page, x, y, half)), item
        assert overlay_alpha(page, x, y) == 0
    # items on screen whose cells touch no member's: not outlined
    positions = facts["layout"]["positions"]
    apart = [i for i in range(facts["n"])
             if np.abs(positions[ids] - positions[i]).max(axis=1).min() > 1
             and on_screen(page, cell_centre(page, facts["layout"], i))]
    assert apart and not any(outlined(page, *cell_centre(page, facts["layout"], i), half)
                             for i in apart)
    # the URL reproduces it
    url = page.url
    page.goto("about:blank")
    open_map(page, url)
    total, strip = selection(page)
    assert total == len(ids) and strip == ids
    assert page.get_attribute("#duplicates-toggle", "aria-pressed") == "true"
    page.wait_for_function(
        f"document.querySelector('#viewer').dataset.duplicateGroup === '{number}'")


def test_the_published_site_lists_and_selects_groups(browser, site, facts):
    page, problems = new_page(browser, static_root=site)
    open_map(page, f"{site}#view=0.5,0.5,1")
    shown = turn_on(page, facts)
    assert_lists_the_stored_groups(shown, facts)
    page.locator(".duplicate-group[data-group='0']").click()
    total, strip = selection(page)
    assert total == len(facts["groups"][0]["ids"]) and strip == facts["groups"][0]["ids"]
    page.wait_for_function("document.querySelector('#viewer').dataset.duplicateGroup === '0'")
    page.context.close()
    assert problems == []
