"""Paper sizes, physical lengths and the pixel geometry of a printed page.

Every length is kept in millimetres; pixels follow from the DPI. The page
is the *trim* size (what the reader holds); bleed adds a band of background
outside it on every side, for printers that cut after printing.

>>> page = resolve_page(paper="A4", dpi=100)
>>> (page.trim_px, page.width_mm, page.height_mm)
((827, 1169), 210.0, 297.0)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mosaic.errors import PosterError

MM_PER_INCH = 25.4
PT_PER_INCH = 72.0
# ISO 216 A series and the two common US sizes, portrait (width, height) in mm.
PAPER_SIZES: dict[str, tuple[float, float]] = {
    "A0": (841.0, 1189.0),
    "A1": (594.0, 841.0),
    "A2": (420.0, 594.0),
    "A3": (297.0, 420.0),
    "A4": (210.0, 297.0),
    "A5": (148.0, 210.0),
    "letter": (215.9, 279.4),
    "tabloid": (279.4, 431.8),
}
UNITS_MM: dict[str, float] = {"mm": 1.0, "cm": 10.0, "in": MM_PER_INCH}
DEFAULT_PAPER = "A3"
MAX_DPI = 2400
MAX_SIDE_PX = 1_000_000  # far beyond any print; stops typos such as --dpi 3000000
_LENGTH = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(mm|cm|in|px)?\s*$", re.IGNORECASE)
_PIXELS = re.compile(r"^\s*([0-9]+)\s*[xX]\s*([0-9]+)\s*$")


@dataclass(frozen=True)
class Length:
    """A length as written: ``value`` in ``unit`` (mm, cm, in or px)."""

    value: float
    unit: str

    def to_px(self, dpi: float) -> int:
        """This length in whole pixels at ``dpi``."""
        if self.unit == "px":
            return int(round(self.value))
        return int(round(self.value * UNITS_MM[self.unit] / MM_PER_INCH * dpi))

    def to_mm(self, dpi: float) -> float:
        """This length in millimetres (``dpi`` converts pixels)."""
        if self.unit == "px":
            return self.value / dpi * MM_PER_INCH
        return self.value * UNITS_MM[self.unit]


def parse_length(text: str | float, name: str, allow_px: bool = False) -> Length:
    """Parse ``"12mm"``, ``"1.5cm"``, ``"2in"`` (and ``"3px"`` if allowed).

    A bare number is millimetres. ``name`` is the parameter for the error.
    """
    if isinstance(text, (int, float)):
        return Length(float(text), "mm")
    match = _LENGTH.match(str(text))
    unit = (match.group(2) or "mm").lower() if match else ""
    if not match or (unit == "px" and not allow_px):
        units = "mm, cm, in" + (" or px" if allow_px else "")
        raise PosterError(
            f"{name} must be a non-negative length such as 10mm, 1.5cm or 2in "
            f"(units: {units}; a bare number is mm), not {text!r}"
        )
    return Length(float(match.group(1)), unit)


def parse_pixels(text: str, name: str = "--pixels") -> tuple[int, int]:
    """Parse ``"WIDTHxHEIGHT"`` into positive integers."""
    match = _PIXELS.match(str(text))
    if not match or int(match.group(1)) <= 0 or int(match.group(2)) <= 0:
        raise PosterError(f"{name} must be WIDTHxHEIGHT in pixels, e.g. 4000x3000, not {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if max(width, height) > MAX_SIDE_PX:
        raise PosterError(f"{name} sides must be at most {MAX_SIDE_PX} px, not {text!r}")
    return width, height


def paper_size(name: str, landscape: bool = False) -> tuple[float, float]:
    """(width, height) in mm of a named paper size; names are case-insensitive."""
    for key, (width, height) in PAPER_SIZES.items():
        if key.lower() == str(name).lower():
            return (height, width) if landscape else (width, height)
    raise PosterError(
        f"--paper must be one of {', '.join(PAPER_SIZES)}, not {name!r} "
        "(or give --width and --height)"
    )


@dataclass(frozen=True)
class Page:
    """The geometry of one poster page.

    ``width_mm`` x ``height_mm`` is the trim size; ``bleed_mm`` is added on
    every side of the output; ``margin_mm`` is kept free inside the trim.
    Pixel values are at ``dpi``; ``*_px`` include the bleed unless named trim.
    """

    width_mm: float
    height_mm: float
    dpi: float
    trim_px: tuple[int, int]
    margin_px: int
    bleed_px: int
    margin_mm: float
    bleed_mm: float

    @property
    def size_px(self) -> tuple[int, int]:
        """(width, height) of the output raster, bleed included."""
        return (self.trim_px[0] + 2 * self.bleed_px, self.trim_px[1] + 2 * self.bleed_px)

    @property
    def size_mm(self) -> tuple[float, float]:
        """(width, height) of the output in mm, bleed included."""
        return (self.width_mm + 2 * self.bleed_mm, self.height_mm + 2 * self.bleed_mm)

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        """(left, top, width, height) in output pixels inside the margins."""
        inset = self.bleed_px + self.margin_px
        width, height = self.trim_px
        return (inset, inset, width - 2 * self.margin_px, height - 2 * self.margin_px)

    @property
    def px_per_mm(self) -> float:
        """Resolution in pixels per millimetre (what libvips stores as xres)."""
        return self.dpi / MM_PER_INCH

    def to_dict(self) -> dict:
        """A JSON-ready description of the page."""
        return {
            "width_mm": round(self.width_mm, 3), "height_mm": round(self.height_mm, 3),
            "dpi": round(self.dpi, 4), "trim_px": list(self.trim_px),
            "size_px": list(self.size_px), "margin_mm": round(self.margin_mm, 3),
            "bleed_mm": round(self.bleed_mm, 3),
        }


def resolve_page(
    paper: str | None = None,
    landscape: bool = False,
    width: str | None = None,
    height: str | None = None,
    dpi: float | None = None,
    pixels: str | None = None,
    margin: str | float = "10mm",
    bleed: str | float = "0mm",
) -> Page:
    """Turn the size parameters of the CLI into a :class:`Page`.

    The physical size is ``--width``/``--height`` if given, else ``--paper``
    (turned by ``landscape``), else ``--pixels`` at 300 dpi, else the
    default paper (A3). With both a
    physical size and ``--pixels``, the DPI follows from them and must be the
    same across and down (within 1%). ``dpi`` defaults to 300.
    """
    if dpi is not None and not dpi > 0:
        raise PosterError(f"--dpi must be a number greater than 0, not {dpi!r}")
    if dpi is not None and dpi > MAX_DPI:
        raise PosterError(f"--dpi must be at most {MAX_DPI}, not {dpi!r}")
    if dpi is not None and pixels is not None:
        raise PosterError("give either --dpi or --pixels, not both")
    size_mm = _physical_size(paper, landscape, width, height)
    if size_mm is None and pixels is None:
        size_mm = paper_size(DEFAULT_PAPER, landscape)
    if pixels is not None:
        trim_px = parse_pixels(pixels)
        if size_mm is None:
            dpi = 300.0
            size_mm = tuple(p / dpi * MM_PER_INCH for p in trim_px)
        else:
            dpi = trim_px[0] / size_mm[0] * MM_PER_INCH
            dpi_down = trim_px[1] / size_mm[1] * MM_PER_INCH
            if abs(dpi - dpi_down) > 0.01 * dpi:
                raise PosterError(
                    f"--pixels {pixels} does not have the shape of the "
                    f"{size_mm[0]:g} x {size_mm[1]:g} mm page ({dpi:.1f} dpi across, "
                    f"{dpi_down:.1f} dpi down); drop --paper/--width/--height or fix --pixels"
                )
    else:
        dpi = float(dpi if dpi is not None else 300.0)
        trim_px = tuple(max(1, int(round(s / MM_PER_INCH * dpi))) for s in size_mm)
    if max(trim_px) > MAX_SIDE_PX:
        raise PosterError(f"the page would be {trim_px[0]}x{trim_px[1]} px; lower --dpi")
    margin_len = parse_length(margin, "--margin", allow_px=True)
    bleed_len = parse_length(bleed, "--bleed", allow_px=True)
    margin_px, bleed_px = margin_len.to_px(dpi), bleed_len.to_px(dpi)
    if 2 * margin_px >= min(trim_px):
        raise PosterError(
            f"--margin {margin} leaves no room on a {size_mm[0]:g} x {size_mm[1]:g} mm page"
        )
    return Page(
        width_mm=float(size_mm[0]), height_mm=float(size_mm[1]), dpi=float(dpi),
        trim_px=(int(trim_px[0]), int(trim_px[1])), margin_px=margin_px, bleed_px=bleed_px,
        margin_mm=margin_len.to_mm(dpi), bleed_mm=bleed_len.to_mm(dpi),
    )


def _physical_size(
    paper: str | None, landscape: bool, width: str | None, height: str | None
) -> tuple[float, float] | None:
    if (width is None) != (height is None):
        raise PosterError("give both --width and --height, or neither (and use --paper)")
    if width is not None:
        size = (parse_length(width, "--width").to_mm(1), parse_length(height, "--height").to_mm(1))
        if min(size) <= 0:
            raise PosterError(f"--width and --height must be greater than 0, not {width}, {height}")
        return (size[1], size[0]) if landscape and size[0] < size[1] else size
    if paper is None:
        return None
    return paper_size(paper, landscape)
