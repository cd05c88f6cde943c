"""The query-by-example index of a published site (mosaic/publish.py, docs/publish.md).

``run.py publish`` (a subprocess, relative paths) writes ``data/query/<e>.*`` for the
``pixels`` and ``raw`` embeddings only, lists them in collection.json with the size
limit, rewrites nothing when published again, and leaves the index out (saying so)
over the limit. The browser's side: tests/browser/test_query_site_browser.py.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mosaic import publish
from mosaic.bundle import Bundle
from mosaic.pipeline import embed, thumbnail

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import distinct_images  # noqa: E402

N = 40


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """``output/pics`` with pixels, the user's vectors (file:) and raw, published."""
    work = tmp_path_factory.mktemp("publish-query")
    distinct_images.generate(work / "pictures", N, seed=3, classes=5, jobs=1, quiet=True)
    np.save(work / "vectors.npy", np.random.default_rng(0).random((N, 8), dtype=np.float32))
    done = run_cli(work, "-q", "pipeline", "--images", "pictures/images", "--id", "pics",
                   "--embedding", "pixels", "--embedding", "file:vectors.npy",
                   "--embedding", "raw")
    assert done.returncode == 0, done.stderr
    done = run_cli(work, "-q", "publish", "--id", "pics", "--to", "site")
    assert done.returncode == 0, done.stderr
    return work


def test_the_decode_constants_are_the_pipelines():
    assert publish.QUERY_DECODE == {
        "direct_decode_pixels": thumbnail.DIRECT_DECODE_PIXELS,
        "max_pixels": thumbnail.DEFAULT_MAX_PIXELS,
        "side": embed.PIXELS_SIDE, "model_size": embed.VGG_INPUT_SIZE,
        "model_kinds": embed.MODEL_KINDS}
    assert embed.RAW_SIDE == embed.PIXELS_SIDE


def test_an_index_for_pixels_and_raw_only(work):
    data = work / "site" / "data"
    assert sorted(p.name for p in (data / "query").iterdir()) == \
        ["0.f32", "0.i8", "0.json", "2.f32", "2.i8", "2.json"]
    collection = json.loads((data / "collection.json").read_text())
    assert collection["static"]["query"] == [{"embedding": "pixels", "url": "query/0.json"},
                                             {"embedding": "raw", "url": "query/2.json"}]
    assert collection["static"]["query_max_items"] == publish.QUERY_MAX_ITEMS == 125_000
    bundle = Bundle.open(work / "output" / "pics")
    for e, kind in ((0, "pixels"), (2, "raw")):
        meta = json.loads((data / "query" / f"{e}.json").read_text())
        assert meta["kind"] == kind and meta["scale"] == pytest.approx(1 / 255)
        assert meta["decode"] == {"cell_size": 128, "fit": "fit", "background": [255, 255, 255],
                                  "box": 128, "side": 16, "direct_decode_pixels": 512 * 512,
                                  "max_pixels": meta["decode"]["max_pixels"]}
        index = meta["index"]
        d, dim = index["components"], index["dim"]
        assert (index["n_items"], dim, d) == (N, 768, 128)
        assert (data / "query" / f"{e}.i8").stat().st_size == N * d
        assert (data / "query" / f"{e}.f32").stat().st_size == 4 * (dim + d * dim + d)
        # the codes decode to the items' projections: each item's own row is its nearest
        model = np.fromfile(data / "query" / f"{e}.f32", "<f4")
        mean, axes = model[:dim], model[dim:dim + d * dim].reshape(d, dim)
        steps = model[dim + d * dim:]
        codes = np.fromfile(data / "query" / f"{e}.i8", np.int8).reshape(N, d) * steps
        stored = np.load(bundle.file(bundle.embeddings[e].vectors)).astype(np.float32)
        projected = (stored - mean) @ axes.T
        nearest = np.argmin(((projected[:, None] - codes[None]) ** 2).sum(-1), axis=1)
        assert (nearest == np.arange(N)).all()
        assert np.abs(projected - codes).max() <= steps.max() / 2 + 1e-3


def test_publishing_again_rewrites_nothing_of_it(work):
    before = publish.site_snapshot(work / "site")
    done = run_cli(work, "-q", "publish", "--id", "pics", "--to", "site")
    assert done.returncode == 0, done.stderr
    after = publish.site_snapshot(work / "site")
    query = {p: f for p, f in after.items() if p.startswith("data/query/")}
    assert len(query) == 6 and all(before[p] == f for p, f in query.items())


def test_over_the_limit_no_index_and_a_warning(work, tmp_path, caplog):
    site = tmp_path / "site"
    with caplog.at_level(logging.WARNING, logger="mosaic.publish"):
        sizes = publish.write_site(work / "output" / "pics", site, ROOT / "static",
                                   thumbnails=False, neighbors=False, query_max_items=N - 1)
    assert sizes["query"] == 0 and not (site / "data" / "query").exists()
    assert f"{N} items, over the limit of {N - 1}" in caplog.text
    assert json.loads((site / "data" / "collection.json").read_text())["static"]["query"] == []
    # and back under it, into the same folder: written again
    publish.write_site(work / "output" / "pics", site, ROOT / "static", thumbnails=False,
                       neighbors=False)
    assert (site / "data" / "query" / "0.json").is_file()
