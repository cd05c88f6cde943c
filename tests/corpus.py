"""A generated corpus of bad, odd and extreme inputs for the pipeline (issue 5).

``write_bad_corpus(folder)`` writes every kind of input listed in
docs/reliability.md into ``folder`` and returns one ``CorpusCase`` per file,
saying what the pipeline must do with it:

- ``render``: the file becomes an item; ``size`` (the upright source size) and
  ``colours`` (points of the upright image and their colour) check its cell;
- ``skip``: the file is listed in ``manifest["skipped"]`` with a reason that
  matches ``reason`` (a case-insensitive regular expression);
- ``ignore``: not an image suffix, so the file is listed in
  ``manifest["ignored_files"]`` and is not an input at all.

Nothing here is committed as a binary: every file is made by libvips, numpy or
by hand (the decompression bomb is assembled chunk by chunk, in a second). The
only slow file is the 30000 x 30000 JPEG (about 8 s to encode); pass
``huge=False`` to leave it out.

``write_metadata_csv(path, ...)`` writes the metadata CSV with the CSV faults
(BOM, CRLF, quoted newlines, extra columns, rows without an image, images
without a row, a numeric column with blanks).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyvips

RGB = tuple[int, int, int]
RED: RGB = (220, 30, 30)
GREEN: RGB = (30, 180, 40)
BLUE: RGB = (30, 40, 220)
WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)

# The upright test picture for orientations: 64 x 48, four coloured quadrants.
# All eight EXIF orientations move these quadrants differently, and 5 to 8 also
# swap width and height, so a wrong rotation or flip cannot pass unnoticed.
QUADRANTS = ((RED, BLUE), (GREEN, WHITE))  # [top][left/right]
QUADRANT_POINTS = tuple(
    (y, x, QUADRANTS[r][c]) for r, y in enumerate((0.25, 0.75)) for c, x in enumerate((0.25, 0.75))
)
HUGE_SIDE = 30_000
BOMB_SIDE = 100_000  # 10^10 pixels: over the default --max-pixels of 1.6 * 10^9


@dataclass(frozen=True)
class CorpusCase:
    """One corpus file and what the pipeline must do with it."""

    path: str  # relative to the corpus folder
    kind: str  # a short name of the input kind, as listed in docs/reliability.md
    expect: str  # "render" | "skip" | "ignore"
    reason: str | None = None  # for "skip": regex the recorded reason must match
    size: tuple[int, int] | None = None  # for "render": upright (width, height)
    colours: tuple[tuple[float, float, RGB], ...] = ()  # (y, x) as fractions of the image
    note: str = ""

    def __post_init__(self) -> None:
        if self.expect not in ("render", "skip", "ignore"):
            raise ValueError(f"expect must be render, skip or ignore, not {self.expect!r}")
        if self.colours and self.size is None:
            raise ValueError(f"{self.path}: colour checks need the upright size")


@dataclass
class _Writer:
    folder: Path
    cases: list[CorpusCase] = field(default_factory=list)

    def path(self, relative: str) -> Path:
        target = self.folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add(self, relative: str, kind: str, expect: str, **details) -> Path:
        self.cases.append(CorpusCase(relative, kind, expect, **details))
        return self.path(relative)


def solid(width: int, height: int, colour: RGB) -> np.ndarray:
    """uint8 (height, width, 3) of one colour."""
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (height, width, 3)).copy()


def quadrant_picture(width: int = 64, height: int = 48) -> np.ndarray:
    """The upright orientation picture: uint8 (height, width, 3) in four quadrants."""
    picture = np.empty((height, width, 3), dtype=np.uint8)
    for r, rows in enumerate((slice(0, height // 2), slice(height // 2, height))):
        for c, cols in enumerate((slice(0, width // 2), slice(width // 2, width))):
            picture[rows, cols] = QUADRANTS[r][c]
    return picture


def stored_for_orientation(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores so that EXIF ``orientation`` displays ``upright``.

    Written from the EXIF definition (where stored row 0 and column 0 go on
    display), independently of libvips's autorotation:
    2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 display rotates 90 clockwise,
    7 transverse, 8 display rotates 90 anticlockwise.
    """
    transforms = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1, :],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, 1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, -1),
    }
    return np.ascontiguousarray(transforms[orientation](upright))


def vips_image(array: np.ndarray, interpretation: str | None = None) -> pyvips.Image:
    """A libvips image of a uint8 (h, w) or (h, w, bands) array."""
    array = np.ascontiguousarray(array)
    if interpretation is None:
        bands = 1 if array.ndim == 2 else array.shape[2]
        interpretation = "b-w" if bands <= 2 else "srgb"
    return pyvips.Image.new_from_array(array, interpretation=interpretation)


