"""The cell pack (schema 2): cells stored as JPEG, read back through ``open_cells``.

One bundle is built through the real CLI (128-px cells, photo-like images with
broken files among them), killed once inside decode and once right after
compaction, then finished; the files on disk are measured at each of those
points. See docs/bundle.md ("Cells") and docs/benchmarks.md ("Cell codec").
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sample_collection import write_image

import mosaic.bundle as bundle_module
from mosaic import SCHEMA_VERSION
from mosaic.bundle import (
    CELL_QUALITY,
    Bundle,
    RowFile,
    decode_cell,
    encode_cell,
    open_cells,
    read_manifest,
)
from mosaic.errors import BundleError
from mosaic.pipeline.thumbnail import DECODER, decode_image
from server import create_app

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
N_IMAGES, CELL = 60, 128
BROKEN = ["a/img_005b.jpg", "a/img_030b.png", "b/img_059z.jpg"]  # sorted among the good ones
# Mean PSNR of a stored cell against the decoder's own cell: measured 41.8 dB on these
# images at Q 90 (4:4:4), the worst single cell 38.9 dB; the thresholds leave ~5 dB.
MEAN_PSNR, MIN_PSNR = 36.0, 33.0
# No file may be near the size of an uncompressed (N, c, c, 3) cell array.
SIZE_LIMIT = 0.3


def photo_like(index: int) -> np.ndarray:
    """A (h, w, 3) uint8 image: a gradient, a hard disc, a soft blob and a little noise."""
    rng = np.random.default_rng(index)
    h, w = int(rng.integers(60, 220)), int(rng.integers(60, 220))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = top + (bottom - top) * (y / h)[..., None]
    cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, max(h, w) / 3)
    disc = (((y - cy) ** 2 + (x - cx) ** 2) < r * r)[..., None]
    image = np.where(disc, rng.uniform(0, 255, 3), image)
    cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, max(h, w) / 2)
    blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None]
    image = image * (1 - blob) + rng.uniform(0, 255, 3) * blob
    image += rng.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def large_files(root: Path, n_items: int, cell: int = CELL) -> list[str]:
    """Files under ``root`` of at least SIZE_LIMIT x an uncompressed cell array's size."""
    limit = SIZE_LIMIT * n_items * cell * cell * 3
    return sorted(f"{p.relative_to(root)} ({p.stat().st_size} bytes)" for p in root.rglob("*")
                  if p.is_file() and p.stat().st_size >= limit)


def run_pipeline(point: str, images: Path, out: Path) -> int:
    """The CLI through tests/test_resume.py's injector (decode chunks of 8), killed at
    ``point`` (``none``: not killed)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.pop("MOSAIC_TEST_DECODE_LOG", None)
    args = ["-q", "pipeline", "--images", str(images), "--out", str(out), "--id", "p",
            "--embedding", "raw", "--cell-size", str(CELL), "--jobs", "2",
            "--perplexity", "5", "--tile-size", "128"]
    return subprocess.run([sys.executable, str(TESTS / "test_resume.py"), point, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300).returncode


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(bundle, {kill point: files too large at that point}, good sources in id order)."""
    root = tmp_path_factory.mktemp("pack")
    images = root / "images"
    good = []
    for index in range(N_IMAGES):
        suffix = ".png" if index % 3 else ".jpg"
        path = images / ("a" if index < 30 else "b") / f"img_{index:03d}{suffix}"
        write_image(path, photo_like(index), **({"Q": 95} if suffix == ".jpg" else {}))
        good.append(str(path))
    for name in BROKEN:
        (images / name).write_bytes(b"not an image at all")
    out = root / "out"
    seen = {}
    for point in ("decode", "compact"):
        assert run_pipeline(point, images, out) == -signal.SIGKILL
        seen[point] = large_files(out / "p", N_IMAGES)
    assert (out / "p" / "cache" / "decode-work").is_dir()
    assert run_pipeline("none", images, out) == 0
    seen["finished"] = large_files(out / "p", N_IMAGES)
    return out / "p", seen, sorted(good)


def test_no_file_is_an_uncompressed_cell_array(built):
    bundle, seen, _ = built
    assert seen == {"decode": [], "compact": [], "finished": []}
    assert not list(bundle.rglob("*.u8"))


def test_the_size_check_catches_the_old_raw_layout(tmp_path):
    # negative control: schema 1 kept cells.u8 (and a work copy) as raw (N, c, c, 3) bytes
    old = RowFile(tmp_path / "cells.u8", (N_IMAGES, CELL, CELL, 3), np.uint8, writable=True)
    old.write_row(N_IMAGES - 1, np.zeros((CELL, CELL, 3), np.uint8))
    old.close()
    assert large_files(tmp_path, N_IMAGES) == [f"cells.u8 ({N_IMAGES * CELL * CELL * 3} bytes)"]


