"""Thumbnail stage: decode each image once into a square cell.

libvips decodes every image, except small 8-bit PNGs (at most
``DIRECT_DECODE_PIXELS``) and RGB or grey JPEGs that are that small once shrunk on
load, which Pillow decodes to the very same pixels (``_pillow_pixels``): libvips's fixed
cost per file is several times a 64-px PNG's decode and about a 500-px JPEG's.
The same decode also yields the model input for pixel-based embeddings, so no
image is ever read twice in one pass. Files that must not reach libvips (links
that loop or dangle, FIFOs, devices, empty or unreadable files) are refused
first with their own reason; a file that fails is decoded once more, alone, so
that its reason is not mixed with other threads' libvips messages.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import stat
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvips
from PIL import Image

from mosaic.errors import ImageError

FITS = ("fit", "fill")
DEFAULT_MAX_PIXELS = 40_000 * 40_000
# Images up to this many pixels are decoded whole rather than through thumbnail(),
# whose shrink-on-load setup costs more than it saves on small images.
DIRECT_DECODE_PIXELS = 512 * 512
# Which decoder made a cell: part of the decode stage's cache key, so that a change
# that alters cell pixels never mixes old and new cells in one bundle on resume.
# 2: JPEGs that are small once shrunk on load are decoded whole (not by thumbnail).
# 3: a JPEG read through a descriptor (a name that is not UTF-8) is shrunk on load too.
DECODER = 3
# EXIF orientations 5..8 swap width and height.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


@dataclass(frozen=True)
class DecodedImage:
    """One decoded image.

    cell: uint8 (cell_size, cell_size, 3), sRGB, upright.
    model_input: uint8 (model_size, model_size, 3) or None.
    width, height: the upright size of the source image in pixels.
    picture: uint8 (picture_side, picture_side, 3) or None: the picture the cell
    shows, resized to a square without letterbox bars (``fit``: squashed, its aspect
    ignored; ``fill``: the cell's centre square), for the ``pixels`` embedding.
    """

    cell: np.ndarray
    model_input: np.ndarray | None
    width: int
    height: int
    picture: np.ndarray | None = None


def decode_image(
    path: str | Path | bytes,
    cell_size: int = 128,
    fit: str = "fit",
    background: tuple[int, int, int] = (255, 255, 255),
    model_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    picture_side: int | None = None,
) -> DecodedImage:
    """Decode ``path`` once and return its cell (and model input and the square
    ``picture`` for the ``pixels`` embedding, if asked).

    ``fit="fit"`` letterboxes the whole image on ``background``;
    ``fit="fill"`` crops the centre square. Raises ImageError with a short
    reason for any file libvips cannot decode. ``bytes`` are a file's contents (an
    upload), decoded from memory through the same steps, to the same pixels.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    if isinstance(path, bytes):
        if not path:
            raise ImageError("empty file (0 bytes)")
    else:
        path = os.fspath(path)
        _check_file(path)
    options = dict(cell_size=cell_size, fit=fit, background=background, model_size=model_size,
                   max_pixels=max_pixels, picture_side=picture_side)
    try:
        with _ERROR_BUFFER.shared():
            return _decode(path, **options)
    except pyvips.Error:
        pass
    # libvips keeps one error buffer per process, so a failure seen while other
    # threads decode may carry their messages or lose its own. Decode it again
    # alone to record its own reason.
    with _ERROR_BUFFER.exclusive():
        pyvips.vips_lib.vips_error_clear()
        try:
            return _decode(path, **options)
        except pyvips.Error as error:
            raise ImageError(_short_reason(error)) from None


def _decode(path: str | bytes, cell_size: int, fit: str, background: tuple[int, int, int],
            model_size: int | None, max_pixels: int, picture_side: int | None) -> DecodedImage:
    box = max(cell_size, model_size or 0)
    pillow = _pillow_pixels(path, box, fit, background, max_pixels)
    if pillow is not None:
        base, width, height = pillow
    else:
        base, width, height = _vips_pixels(path, cell_size, fit, background, model_size,
                                           max_pixels)
    cell = square_array(base, cell_size, fit, background)
    model_input = square_array(base, model_size, fit, background) if model_size else None
    picture = None
    if picture_side:
        # fit: the whole picture squashed; fill: its centre square (the large-image path's
        # thumbnail is already that square, the small-image path's base is not)
        picture = resample(base, picture_side, picture_side) if fit == "fit" else \
            square_array(base, picture_side, "fill", background)
    return DecodedImage(cell=cell, model_input=model_input, width=width, height=height,
                        picture=picture)


