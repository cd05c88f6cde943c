"""bench/distinct_images.py: the benchmark collection is distinct, varied and structured.

One session-scoped collection of 300 images in 10 classes (about 30 a class, so that
a class can fill an item's 5 nearest neighbours), made in this process.
"""

from __future__ import annotations

import csv
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from mosaic.pipeline.thumbnail import decode_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import distinct_images  # noqa: E402

N = 300
CLASSES = 10


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distinct")
    distinct_images.generate(out, N, seed=0, classes=CLASSES, jobs=1, quiet=True)
    return out


@pytest.fixture(scope="module")
def rows(collection) -> list[dict]:
    return distinct_images.read_labels(collection)


def test_every_file_is_distinct_and_its_own(collection, rows):
    assert distinct_images.verify(collection, N) == []
    hashes = [row["pixel_hash"] for row in rows]
    assert len(set(hashes)) == N
    inodes = set()
    for row in rows:
        info = os.stat(collection / "images" / row["filename"])
        assert info.st_nlink == 1
        inodes.add((info.st_dev, info.st_ino))
    assert len(inodes) == N


def test_the_recorded_hash_is_the_files(collection, rows):
    for row in rows[:40]:
        assert distinct_images.pixel_hash(collection / "images" / row["filename"]) \
            == row["pixel_hash"]


def test_verify_finds_a_link_and_a_repeat(tmp_path):
    distinct_images.generate(tmp_path, 12, seed=3, classes=4, jobs=1, quiet=True)
    rows = distinct_images.read_labels(tmp_path)
    first, second = (tmp_path / "images" / rows[k]["filename"] for k in (0, 1))
    os.link(first, tmp_path / "images" / "extra.jpg")
    faults = distinct_images.verify(tmp_path, 12)
    assert any("2 hard links" in fault for fault in faults)
    assert any("extra.jpg" in fault for fault in faults)
    os.remove(tmp_path / "images" / "extra.jpg")
    with open(tmp_path / "labels.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    table[1]["pixel_hash"] = table[0]["pixel_hash"]
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, distinct_images.LABEL_FIELDS)
        writer.writeheader()
        writer.writerows(table)
    assert any("same pixels as" in fault for fault in distinct_images.verify(tmp_path, 12))
    assert second.exists()


def test_the_labels_cover_every_file(collection, rows):
    on_disk = {path.relative_to(collection / "images").as_posix()
               for path in (collection / "images").rglob("*") if path.is_file()}
    assert {row["filename"] for row in rows} == on_disk
    assert len(rows) == N
    assert {row["class"] for row in rows} == {f"c{k:03d}" for k in range(CLASSES)}
    assert {row["superclass"] for row in rows} <= set(distinct_images.SUPERCLASSES)
    for row in rows:
        assert 0 < float(row["horizon"]) < 1
        assert 0.7 < float(row["exposure"]) < 1.3


def test_the_kinds_appear(collection, rows):
    counts = Counter((row["format"], row["mode"]) for row in rows)
    assert counts[("jpeg", "RGB")] > N / 2
    assert counts[("png", "RGB")] + counts[("png", "RGBA")] + counts[("png", "L")] >= 5
    oriented = [row for row in rows if row["orientation"] != "1"]
    assert len(oriented) >= 5
    seen = Counter()
    for row in rows:
        with Image.open(collection / "images" / row["filename"]) as image:
            seen[image.format, image.mode] += 1
            orientation = image.getexif().get(0x0112, 1)
            assert orientation == int(row["orientation"])
            stored = image.size
            upright = ImageOps.exif_transpose(image).size
        assert upright == (int(row["width"]), int(row["height"]))
        if orientation in (5, 6, 7, 8):  # stored turned: width and height swapped
            assert stored == upright[::-1]
        expected = {"jpeg": "JPEG", "png": "PNG"}[row["format"]]
        assert (expected, row["mode"]) in seen
    assert seen["JPEG", "L"] + seen["PNG", "L"] >= 5
    assert seen["PNG", "RGBA"] >= 2


def test_an_oriented_file_reads_upright_only_with_its_tag(collection, rows):
    """The stored pixels are turned: applying the tag gives the scene the generator drew."""
    row = next(row for row in rows if row["orientation"] in ("6", "8") and row["mode"] == "RGB")
    params = distinct_images.item_params(0, int(row["filename"][-11:-4]), CLASSES)
    drawn = np.asarray(distinct_images.render_scene(params, 0, params.width, params.height),
                       np.float32)
    with Image.open(collection / "images" / row["filename"]) as image:
        upright = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), np.float32)
        stored = np.asarray(image.convert("RGB"), np.float32)
    assert np.abs(upright - drawn).mean() < 6  # JPEG's error only
    turned = np.rot90(drawn, 1 if row["orientation"] == "6" else -1)
    assert stored.shape == turned.shape and np.abs(stored - turned).mean() < 6


def test_sizes_are_in_range(rows):
    long_sides = [max(int(row["width"]), int(row["height"])) for row in rows]
    pixels = [int(row["width"]) * int(row["height"]) for row in rows]
    small = [side for side, count in zip(long_sides, pixels) if count < 2e6]
    assert all(256 <= side <= 800 for side in small)
    assert len(small) >= 0.97 * N
    big = [count for count in pixels if count >= 2e6]
    assert all(count <= 12.5e6 for count in big)
    aspects = {round(int(row["width"]) / int(row["height"]), 1) for row in rows}
    assert len(aspects) >= 6


def _same_class_share(vectors: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    squared = (vectors ** 2).sum(axis=1)
    distances = squared[:, None] + squared[None, :] - 2 * vectors @ vectors.T
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


def test_classes_are_neighbours_in_the_pixels_embedding(collection, rows):
    """The 16 x 16 picture of mosaic's default embedding, decoded by mosaic itself: an
    item's 5 nearest neighbours are mostly of its class (0.97 measured), far above the
    same labels shuffled (0.10, the chance level of 10 classes)."""
    vectors = np.stack([
        decode_image(collection / "images" / row["filename"], cell_size=32,
                     picture_side=16).picture.reshape(-1)
        for row in rows]).astype(np.float32)
    labels = np.array([row["class"] for row in rows])
    real = _same_class_share(vectors, labels)
    shuffled = _same_class_share(vectors, np.random.default_rng(1).permutation(labels))
    assert real > 0.8
    assert shuffled < 0.2


def test_image_i_depends_only_on_seed_and_i(collection, rows, tmp_path):
    """A shorter collection is the first images of a longer one, file for file."""
    distinct_images.generate(tmp_path, 20, seed=0, classes=CLASSES, jobs=1, quiet=True)
    short = distinct_images.read_labels(tmp_path)
    assert short == rows[:20]
    for row in short:
        assert (tmp_path / "images" / row["filename"]).read_bytes() == \
            (collection / "images" / row["filename"]).read_bytes()


def test_a_run_resumes(tmp_path):
    distinct_images.generate(tmp_path, 30, seed=5, classes=4, jobs=1, quiet=True)
    before = distinct_images.read_labels(tmp_path)
    os.remove(tmp_path / ".parts" / "chunk-00000.csv")
    os.remove(tmp_path / "images" / before[7]["filename"])
    manifest = distinct_images.generate(tmp_path, 30, seed=5, classes=4, jobs=1, quiet=True)
    assert distinct_images.read_labels(tmp_path) == before
    assert manifest["this_run"]["images"] == 30  # the chunk's rows again, one file redrawn
    assert not list(tmp_path.rglob("*.tmp"))
