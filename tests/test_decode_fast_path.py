"""The small-image decode's shortcuts give the bytes of the general libvips path.

``thumbnail._srgb_pixels`` decodes 8-bit sRGB images with one libvips call and
flattens their alpha in numpy, and ``thumbnail._small_png_pixels`` decodes small
8-bit PNGs with Pillow; these tests hold both to the general path (libvips's
loader, ``_to_srgb``, then ``numpy()``), which every other kind of image takes.
"""

import numpy as np
import pytest
import pyvips
from PIL import Image

from mosaic.pipeline import thumbnail

BACKGROUNDS = [(255, 255, 255), (0, 0, 0), (128, 128, 128), (12, 200, 77)]


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_flatten_alpha_is_libvips_flatten_for_every_value_and_alpha(background):
    value, alpha = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    rgba = np.stack([value, 255 - value, value, alpha], axis=-1).astype(np.uint8)
    expected = pyvips.Image.new_from_array(rgba, interpretation="srgb").flatten(
        background=list(background)).numpy()
    assert np.array_equal(thumbnail.flatten_alpha(rgba, background), expected)


def _general(path, background):
    """The general path: libvips decodes, converts and flattens."""
    image = pyvips.Image.new_from_file(str(path), fail_on="error")
    return thumbnail._to_srgb(image, background).numpy()


def _images(folder):
    """Small images of every kind a PNG or JPEG may hold, with noise and soft alpha."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (40, 56), dtype=np.uint8)
    made = {
        "rgba.png": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "rgb.png": Image.fromarray(rgb, "RGB"),
        "grey.png": Image.fromarray(rgb[..., 0], "L"),
        "grey-alpha.png": Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"),
        "palette.png": Image.fromarray(rgb, "RGB").quantize(64),
        "rgb.jpg": Image.fromarray(rgb, "RGB"),
        "grey.jpg": Image.fromarray(rgb[..., 0], "L"),
        "cmyk.jpg": Image.fromarray(rgb, "RGB").convert("CMYK"),
    }
    palette = Image.fromarray(rgb, "RGB").quantize(16)
    palette.info["transparency"] = 3
    made["palette-transparent.png"] = palette
    paths = []
    for name, image in made.items():
        path = folder / name
        image.save(path, **({"transparency": 3} if name == "palette-transparent.png" else {}))
        paths.append(path)
    path = folder / "rgba16.png"  # 16-bit RGBA: not 8-bit, so the general path
    pyvips.Image.new_from_array(
        (np.dstack([rgb, alpha]).astype(np.uint16) * 257), interpretation="rgb16").pngsave(
        str(path))
    paths.append(path)
    return paths


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_small_image_pixels_equal_the_general_path(tmp_path, background):
    for path in _images(tmp_path):
        image = pyvips.Image.new_from_file(str(path), fail_on="error")
        general = thumbnail._to_srgb(image, background).numpy()
        fast = thumbnail._srgb_pixels(image, background)
        assert fast.dtype == np.uint8 and fast.shape == general.shape, path.name
        assert np.array_equal(fast, general), path.name


def test_decoded_cells_equal_the_general_path(tmp_path):
    """decode_image's cell, end to end, is the cell made from the general path's pixels."""
    for path in _images(tmp_path):
        decoded = thumbnail.decode_image(path, cell_size=32, picture_side=16)
        base = thumbnail._to_srgb(pyvips.Image.new_from_file(str(path)), (255, 255, 255)).numpy()
        assert np.array_equal(decoded.cell,
                              thumbnail.square_array(base, 32, "fit", (255, 255, 255))), path.name
        assert np.array_equal(decoded.picture, thumbnail.resample(base, 16, 16)), path.name


def _pngs(folder):
    """PNGs of every colour type and depth, with and without transparency and interlace,
    and whether Pillow is expected to decode each (True) or libvips (False)."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (33, 47), dtype=np.uint8)
    alpha[:4] = 0
    alpha[-4:] = 255
    cases = []

    def add(name, image, expect, **save):
        path = folder / name
        image.save(path, **save)
        cases.append((path, expect))

    add("rgba.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), True)
    add("rgba-interlaced.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), True,
        interlace=1)
    add("rgb.png", Image.fromarray(rgb, "RGB"), True)
    add("rgb-trns.png", Image.fromarray(rgb, "RGB"), True,
        transparency=tuple(int(c) for c in rgb[0, 0]))
    add("grey-alpha.png", Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"), True)
    for colours, bits in ((2, 1), (4, 2), (16, 4), (200, 8)):
        palette = Image.fromarray(rgb, "RGB").quantize(colours)
        add(f"palette-{bits}bit.png", palette, True, bits=bits)
        add(f"palette-{bits}bit-trns.png", palette, True, bits=bits, transparency=1)
        palette_alpha = palette.copy()
        palette_alpha.info["transparency"] = bytes(range(0, 256, 256 // colours))[:colours]
        add(f"palette-{bits}bit-alpha.png", palette_alpha, True, bits=bits)
    add("grey.png", Image.fromarray(rgb[..., 0], "L"), False)
    add("grey-1bit.png", Image.fromarray(rgb[..., 0] > 128), False)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: libvips turns it upright
    add("rgb-exif.png", Image.fromarray(rgb, "RGB"), False, exif=exif.tobytes())
    path = folder / "rgba16.png"
    pyvips.Image.new_from_array(np.dstack([rgb, alpha]).astype(np.uint16) * 257,
                                interpretation="rgb16").pngsave(str(path))
    cases.append((path, False))
    path = folder / "truncated.png"
    path.write_bytes((folder / "rgba.png").read_bytes()[:300])
    cases.append((path, False))
    return cases


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_pillow_decodes_small_pngs_to_the_libvips_bytes(tmp_path, background):
    for path, expect in _pngs(tmp_path):
        fast = thumbnail._small_png_pixels(str(path), background, 10**8)
        assert (fast is not None) == expect, path.name
        if fast is not None:
            assert fast.dtype == np.uint8, path.name
            assert np.array_equal(fast, _general(path, background)), path.name


def test_pillow_leaves_large_pngs_and_the_pixel_limit_to_libvips(tmp_path):
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (40, 30), "red").save(small)
    Image.new("RGB", (thumbnail.DIRECT_DECODE_PIXELS // 100 + 1, 100), "red").save(large)
    assert thumbnail._small_png_pixels(str(large), (255, 255, 255), 10**8) is None
    assert thumbnail._small_png_pixels(str(small), (255, 255, 255), 1199) is None
    assert thumbnail._small_png_pixels(str(small), (255, 255, 255), 1200) is not None