def _vips_pixels(path: str | bytes, cell_size: int, fit: str, background: tuple[int, int, int],
                 model_size: int | None, max_pixels: int) -> tuple[np.ndarray, int, int]:
    """The picture decoded by libvips as uint8 (h, w, 3) sRGB on ``background``, upright,
    whole or shrunk on load to at least the cell's box; and the upright source size."""
    with _vips_source(path) as source:
        header = _load(source)
        width, height = header.width, header.height
        if width * height > max_pixels:
            raise ImageError(
                f"image is {width}x{height} = {width * height} pixels, over the "
                f"--max-pixels limit of {max_pixels} (possible decompression bomb)"
            )
        if _orientation(header) in _TRANSPOSED_ORIENTATIONS:
            width, height = height, width
        box = max(cell_size, model_size or 0)
        shrink = _jpeg_shrink(header, box, fit)
        if header.width * header.height <= DIRECT_DECODE_PIXELS * shrink * shrink:
            # Small once loaded: decode it whole (cheaper than thumbnail's set-up and its
            # second resize), a JPEG at the smallest DCT scale that still covers the box
            # (an 800 x 600 photo at 1/4: 2.3 ms against thumbnail's 5.0), and let the
            # cell's own area filter (square_array) do the rest.
            if shrink > 1:
                header = _load(source, shrink=shrink)
            if _orientation(header) != 1:
                base = _pixels(_to_srgb(header.autorot(), background))
            else:
                base = _srgb_pixels(header, background)
        else:
            # Large image: shrink-on-load keeps memory bounded (e.g. 30000 x 30000 JPEGs).
            base = _thumbnail(source, box, crop="centre" if fit == "fill" else "none")
            base = _pixels(_to_srgb(base, background))
    return base, width, height


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types whose 8-bit samples Pillow decodes to the values libvips gives:
# 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA (tests/test_decode_fast_path.py).
_PIL_PNG_COLOUR_TYPES = {2, 3, 4, 6}


def _pillow_pixels(path: str | bytes, box: int, fit: str, background: tuple[int, int, int],
                   max_pixels: int) -> tuple[np.ndarray, int, int] | None:
    """A small PNG or JPEG decoded by Pillow to the very bytes libvips would give
    (``_small_png_pixels``, ``_small_jpeg_pixels``), and its upright source size; None
    for anything else, which libvips decodes (and, if it fails, says why)."""
    try:
        head = _head(path)
    except OSError:
        return None
    if head[:3] == JPEG_SIGNATURE:
        return _small_jpeg_pixels(path, box, fit, max_pixels)
    pixels = _small_png_pixels(path, background, max_pixels, head)
    return None if pixels is None else (pixels, pixels.shape[1], pixels.shape[0])


def _head(path: str | bytes) -> bytes:
    """A file's first 26 bytes: enough for a JPEG's signature and a PNG's IHDR."""
    if isinstance(path, bytes):
        return path[:26]
    with open(path, "rb") as handle:
        return handle.read(26)


JPEG_SIGNATURE = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the pixel permutation that makes the stored picture upright, as
# libvips's autorot does it (tests/test_decode_fast_path.py checks all eight).
_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a[::-1].transpose(1, 0, 2),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: a[:, ::-1].transpose(1, 0, 2),
}


