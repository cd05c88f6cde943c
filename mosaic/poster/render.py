"""Poster rendering stages: arrays in, arrays or libvips images out.

- :func:`resample_matrix` / :func:`resize_cells`: Lanczos-3 resampling of a
  batch of square cells as two matrix products, each cell on its own (no
  bleeding between neighbours, which resizing one big strip would cause).
- :func:`plan_layout`: where the montage goes on the page and how big a cell is.
- :func:`iter_montage_strips`: the montage one row of cells at a time, so a
  caller can stream it to disk for libvips to memory-map.
- :func:`render_text` and :func:`compose_page`: lazy libvips images.

Nothing here reads the bundle or writes files.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyvips

from mosaic.colour import Colour
from mosaic.poster.paper import Page, PosterError
from mosaic.strips import iter_cell_strips

log = logging.getLogger(__name__)
_BATCH = 128


def resample_matrix(src: int, dst: int) -> np.ndarray:
    """float32 (dst, src): Lanczos-3 weights mapping ``src`` samples to ``dst``.

    The kernel widens by the shrink factor when shrinking (antialiasing), and
    every row sums to 1, so edges keep their brightness.

    >>> resample_matrix(4, 2).sum(axis=1)
    array([1., 1.], dtype=float32)
    """
    if src < 1 or dst < 1:
        raise ValueError(f"sizes must be >= 1, not {src} -> {dst}")
    scale = src / dst
    stretch = max(scale, 1.0)
    centres = (np.arange(dst) + 0.5) * scale - 0.5
    x = (np.arange(src)[None, :] - centres[:, None]) / stretch
    weights = np.sinc(x) * np.sinc(x / 3) * (np.abs(x) < 3)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


def resize_cells(cells: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (B, c, c, 3) square cells to (B, size, size, 3), each on its own.

    Large shrinks first average k x k blocks (as libvips's shrink does), then
    Lanczos-3 resamples by two large matrix products per batch (rows, then
    columns), so BLAS runs a few big GEMMs rather than thousands of tiny ones.
    """
    cells = np.asarray(cells)
    count, side = cells.shape[0], cells.shape[1]
    if side == size:
        return cells.copy()
    box = _box_factor(side, size)
    small = side // box
    weights = resample_matrix(small, size)
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for start in range(0, count, _BATCH):
        batch = _box_shrink(cells[start:start + _BATCH], box)
        n = len(batch)
        by_row = batch.transpose(1, 0, 2, 3).reshape(small, -1)
        rows = (weights @ by_row).reshape(size, n, small, 3)               # (s, n, c, 3)
        cols = rows.transpose(0, 1, 3, 2).reshape(-1, small) @ weights.T   # (s*n*3, s)
        both = cols.reshape(size, n, 3, size).transpose(1, 0, 3, 2)        # (n, s, s, 3)
        out[start:start + n] = np.clip(np.rint(both), 0, 255)
    return out


