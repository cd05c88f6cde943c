"""Large JPEGs that are small once shrunk on load are decoded whole, at the DCT scale,
and resized by the cell's own area filter; only those still large at 1/8 go through
libvips's ``thumbnail`` (which streams, so memory stays bounded).

The property: the direct path makes the same picture as ``thumbnail`` (close in every
pixel, upright under EXIF rotation, letterboxed the same way), and a picture that is
large even at 1/8 never takes it.
"""

from __future__ import annotations

import numpy as np
import pytest
import pyvips
from PIL import Image

from mosaic.pipeline import thumbnail

WHITE = (255, 255, 255)


def smooth_picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like picture: gradients and a few discs, no pixel noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    picture = np.stack([120 + 100 * np.sin(3 * x + rng.random()),
                        120 + 100 * np.cos(2 * y + rng.random()),
                        128 + 90 * np.sin(4 * (x + y))], axis=-1)
    for _ in range(4):
        cy, cx, r = rng.random() * height, rng.random() * width, 0.1 * min(height, width)
        inside = (np.mgrid[0:height, 0:width][0] - cy) ** 2 + \
            (np.mgrid[0:height, 0:width][1] - cx) ** 2 < r ** 2
        picture[inside] = rng.integers(0, 256, 3)
    return picture.clip(0, 255).astype(np.uint8)


def thumbnail_cell(path, cell_size: int, fit: str) -> np.ndarray:
    """The cell as libvips's thumbnail would make it (the path before decoder 2)."""
    base = thumbnail._pixels(thumbnail._to_srgb(thumbnail._thumbnail(
        str(path), cell_size, crop="centre" if fit == "fill" else "none"), WHITE))
    return thumbnail.square_array(base, cell_size, fit, WHITE)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(float) - b.astype(float)) ** 2).mean())
    return 10 * np.log10(255 ** 2 / max(mse, 1e-9))


@pytest.mark.parametrize("fit", ["fit", "fill"])
@pytest.mark.parametrize("size", [(600, 800), (1200, 1600), (1500, 900)])
def test_direct_decode_makes_thumbnails_picture(tmp_path, monkeypatch, fit, size):
    path = tmp_path / "photo.jpg"
    Image.fromarray(smooth_picture(*size)).save(path, quality=92)
    expected = thumbnail_cell(path, 128, fit)
    other = tmp_path / "other.jpg"
    Image.fromarray(smooth_picture(*size, seed=9)).save(other, quality=92)
    other_expected = thumbnail_cell(other, 128, fit)
    calls = []
    monkeypatch.setattr(thumbnail, "_thumbnail", lambda *a, **k: calls.append(a))
    cell = thumbnail.decode_image(path, cell_size=128, fit=fit).cell
    assert calls == []  # the direct path, not thumbnail
    assert cell.shape == (128, 128, 3)
    assert psnr(cell, expected) > 35, psnr(cell, expected)
    # Negative control: another picture's cell is far from it.
    assert psnr(other_expected, cell) < 25


def test_direct_decode_applies_exif_rotation(tmp_path):
    """A landscape picture stored sideways with orientation 6 comes out as
    thumbnail makes it: upright."""
    upright = smooth_picture(600, 900, seed=2)
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # 900 x 600, turned left
    path = tmp_path / "turned.jpg"
    image = pyvips.Image.new_from_array(stored, interpretation="srgb")
    image = image.copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", 6)
    image.write_to_file(str(path), Q=92)
    decoded = thumbnail.decode_image(path, cell_size=128)
    assert (decoded.width, decoded.height) == (900, 600)
    assert psnr(decoded.cell, thumbnail_cell(path, 128, "fit")) > 28
    assert psnr(decoded.cell, thumbnail.square_array(upright, 128, "fit", WHITE)) > 28


def test_a_jpeg_large_even_at_one_eighth_goes_through_thumbnail(tmp_path, monkeypatch):
    path = tmp_path / "huge.jpg"
    side = 8 * 520  # 520 x 520 at 1/8: over the direct budget of 512 x 512
    Image.new("RGB", (side, side), (30, 90, 160)).save(path, quality=80)
    calls = []
    real = thumbnail._thumbnail
    monkeypatch.setattr(thumbnail, "_thumbnail",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    cell = thumbnail.decode_image(path, cell_size=128).cell
    assert len(calls) == 1
    assert np.abs(cell.astype(int) - (30, 90, 160)).max() <= 3