def jpeg_at_scale(image: Image.Image, shrink: int) -> np.ndarray | None:
    """An open Pillow JPEG decoded at 1/``shrink`` (1, 2, 4 or 8) in the DCT domain, as
    libjpeg-turbo gives it: uint8 (ceil(h / shrink), ceil(w / shrink)[, 3]), the last
    partial row and column kept; None if Pillow would not decode it at that scale."""
    width, height = image.size
    if shrink > 1:
        # asks for exactly 1/shrink: Pillow picks the largest scale that keeps the
        # picture at least this size
        image.draft(image.mode, (width // shrink, height // shrink))
        if image.size != (-(-width // shrink), -(-height // shrink)):
            return None
    image.load()
    return np.asarray(image)


def _small_jpeg_pixels(path: str | bytes, box: int, fit: str,
                       max_pixels: int) -> tuple[np.ndarray, int, int] | None:
    """A JPEG that is small once shrunk on load, decoded by Pillow at the DCT scale
    libvips's ``jpegload`` would use (``dct_shrink``), as libvips gives it: uint8
    (h, w, 3) sRGB, upright; and its upright source size. None for anything else.

    Both libraries decode with libjpeg-turbo's default (accurate) IDCT and fancy
    upsampling, so the samples are the same; libvips drops the last partial row and
    column of a shrunk picture (``floor(side / shrink)``) where Pillow keeps it, and that
    is cropped here. libvips's fixed cost per file (loader sniffing, two header reads,
    a pipeline) is about as much as the decode itself: Pillow takes half the time on
    the benchmark's 256-800 px JPEGs. Only 8-bit RGB and grey JPEGs with an EXIF
    orientation of 1-8 take this path; CMYK, a picture still large at the scale, one
    over ``max_pixels``, and any file Pillow cannot read go to libvips.
    """
    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path,
                        formats=("JPEG",)) as image:
            width, height = image.size
            if image.mode not in ("RGB", "L") or width * height > max_pixels:
                return None
            shrink = dct_shrink(width, height, box, fit)
            if width * height > DIRECT_DECODE_PIXELS * shrink * shrink or \
                    min(width, height) < shrink:
                return None
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            if orientation not in _UPRIGHT:
                return None
            pixels = jpeg_at_scale(image, shrink)
            if pixels is None:
                return None
            pixels = pixels[:height // shrink, :width // shrink]
    except Exception:  # noqa: BLE001 -- libvips decodes it again and says why it fails
        return None
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return _UPRIGHT[orientation](pixels), width, height


def _small_png_pixels(path: str | bytes, background: tuple[int, int, int],
                      max_pixels: int, head: bytes | None = None) -> np.ndarray | None:
    """A small 8-bit PNG decoded by Pillow, as libvips would give it: uint8 (h, w, 3)
    on ``background``; None for anything else (libvips decodes it then).

    libvips costs about 0.5-1 ms of fixed setup per file (loader, libspng, pipeline),
    several times what decoding a 64-px PNG takes; Pillow decodes one in about
    0.2 ms. PNG is lossless, so both give the same samples: the path is taken only
    for the colour types and depths where tests/test_decode_fast_path.py checks that
    they do (bit-identical pixels), never for 16-bit, low-bit grey, grey with a
    transparent colour, or a file with EXIF (libvips applies its orientation). A file
    Pillow cannot read goes to libvips too, which gives the reason it is skipped.
    """
    try:
        head = _head(path) if head is None else head
        if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
            return None
        width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
        if (colour not in _PIL_PNG_COLOUR_TYPES or (depth != 8 and colour != 3)
                or width * height > min(DIRECT_DECODE_PIXELS, max_pixels)):
            return None
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path,
                        formats=("PNG",)) as image:
            image.load()
            if "exif" in image.info or image.size != (width, height):
                return None
            if image.mode == "RGB" and "transparency" not in image.info:
                return np.asarray(image)
            if image.mode not in ("RGB", "RGBA", "P", "LA"):
                return None
            if image.mode != "RGBA":
                has_alpha = image.mode == "LA" or "transparency" in image.info
                image = image.convert("RGBA" if has_alpha else "RGB")
                if not has_alpha:
                    return np.asarray(image)
            return flatten_alpha(np.asarray(image), background)
    except Exception:  # noqa: BLE001 -- libvips decodes it again and says why it fails
        return None


class _SharedLock:
    """A readers-writer lock: many decodes at once, or one alone (writers first)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            while self._writer:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            while self._writer:
                self._condition.wait()
            self._writer = True
            while self._readers:
                self._condition.wait()
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
                self._condition.notify_all()


_ERROR_BUFFER = _SharedLock()


def _check_file(path: str) -> None:
    """ImageError for a path that must not reach libvips, with the specific reason.

    A FIFO or a device named like an image would block or never end, and a
    symlink loop, a dangling link or a permission error would otherwise all be
    reported by libvips as "does not exist".
    """
    try:
        info = os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageError("symbolic link loop (too many levels of symbolic links)") from None
        if error.errno == errno.ENOENT and os.path.islink(path):
            raise ImageError(f"dangling symbolic link to {os.readlink(path)!r}") from None
        raise ImageError(f"cannot read the file: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device"
                if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a socket"
                if stat.S_ISSOCK(info.st_mode) else "a folder" if stat.S_ISDIR(info.st_mode)
                else "a special file")
        raise ImageError(f"not a regular file ({kind})")
    if info.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise ImageError(f"cannot read the file: {error.strerror}") from None


@contextmanager
def _vips_source(path: str | bytes) -> Iterator[str | pyvips.Source]:
    """The path itself, or a descriptor source for names libvips cannot take, or a
    memory source for a file's bytes.

    libvips takes file names as UTF-8; a name that is not (undecodable bytes,
    which Python keeps as surrogates) is opened here and read through its
    descriptor instead. Shrink-on-load works either way.
    """
    if isinstance(path, bytes):
        yield pyvips.Source.new_from_memory(path)
        return
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        descriptor = os.open(os.fsencode(path), os.O_RDONLY)
        try:
            yield pyvips.Source.new_from_descriptor(descriptor)
        finally:
            os.close(descriptor)
        return
    yield path


def _load(source: str | pyvips.Source, **options) -> pyvips.Image:
    """The image header (pixels are decoded lazily, on demand)."""
    if isinstance(source, str):
        return pyvips.Image.new_from_file(source, fail_on="error", **options)
    return pyvips.Image.new_from_source(source, "", fail_on="error", **options)


def _jpeg_shrink(header: pyvips.Image, box: int, fit: str) -> int:
    """``dct_shrink`` for a libvips header: 1 unless it was read by the JPEG loader."""
    # jpegload from a file name; jpegload_source from a descriptor or a file's bytes
    if header.get_typeof("vips-loader") == 0 or \
            header.get("vips-loader") not in ("jpegload", "jpegload_source"):
        return 1
    return dct_shrink(header.width, header.height, box, fit)


def dct_shrink(width: int, height: int, box: int, fit: str) -> int:
    """The largest JPEG load shrink (1, 2, 4 or 8) that leaves the side the cell is cut
    from (the longest for ``fit``, the shortest for ``fill``) at least ``box``: libjpeg
    scales in the DCT domain, and the area filter does the rest."""
    side = max(width, height) if fit == "fit" else min(width, height)
    shrink = 1
    while shrink < 8 and side // (shrink * 2) >= box:
        shrink *= 2
    return shrink


def _thumbnail(source: str | pyvips.Source, box: int, crop: str) -> pyvips.Image:
    """Shrink-on-load thumbnail fitting a ``box`` square, upright (EXIF applied)."""
    if isinstance(source, str):
        return pyvips.Image.thumbnail(source, box, height=box, crop=crop, fail_on="error")
    return pyvips.Image.thumbnail_source(source, box, height=box, crop=crop, fail_on="error")


def _orientation(image: pyvips.Image) -> int:
    if image.get_typeof("orientation"):
        return int(image.get("orientation"))
    return 1


def _to_srgb(image: pyvips.Image, background: tuple[int, int, int]) -> pyvips.Image:
    """Any interpretation, depth or alpha -> 3-band 8-bit sRGB on ``background``."""
    if image.interpretation == "cmyk":
        image = image.icc_transform("srgb", input_profile="cmyk", embedded=True)
    elif image.interpretation != "srgb" or image.format != "uchar":
        image = image.colourspace("srgb")
    if image.hasalpha():
        image = image.flatten(background=list(background))
    if image.bands > 3:
        image = image.extract_band(0, n=3)
    elif image.bands == 1:
        image = image.bandjoin([image, image])
    return image if image.format == "uchar" else image.cast("uchar")


def _pixels(image: pyvips.Image) -> np.ndarray:
    """A 3-band 8-bit libvips image computed into a new uint8 (h, w, 3) array.

    ``write_to_memory`` with the shape known: the same bytes as ``image.numpy()``
    without its per-call format look-ups, which cost more than a small image's decode.
    """
    return np.frombuffer(image.write_to_memory(), dtype=np.uint8).reshape(
        image.height, image.width, 3)


def _srgb_pixels(image: pyvips.Image, background: tuple[int, int, int]) -> np.ndarray:
    """``_pixels(_to_srgb(image, background))``, the same bytes, with one libvips call
    for the commonest kinds of small image (8-bit sRGB, with or without alpha),
    computed in the calling thread.

    Those are decoded as they are and flattened here, exactly as libvips's ``flatten``
    does for 8-bit pixels: ``(value * alpha + background * (255 - alpha)) // 255``
    (tests/test_pipeline.py compares the two on every value, alpha and several
    backgrounds). Each libvips operation called from Python costs about 0.2 ms of
    setup, more than decoding a 64-px PNG; anything else goes through ``_to_srgb``.
    """
    bands = image.bands
    if bands not in (3, 4) or image.format != "uchar" or image.interpretation != "srgb":
        return _pixels(_to_srgb(image, background))
    width, height = image.width, image.height
    # A region computes in this thread; write_to_memory hands the work to a libvips
    # worker thread and waits for it, which costs more than the decode here.
    pixels = np.frombuffer(pyvips.Region.new(image).fetch(0, 0, width, height),
                           dtype=np.uint8).reshape(height, width, bands)
    if bands == 3:
        return pixels
    return flatten_alpha(pixels, background)


def flatten_alpha(pixels: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """uint8 (h, w, 4) RGBA on ``background`` -> a new uint8 (h, w, 3), rounding as
    libvips's ``flatten`` does for 8-bit images (integer division, no rounding up).

    Through a table per band of every (alpha, value) pair: a lookup is cheaper than the
    arithmetic on small images."""
    table = _flatten_table(tuple(int(c) for c in background))
    index = pixels[..., 3].astype(np.uint16) << 8
    flat = np.empty(pixels.shape[:2] + (3,), dtype=np.uint8)
    for band in range(3):
        np.take(table[band], index | pixels[..., band], out=flat[..., band])
    return flat


@functools.lru_cache(maxsize=8)
def _flatten_table(background: tuple[int, int, int]) -> np.ndarray:
    """uint8 (3, 65536): band b's flattened value at ``alpha << 8 | value``."""
    alpha = np.arange(256, dtype=np.uint32)[:, None]
    value = np.arange(256, dtype=np.uint32)[None, :]
    return np.stack([((value * alpha + c * (255 - alpha)) // 255).astype(np.uint8).ravel()
                     for c in background])


def square_array(image: np.ndarray, size: int, fit: str,
                 background: tuple[int, int, int]) -> np.ndarray:
    """An (h, w, 3) uint8 image as a ``size`` square: letterboxed on ``background``
    (``fit``) or centre-cropped (``fill``), resampled with an area filter."""
    height, width = image.shape[:2]
    if fit == "fill":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return resample(image[top:top + side, left:left + side], size, size)
    scale = size / max(height, width)
    new_height = min(size, max(1, round(height * scale)))
    new_width = min(size, max(1, round(width * scale)))
    if new_height == new_width == size:  # a square picture: no bars to draw
        return resample(image, size, size)
    square = np.empty((size, size, 3), dtype=np.uint8)
    square[:] = background
    top, left = (size - new_height) // 2, (size - new_width) // 2
    square[top:top + new_height, left:left + new_width] = resample(image, new_height, new_width)
    return square


def resample(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (h, w, 3) uint8 to (height, width, 3): area average (box filter) down,
    linear up; Pillow's C resampler, separable."""
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    down = height <= image.shape[0] and width <= image.shape[1]
    resized = Image.fromarray(np.ascontiguousarray(image), "RGB").resize(
        (width, height), Image.Resampling.BOX if down else Image.Resampling.BILINEAR)
    return np.asarray(resized)


def _short_reason(error: pyvips.Error) -> str:
    """libvips's messages for one failure, each once, on one line."""
    lines = [" ".join(line.split()) for line in str(error.detail or error.message).splitlines()]
    text = "; ".join(dict.fromkeys(line for line in lines if line))
    return text[:300] or "libvips could not decode the file"


def raw_vector(cell: np.ndarray, side: int = 16) -> np.ndarray:
    """The raw-pixel embedding: the cell box-filtered to ``side`` x ``side`` RGB, uint8
    (the stored form; the vector is this / 255)."""
    size = cell.shape[0]
    if size % side == 0:
        block = size // side
        sums = cell.reshape(side, block, side, block, 3).sum(axis=(1, 3), dtype=np.uint32)
        small = sums / (block * block)
    else:
        image = pyvips.Image.new_from_array(cell, interpretation="srgb")
        small = image.thumbnail_image(side, height=side, size="force").numpy()
    return np.clip(np.rint(small.reshape(-1)), 0, 255).astype(np.uint8)