def _box_shrink(cells: np.ndarray, box: int) -> np.ndarray:
    """float32 means of ``box`` x ``box`` blocks of uint8 (n, c, c, 3) cells."""
    if box == 1:
        return cells.astype(np.float32)
    total = np.zeros((len(cells), cells.shape[1] // box, cells.shape[2] // box, 3),
                     dtype=np.uint16 if box <= 16 else np.uint32)
    for dy in range(box):
        for dx in range(box):
            total += cells[:, dy::box, dx::box]
    return total.astype(np.float32) / (box * box)


def _box_factor(side: int, size: int) -> int:
    """The largest divisor k of ``side`` that still leaves a shrink of >= 2 to resample."""
    factor = side // (2 * size)
    while factor > 1 and side % factor:
        factor -= 1
    return max(factor, 1)


@dataclass(frozen=True)
class Layout:
    """Where things go on the page, in output pixels (bleed included)."""

    cell_px: int
    gutter_px: int
    n_rows: int
    n_cols: int
    montage_x: int
    montage_y: int
    header_y: int
    footer_y: int

    @property
    def montage_size(self) -> tuple[int, int]:
        pitch = self.cell_px + self.gutter_px
        return (self.n_cols * pitch - self.gutter_px, self.n_rows * pitch - self.gutter_px)

    def cell_origin(self, row: int, col: int) -> tuple[int, int]:
        """Top-left page pixel (x, y) of grid cell (row, col)."""
        pitch = self.cell_px + self.gutter_px
        return (self.montage_x + col * pitch, self.montage_y + row * pitch)

    def to_dict(self) -> dict:
        width, height = self.montage_size
        return {"n_rows": self.n_rows, "n_cols": self.n_cols, "cell_px": self.cell_px,
                "gutter_px": self.gutter_px,
                "montage": {"x": self.montage_x, "y": self.montage_y,
                            "width": width, "height": height}}


def plan_layout(
    page: Page, shape: tuple[int, int], gutter_px: int, header_px: int = 0, footer_px: int = 0
) -> Layout:
    """Choose the largest whole-pixel cell that fits ``shape`` in the content box.

    The block header + montage + footer is centred on the page. Raises
    PosterError when not even a 1-pixel cell fits.
    """
    n_rows, n_cols = shape
    left, top, width, height = page.content_box
    area_h = height - header_px - footer_px
    cell = min((width - gutter_px * (n_cols - 1)) // n_cols,
               (area_h - gutter_px * (n_rows - 1)) // n_rows)
    if cell < 1:
        raise PosterError(
            f"{n_rows} x {n_cols} cells do not fit in {width} x {max(area_h, 0)} px "
            f"(the page inside its margins{', title and caption' if header_px else ''}"
            f"{f', --gutter {gutter_px} px' if gutter_px else ''}); use a bigger "
            "--paper, a higher --dpi, fewer items or a smaller --gutter/--margin"
        )
    pitch = cell + gutter_px
    montage_w, montage_h = n_cols * pitch - gutter_px, n_rows * pitch - gutter_px
    block_top = top + (height - header_px - montage_h - footer_px) // 2
    return Layout(
        cell_px=int(cell), gutter_px=int(gutter_px), n_rows=n_rows, n_cols=n_cols,
        montage_x=left + (width - montage_w) // 2, montage_y=block_top + header_px,
        header_y=block_top, footer_y=block_top + header_px + montage_h,
    )


def iter_montage_strips(
    cell_grid: np.ndarray,
    fetch: Callable[[np.ndarray], np.ndarray],
    cell_px: int,
    gutter_px: int = 0,
    background: Colour = (255, 255, 255),
) -> Iterator[np.ndarray]:
    """Yield the montage as uint8 strips (h, width, 3), top to bottom.

    ``cell_grid`` is int (n_rows, n_cols) of item ids, -1 for empty cells;
    ``fetch(ids)`` returns their cells as uint8 (k, cell_px, cell_px, 3).
    Strips are one row of cells, then (with a gutter) a gutter strip: the stream
    of ``mosaic.strips.iter_cell_strips``, which the map's render streams too.
    The same buffer is reused: consume each strip before asking for the next.
    """
    return iter_cell_strips(cell_grid, fetch, cell_px, gutter_px, background)


def text_colour_for(background: Colour) -> Colour:
    """Near-black on light backgrounds, near-white on dark ones."""
    luma = 0.2126 * background[0] + 0.7152 * background[1] + 0.0722 * background[2]
    return (25, 25, 25) if luma >= 128 else (235, 235, 235)


def render_text(
    text: str,
    size_pt: float,
    dpi: float,
    width_px: int,
    colour: Colour,
    background: Colour,
    font: str = "sans",
    bold: bool = False,
    warnings: list[str] | None = None,
) -> pyvips.Image | None:
    """``text`` set in ``font`` at ``size_pt`` for ``dpi``, centred and wrapped to ``width_px``.

    Returns a 3-band sRGB image on ``background``, or None (with a line
    appended to ``warnings``) if libvips cannot render text here, e.g. when
    fontconfig finds no font.
    """
    if not text:
        return None
    description = f"{font}{' bold' if bold else ''} {size_pt:.1f}"
    try:
        mask = pyvips.Image.text(
            html.escape(text, quote=False), font=description, dpi=max(1, int(round(dpi))),
            width=max(1, width_px), align="centre", wrap="word-char",
        )
        if mask.width <= 1 or mask.max() == 0:
            raise pyvips.Error(f"no glyphs rendered for font {description!r}")
        image = mask.ifthenelse(list(colour), list(background), blend=True)
        return image.copy(interpretation="srgb").copy_memory()
    except pyvips.Error as error:
        message = f"text {text[:40]!r} not rendered (libvips text: {error.message.strip()})"
        log.warning(message)
        if warnings is not None:
            warnings.append(message)
        return None


def render_label(
    text: str, size_pt: float, dpi: float, max_width_px: int, font: str = "sans",
    warnings: list[str] | None = None,
) -> pyvips.Image | None:
    """A hotspot label: dark text on a white box with a little padding."""
    image = render_text(text, size_pt, dpi, max_width_px, (20, 20, 20), (255, 255, 255),
                        font=font, bold=True, warnings=warnings)
    if image is None:
        return None
    pad = max(1, image.height // 6)
    return image.embed(pad, pad, image.width + 2 * pad, image.height + 2 * pad,
                       extend="background", background=[255, 255, 255])


def compose_page(
    size_px: tuple[int, int],
    background: Colour,
    montage: pyvips.Image,
    montage_xy: tuple[int, int],
    overlays: Sequence[tuple[pyvips.Image, int, int]] = (),
) -> pyvips.Image:
    """A lazy page: ``background`` everywhere, ``montage`` and ``overlays`` inserted.

    Nothing is computed until the caller saves it, so libvips streams the
    page strip by strip from whatever ``montage`` reads (a memory-mapped file).
    """
    width, height = size_px
    page = pyvips.Image.black(width, height, bands=3).new_from_image(list(background))
    page = page.copy(interpretation="srgb").insert(montage, *montage_xy)
    for image, x, y in overlays:
        page = page.insert(image, int(x), int(y))
    return page