def _save(image: pyvips.Image, path: Path, **options) -> None:
    image.write_to_file(str(path), **options)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png_bomb(path: Path, side: int = BOMB_SIDE) -> None:
    """A valid 1-bit greyscale PNG of ``side`` x ``side`` zeros, about 1 MB on disk.

    Its IDAT inflates to ``side * (side / 8 + 1)`` bytes (1.25 GB for 10^5).
    Deflate blocks are cut with full flushes, so one compressed megabyte of
    zeros is made once and repeated, then closed with the right Adler-32.
    """
    row_bytes = (side + 7) // 8 + 1  # filter byte + packed pixels, all zero
    total = row_bytes * side
    block = 1 << 20
    compressor = zlib.compressobj(9)
    head = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    n_blocks, rest = divmod(total, block)
    tail = compressor.compress(bytes(rest)) + compressor.flush(zlib.Z_FINISH)
    # Adler-32 of `total` zero bytes: A stays 1, B adds A once per byte.
    adler = ((total % 65521) << 16) | 1
    tail = tail[:-4] + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr))
        idat = [head, *([repeat] * (n_blocks - 1)), tail] if n_blocks else [tail]
        data = b"".join(idat)
        handle.write(_png_chunk(b"IDAT", data))
        handle.write(_png_chunk(b"IEND", b""))


