"""The small-image decode's shortcuts give the bytes of the general libvips path.

``thumbnail._srgb_pixels`` decodes 8-bit sRGB images with one libvips call and
flattens their alpha in numpy, ``thumbnail._small_png_pixels`` decodes small
8-bit PNGs with Pillow, and ``thumbnail._small_jpeg_pixels`` RGB and grey JPEGs at
libvips's DCT scale; these tests hold them to the general path (libvips's loader,
``_to_srgb``, then ``numpy()``, or ``_vips_pixels``), which every other image takes.
A chunk's read ahead (``decode.read_ahead``) changes none of its arrays either.
"""

import os
import threading

import numpy as np
import pytest
import pyvips
from PIL import Image

from mosaic.pipeline import decode, thumbnail

WHITE = (255, 255, 255)
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


def _vips_decode(source, box, fit):
    """The libvips path for the same picture: its pixels and upright source size."""
    return thumbnail._vips_pixels(source, box, fit, (255, 255, 255), None, 10**9)


def _photo(height, width, seed=0):
    """A photo-like picture (smooth colour and edges plus grain) that JPEG keeps detail of."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    picture = np.stack([128 + 100 * np.sin(7 * x + 2 * y), 128 + 90 * np.cos(5 * y),
                        128 + 80 * np.sin(9 * x * y + 1)], axis=-1)
    picture += rng.normal(0, 12, picture.shape)
    return picture.clip(0, 255).astype(np.uint8)


# (height, width): sides that are not multiples of the DCT scale, so a shrunk picture has
# a partial last row and column (libvips drops them, Pillow keeps them)
JPEG_SIZES = [(97, 61), (150, 181), (301, 229), (419, 603), (645, 1283), (1210, 903)]


@pytest.mark.parametrize("fit", ["fit", "fill"])
@pytest.mark.parametrize("box", [64, 128])
def test_pillow_decodes_jpegs_at_each_dct_scale_to_the_libvips_bytes(tmp_path, fit, box):
    shrinks = set()
    for height, width in JPEG_SIZES:
        picture = _photo(height, width, seed=height)
        for mode, pixels in (("RGB", picture), ("L", picture[..., 1])):
            path = tmp_path / f"{height}x{width}-{mode}.jpg"
            Image.fromarray(pixels, mode).save(path, quality=85)
            fast = thumbnail._pillow_pixels(str(path), box, fit, WHITE, 10**9)
            assert fast is not None, path.name
            expected = _vips_decode(str(path), box, fit)
            assert fast[1:] == expected[1:], path.name
            assert fast[0].dtype == np.uint8 and fast[0].shape == expected[0].shape, path.name
            assert np.array_equal(fast[0], expected[0]), path.name
            shrinks.add(thumbnail.dct_shrink(width, height, box, fit))
    assert len(shrinks) >= 3  # several DCT scales reached with these sizes and boxes


@pytest.mark.parametrize("orientation", range(1, 9))
def test_pillow_turns_jpegs_upright_as_libvips_does(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(_photo(301, 467), "RGB").save(path, quality=90, exif=exif.tobytes())
    for source in (str(path), path.read_bytes()):  # a file and an upload's bytes
        fast = thumbnail._pillow_pixels(source, 64, "fit", WHITE, 10**9)
        expected = _vips_decode(source, 64, "fit")
        assert fast is not None and fast[1:] == expected[1:]
        assert (fast[2] > fast[1]) == (orientation >= 5)  # upright size: 5-8 swap the sides
        assert np.array_equal(fast[0], expected[0])
    # negative control: the same pixels with the orientation ignored differ
    if orientation != 1:
        plain = tmp_path / "plain.jpg"
        Image.fromarray(_photo(301, 467), "RGB").save(plain, quality=90)
        stored = thumbnail._pillow_pixels(str(plain), 64, "fit", WHITE, 10**9)[0]
        assert stored.shape != fast[0].shape or not np.array_equal(stored, fast[0])


def test_jpegs_pillow_does_not_take_go_to_libvips(tmp_path):
    picture = _photo(120, 160)
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(picture, "RGB").convert("CMYK").save(cmyk)
    huge = tmp_path / "huge.jpg"  # still over DIRECT_DECODE_PIXELS at 1/8
    Image.new("RGB", (8 * 700, 8 * 400), "red").save(huge)
    small = tmp_path / "small.jpg"
    Image.fromarray(picture, "RGB").save(small)
    assert thumbnail._pillow_pixels(str(cmyk), 64, "fit", WHITE, 10**9) is None
    assert thumbnail._pillow_pixels(str(huge), 64, "fit", WHITE, 10**9) is None
    assert thumbnail._pillow_pixels(str(small), 64, "fit", WHITE, 160 * 120 - 1) is None
    assert thumbnail._pillow_pixels(str(small), 64, "fit", WHITE, 160 * 120) is not None


def test_a_broken_jpeg_is_never_decoded_where_libvips_refuses_it(tmp_path):
    """Truncated or damaged files: Pillow either gives libvips's very pixels or leaves the
    file to libvips, whose reason the skip records; it never keeps a file libvips refuses."""
    path = tmp_path / "photo.jpg"
    Image.fromarray(_photo(400, 600), "RGB").save(path, quality=90)
    data = path.read_bytes()
    rng = np.random.default_rng(1)
    broken = [data[:600], data[:len(data) // 2], data[:-2]]
    for _ in range(6):
        damaged = bytearray(data)
        start = int(rng.integers(len(data) // 3, len(data) - 300))
        damaged[start:start + int(rng.integers(1, 200))] = bytes(rng.integers(0, 256, 1))
        broken.append(bytes(damaged))
    refused = 0
    for source in broken:
        fast = thumbnail._pillow_pixels(source, 128, "fit", WHITE, 10**9)
        try:
            expected = _vips_decode(source, 128, "fit")
        except pyvips.Error:
            assert fast is None
            refused += 1
            with pytest.raises(thumbnail.ImageError):
                thumbnail.decode_image(source)
            continue
        if fast is not None:
            assert np.array_equal(fast[0], expected[0])
    assert refused >= 3  # the truncated ones at least


def test_a_chunk_asks_for_its_files_ahead_and_decodes_them_as_before(tmp_path, monkeypatch):
    """decode_chunk advises the kernel to read each file of its chunk it can open
    (POSIX_FADV_WILLNEED) before decoding any; a missing file still fails with the
    decode's own reason, and the chunk's arrays are those of a decode without it."""
    paths = []
    for number in range(3):
        path = tmp_path / f"p{number}.jpg"
        pixels = np.random.default_rng(number).integers(0, 256, (40 + number, 60, 3))
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        paths.append(str(path.resolve()))
    paths[1] = str(tmp_path.resolve() / "missing.jpg")
    advised = []
    advise = os.posix_fadvise

    def recording(fd, offset, length, advice):
        advised.append((os.readlink(f"/proc/self/fd/{fd}"), advice))
        advise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    options = decode.DecodeOptions(cell_size=32, fit="fit", background=(255, 255, 255),
                                   max_pixels=10**8, kinds=("pixels", "raw"))
    task = decode.ChunkTask(0, (0, 1, 2), tuple(paths), options)
    chunk = decode.decode_chunk(task)
    assert advised == [(paths[0], os.POSIX_FADV_WILLNEED), (paths[2], os.POSIX_FADV_WILLNEED)]
    assert chunk["status"].tolist() == [decode.DONE, decode.FAILED, decode.DONE]
    monkeypatch.setattr(decode, "read_ahead", lambda paths: None)
    plain = decode.decode_chunk(task)
    assert chunk.keys() == plain.keys()
    for name, array in plain.items():
        np.testing.assert_array_equal(chunk[name], array, err_msg=name)


def test_read_ahead_passes_over_what_is_not_a_regular_file(tmp_path):
    """A FIFO among the inputs is neither waited on (opening it for reading would block
    until a writer came) nor advised; a missing path and a folder are passed over."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    worker = threading.Thread(target=decode.read_ahead,
                              args=([str(fifo), str(tmp_path / "missing.jpg"), str(tmp_path)],),
                              daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "read_ahead blocked on a FIFO"