def test_ids_are_dense_after_skipped_inputs(built):
    bundle, _, good = built
    manifest = read_manifest(bundle)
    assert manifest["counts"]["items"] == N_IMAGES
    assert manifest["counts"]["skipped"] == len(BROKEN)
    # stored once: the pack's count and size are counts.items and grid.cell_size
    stored = json.loads((bundle / "manifest.json").read_text())
    assert stored["cells"] == {"path": "cells.pack", "index": "cells.idx", "codec": "jpeg",
                               "quality": CELL_QUALITY, "dtype": "uint8", "decoder": DECODER}
    assert Bundle.open(bundle).cells.shape == (N_IMAGES, CELL, CELL, 3)
    # read_manifest still hands the older code its copies
    assert manifest["cells"]["shape"] == [N_IMAGES, CELL, CELL, 3]
    assert manifest["cells"]["cell_size"] == CELL
    offsets = np.fromfile(bundle / "cells.idx", dtype="<u8")
    assert len(offsets) == N_IMAGES + 1 and offsets[0] == 0
    assert offsets[-1] == (bundle / "cells.pack").stat().st_size
    assert (np.diff(offsets.astype(np.int64)) > 0).all()
    conn = sqlite3.connect(bundle / "metadata.sqlite")
    sources = [s for (s,) in conn.execute("SELECT source FROM items ORDER BY id")]
    ids = [i for (i,) in conn.execute("SELECT id FROM items ORDER BY id")]
    conn.close()
    assert ids == list(range(N_IMAGES))
    assert [Path(s).name for s in sources] == [Path(s).name for s in good]


def test_stored_cells_are_close_to_the_decoded_ones(built):
    bundle, _, good = built
    cells = open_cells(bundle, read_manifest(bundle))
    assert cells.shape == (N_IMAGES, CELL, CELL, 3) and len(cells) == N_IMAGES
    stored = cells.read_rows(np.arange(N_IMAGES))
    cells.close()
    scores = [psnr(decode_image(source, CELL).cell, cell) for source, cell in zip(good, stored)]
    assert np.mean(scores) > MEAN_PSNR and min(scores) > MIN_PSNR, (np.mean(scores),
                                                                   min(scores))
    # and each cell is its own image's: far closer to it than to its neighbour's
    assert psnr(decode_image(good[1], CELL).cell, stored[0]) < min(scores) - 10


def test_cells_decode_to_pillows_pixels_and_a_broken_cell_is_a_bundle_error(built):
    # decode_cell reads through simplejpeg for speed; the pixels must be Pillow's
    # (what every bundle made before it shows), not merely close to them
    bundle, _, _ = built
    cells = open_cells(bundle, read_manifest(bundle))
    for item in range(N_IMAGES):
        data = cells.read_encoded(item)
        with Image.open(io.BytesIO(data)) as image:
            assert np.array_equal(cells[item], np.asarray(image.convert("RGB")))
    data = cells.read_encoded(0)
    cells.close()
    # a cell of a different picture decodes to other pixels (the check can fail)
    assert not np.array_equal(decode_cell(data, (CELL, CELL, 3)),
                              decode_cell(encode_cell(np.zeros((CELL, CELL, 3), np.uint8)),
                                          (CELL, CELL, 3)))
    for broken in (b"", data[:20], b"not a jpeg" * 50):
        with pytest.raises(BundleError, match="does not decode"):
            decode_cell(broken, (CELL, CELL, 3))
    with pytest.raises(BundleError, match="not"):
        decode_cell(data, (CELL // 2, CELL // 2, 3))


def test_read_rows_keeps_the_order_and_reads_each_run_once(built, monkeypatch):
    bundle, _, _ = built
    cells = open_cells(bundle, read_manifest(bundle))
    one_by_one = np.stack([cells[i] for i in range(N_IMAGES)])
    ids = [7, 8, 9, 10, 3, 41, 42, 0, 59]
    reads = []
    pread = os.pread
    monkeypatch.setattr(bundle_module.os, "pread",
                        lambda fd, n, offset: reads.append(offset) or pread(fd, n, offset))
    assert np.array_equal(cells.read_rows(ids), one_by_one[ids])
    assert len(reads) == 5  # 7..10, 3, 41..42, 0, 59
    reads.clear()
    monkeypatch.setattr(bundle_module, "_MAX_RUN", 16)
    assert np.array_equal(cells.read_rows(np.arange(N_IMAGES)), one_by_one)
    assert len(reads) == 4  # one run, cut into pieces of at most 16 cells
    assert np.array_equal(cells[np.array([5, 2])], one_by_one[[5, 2]])
    assert np.array_equal(cells[-1], one_by_one[-1])
    assert cells.read_rows([]).shape == (0, CELL, CELL, 3)
    with pytest.raises(IndexError):
        cells.read_rows([N_IMAGES])
    cells.close()


def test_a_torn_index_is_a_bundle_error(built, tmp_path):
    bundle, _, _ = built
    manifest = read_manifest(bundle)
    (tmp_path / "cells.pack").write_bytes((bundle / "cells.pack").read_bytes())
    (tmp_path / "cells.idx").write_bytes((bundle / "cells.idx").read_bytes()[:-8])
    with pytest.raises(BundleError, match="does not index"):
        open_cells(tmp_path, manifest)


def test_thumbnail_endpoint_sends_the_stored_bytes(built):
    bundle, _, _ = built
    manifest = read_manifest(bundle)
    app = create_app({"TESTING": True}, out_dir=bundle.parent)
    client = app.test_client()
    cells = open_cells(bundle, manifest)
    for item in (0, 31, N_IMAGES - 1):
        response = client.get(f"/collections/p/thumbs/{item}.jpg")
        assert response.status_code == 200 and response.mimetype == "image/jpeg"
        assert response.data == cells.read_encoded(item)
        assert response.cache_control.public and response.cache_control.max_age == 3600
        again = client.get(f"/collections/p/thumbs/{item}.jpg",
                           headers={"If-None-Match": response.headers["ETag"]})
        assert again.status_code == 304 and again.data == b""
    assert client.get(f"/collections/p/thumbs/{N_IMAGES}.jpg").status_code == 404
    cells.close()
    assert json.loads((bundle / "manifest.json").read_text())["schema_version"] == SCHEMA_VERSION