def write_huge_jpeg(path: Path, side: int = HUGE_SIDE) -> None:
    """A ``side`` x ``side`` JPEG (left half red, right half blue), streamed by libvips.

    The pixels are computed region by region from a coordinate image, so
    writing it never holds the image in memory.
    """
    x = pyvips.Image.xyz(side, side)[0]
    image = (x < side // 2).ifthenelse(list(RED), list(BLUE)).cast("uchar")
    image.copy(interpretation="srgb").jpegsave(str(path), Q=75)


def _is_readable(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        return True
    except OSError:
        return False


def write_bad_corpus(folder: Path, huge: bool = True) -> list[CorpusCase]:
    """Write the corpus into ``folder`` (created) and return its cases, sorted by path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w = _Writer(folder)
    good = quadrant_picture()

    # -- valid controls ------------------------------------------------------
    _save(vips_image(good), w.add("ok/plain.png", "plain PNG (control)", "render", size=(64, 48),
                             colours=QUADRANT_POINTS))
    _save(vips_image(good), w.add("ok/plain.jpg", "plain JPEG (control)", "render", size=(64, 48),
                             colours=QUADRANT_POINTS), Q=95)

    # -- broken files --------------------------------------------------------
    noise = np.random.default_rng(1).integers(0, 255, (192, 256, 3), dtype=np.uint8)
    jpeg = vips_image(noise).jpegsave_buffer(Q=90)
    w.add("broken/truncated.jpg", "truncated JPEG", "skip",
          reason=r"premature end of jpeg").write_bytes(jpeg[:len(jpeg) * 6 // 10])
    w.add("broken/no-end-marker.jpg", "JPEG without its end marker (last 2 bytes)", "skip",
          reason=r"premature end of jpeg",
          note="libvips fail_on=error treats a missing EOI as truncation").write_bytes(jpeg[:-2])
    png = vips_image(noise).pngsave_buffer(compression=0)
    w.add("broken/truncated.png", "truncated PNG", "skip",
          reason=r"libpng read error|premature|truncat|end of (file|data)").write_bytes(
              png[:len(png) * 6 // 10])
    w.add("broken/empty.jpg", "zero-byte file", "skip",
          reason=r"^empty file \(0 bytes\)$").write_bytes(b"")
    w.add("broken/random.jpg", "random bytes named .jpg", "skip",
          reason=r"is not a known file format").write_bytes(
              np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    w.add("broken/text.png", "text file named .png", "skip",
          reason=r"is not a known file format").write_text("this is not a picture\n" * 20)
    w.add("broken/error-page.jpg", "HTML error page saved as .jpg", "skip",
          reason=r"is not a known file format").write_text(
              "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
              "<body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n")
    for name, other in (("loop-a.jpg", "loop-b.jpg"), ("loop-b.jpg", "loop-a.jpg")):
        os.symlink(other, w.add(f"broken/{name}", "symlink loop", "skip",
                                reason=r"^symbolic link loop"))
    os.symlink("does-not-exist.jpg", w.add("broken/dangling.jpg", "dangling symlink", "skip",
                                           reason=r"^dangling symbolic link to 'does-not-exist"))
    # A FIFO or a device would block libvips forever or stream without end.
    os.mkfifo(w.add("broken/fifo.jpg", "FIFO named .jpg", "skip",
                    reason=r"^not a regular file \(a FIFO\)$"))
    os.symlink("/dev/zero", w.add("broken/dev-zero.png", "symlink to /dev/zero", "skip",
                                  reason=r"^not a regular file \(a device\)$"))
    # A directory symlink loop: os.walk does not follow it, so it adds no input.
    os.symlink(".", folder / "broken/dir-loop")
    locked = folder / "broken/unreadable.png"
    _save(vips_image(good), locked)
    locked.chmod(0)
    if _is_readable(locked):  # root (CI containers) reads a mode-000 file anyway
        w.cases.append(CorpusCase("broken/unreadable.png", "unreadable file (chmod 000)",
                                  "render", size=(64, 48), colours=QUADRANT_POINTS,
                                  note="readable here: running as root"))
    else:
        w.cases.append(CorpusCase("broken/unreadable.png", "unreadable file (chmod 000)",
                                  "skip", reason=r"^cannot read the file: permission denied$"))

    # -- odd encodings -------------------------------------------------------
    # Saturated sRGB blue and green lie outside the CMYK gamut, so the expected
    # colours are what the stored CMYK values mean in sRGB (through libvips's
    # built-in CMYK profile): reading the file as RGB(A) or with inverted
    # (Adobe) CMYK would miss them by far more than the tolerance.
    cmyk = vips_image(good).colourspace("cmyk")
    in_srgb = cmyk.colourspace("srgb").numpy()
    cmyk_points = tuple((y, x, tuple(int(v) for v in in_srgb[int(y * 48), int(x * 64)]))
                        for y, x, _ in QUADRANT_POINTS)
    _save(cmyk, w.add("encodings/cmyk.jpg", "CMYK JPEG", "render", size=(64, 48),
                      colours=cmyk_points), Q=95)
    sixteen = (vips_image(good).cast("ushort") * 257).cast("ushort").copy(interpretation="rgb16")
    _save(sixteen, w.add("encodings/rgb16.png", "16-bit PNG", "render", size=(64, 48),
                         colours=QUADRANT_POINTS))
    bits = np.zeros((48, 64), dtype=np.uint8)
    bits[:, 32:] = 255  # left black, right white
    _save(vips_image(bits), w.add("encodings/one-bit.png", "1-bit PNG", "render", size=(64, 48),
                             colours=((0.5, 0.25, BLACK), (0.5, 0.75, WHITE))), bitdepth=1)
    rgba = np.dstack([good, np.full((48, 64), 255, np.uint8)])
    rgba[24:, :, 3] = 0  # bottom half transparent (over green and white)
    _save(vips_image(rgba), w.add("encodings/palette-alpha.png", "palette PNG with transparency",
                             "render", size=(64, 48),
                             colours=((0.25, 0.25, RED), (0.25, 0.75, BLUE),
                                      (0.75, 0.25, WHITE), (0.75, 0.75, WHITE))),
          palette=True)
    grey = np.zeros((48, 64, 2), dtype=np.uint8)
    grey[:, :, 0] = 40  # dark grey everywhere ...
    grey[:, :, 1] = 255
    grey[:, 32:, 1] = 0  # ... but the right half is transparent
    _save(vips_image(grey), w.add("encodings/grey-alpha.png", "grey + alpha PNG", "render",
                             size=(64, 48),
                             colours=((0.5, 0.25, (40, 40, 40)), (0.5, 0.75, WHITE))))
    hidden = np.dstack([solid(64, 48, GREEN), np.full((48, 64), 255, np.uint8)])
    hidden[:, 32:, :3] = (255, 0, 255)  # magenta that must never show ...
    hidden[:, 32:, 3] = 0  # ... because it is fully transparent
    _save(vips_image(hidden), w.add("encodings/rgba-transparent.png",
                               "RGBA with fully transparent pixels", "render", size=(64, 48),
                               colours=((0.5, 0.25, GREEN), (0.5, 0.75, WHITE))))

    # -- orientation ---------------------------------------------------------
    for orientation in range(2, 9):
        stored = vips_image(stored_for_orientation(good, orientation)).copy()
        stored.set_type(pyvips.GValue.gint_type, "orientation", orientation)
        target = w.add(f"orientation/exif-{orientation}.jpg", f"EXIF orientation {orientation}",
                       "render", size=(64, 48), colours=QUADRANT_POINTS)
        _save(stored, target, Q=95)

    # -- animation (the first frame is the picture) --------------------------
    frames = np.concatenate([good, solid(64, 48, BLUE), solid(64, 48, GREEN)], axis=0)
    animated = vips_image(frames).copy()
    animated.set_type(pyvips.GValue.gint_type, "page-height", 48)
    animated.set_type(pyvips.GValue.array_int_type, "delay", [100, 100, 100])
    _save(animated, w.add("animation/animated.gif", "animated GIF", "render", size=(64, 48),
                          colours=QUADRANT_POINTS))
    _save(animated, w.add("animation/animated.webp", "animated WebP", "render", size=(64, 48),
                          colours=QUADRANT_POINTS), lossless=True)

    # -- extreme sizes -------------------------------------------------------
    _save(vips_image(solid(1, 1, RED)), w.add("sizes/one-pixel.png", "1 x 1 image", "render",
                                         size=(1, 1), colours=((0.5, 0.5, RED),)))
    strip = solid(20_000, 10, RED)
    strip[:, 10_000:] = BLUE
    _save(vips_image(strip), w.add("sizes/strip-20000x10.png", "20000 x 10 strip", "render",
                              size=(20_000, 10)))
    if huge:
        write_huge_jpeg(w.add("sizes/huge-30000.jpg", "30000 x 30000 JPEG", "render",
                              size=(HUGE_SIDE, HUGE_SIDE),
                              colours=((0.5, 0.2, RED), (0.5, 0.8, BLUE)),
                              note="shrink-on-load: decoded at 1/8 scale"))
    write_png_bomb(w.add("sizes/bomb.png", "decompression-bomb PNG", "skip",
                         reason=r"^image is 100000x100000 = 10000000000 pixels, over the "
                                r"--max-pixels limit of \d+ \(possible decompression bomb\)$"))

    # -- names ---------------------------------------------------------------
    names = {
        "names/café 東京 ☃.png": "unicode file name",
        "names/  lots of   spaces .png": "file name with spaces",
        "names/it's \"quoted\" #1.png": "file name with quotes and #",
        "names/100% ?&=;,[x].png": "file name with URL-special characters",
        "names/a/dup.png": "duplicate basename (first folder)",
        "names/b/dup.png": "duplicate basename (second folder)",
        "names/UPPER.JPG": "upper-case extension",
        "names/Mixed.PnG": "mixed-case extension",
    }
    for relative, kind in names.items():
        save = {"Q": 95} if relative.lower().endswith(".jpg") else {}
        _save(vips_image(good), w.add(relative, kind, "render", size=(64, 48),
                                 colours=QUADRANT_POINTS), **save)
    w.add("names/README.txt", "non-image file in the folder", "ignore").write_text("notes\n")
    return sorted(w.cases, key=lambda case: case.path)


def write_metadata_csv(path: Path, cases: Sequence[CorpusCase]) -> dict[str, dict[str, str]]:
    """The corpus CSV with its faults; returns the expected values by image path.

    Faults: a UTF-8 BOM, CRLF line endings, a quoted value holding newlines
    and commas, an extra column the display does not use, a row with more
    fields than the header, two rows naming files that do not exist, images
    without a row (every case after the first few) and a numeric ``weight``
    column with blanks. ``dup.png`` is named by basename only, which is
    ambiguous (two folders hold one), so that row matches no image.
    """
    rendered = [c.path for c in cases if c.expect == "render"]
    with_rows = rendered[:6]
    rows = [["filename", "title", "weight", "notes", "extra"]]
    expected: dict[str, dict[str, str]] = {}
    for number, relative in enumerate(with_rows):
        weight = "" if number % 2 else f"{number + 0.5}"
        notes = f'line one of {number}\nline two, with "quotes", and a comma' if number == 1 \
            else "plain"
        rows.append([relative, f"Título {number}", weight, notes, f"x{number}"])
        expected[relative] = {"title": f"Título {number}", "weight": weight, "notes": notes}
    rows.append(["missing/nowhere.png", "ghost", "1.0", "no such image", "x"])
    rows.append(["also-missing.jpg", "ghost 2", "", "", "x", "surplus", "fields"])
    rows.append(["dup.png", "ambiguous", "2.0", "two files have this basename", "x"])

    def quote(value: str) -> str:
        if any(ch in value for ch in ',"\r\n'):
            return '"' + value.replace('"', '""') + '"'
        return value

    text = "".join(",".join(quote(v) for v in row) + "\r\n" for row in rows)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    return expected
