"""Print-ready poster montages of a bundle: the whole map, a filtered subset or a sample.

The flow, each step a function::

    bundle = Bundle.open(directory)                           # mosaic.bundle's read model
    ids = select_items(bundle, search_args, random_n, seed)   # None = whole map
    cell_grid = arrange_items(bundle, ids, arrange, seed)     # (rows, cols) of ids
    record = render_poster(bundle, cell_grid, options, "poster.pdf")

The montage is written one row of cells at a time into an uncompressed strip
TIFF that libvips reads back sequentially; the page (background, montage,
text) is a lazy libvips image that the saver streams, so memory holds one row
of cells plus libvips's buffers, whatever the page size. Beside the poster goes
``<stem>.items.json``: which item sits in which cell, and the page geometry.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyvips
from threadpoolctl import threadpool_limits

from mosaic import __version__
from mosaic.bundle import Bundle, cell_ids, grid_shape
from mosaic.poster.cells import CellFetcher
from mosaic.poster.paper import MM_PER_INCH, Length, Page, PosterError, resolve_page
from mosaic.poster.pdf import PDF_COMPRESSIONS, write_pdf
from mosaic.poster.render import (
    Colour,
    Layout,
    compose_page,
    iter_montage_strips,
    plan_layout,
    render_label,
    render_text,
    text_colour_for,
)
from mosaic.query import QueryError, parse_search_args, search_items
from mosaic.strips import write_tiff

__all__ = [
    "ARRANGEMENTS", "FORMATS", "PosterError", "PosterOptions", "arrange_items",
    "output_format", "render_poster", "render_poster_bytes", "select_items",
]
log = logging.getLogger(__name__)

FORMATS = {".pdf": "pdf", ".tif": "tiff", ".tiff": "tiff", ".png": "png",
           ".jpg": "jpeg", ".jpeg": "jpeg"}
ARRANGEMENTS = ("layout", "map", "random")
SERVER_MAX_PIXELS = 25_000_000
JPEG_MAX_SIDE = 65_535
PREVIEW_DPI = 150
A4_MM = (210.0, 297.0)


@dataclass(frozen=True)
class PosterOptions:
    """How a poster looks and is written (the page geometry included)."""

    page: Page = field(default_factory=lambda: resolve_page("A3"))
    background: Colour = (255, 255, 255)
    text_colour: Colour | None = None
    title: str | None = None
    subtitle: str | None = None
    caption: str | None = None
    font: str = "sans"
    gutter: Length = Length(0.0, "mm")
    hotspots: bool = False
    sources: bool = True
    quality: int = 92
    pdf_compression: str = "jpeg"

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise PosterError(f"--quality must be 1..100, not {self.quality}")
        if self.pdf_compression not in PDF_COMPRESSIONS:
            raise PosterError(f"--pdf-compression must be one of {', '.join(PDF_COMPRESSIONS)}")


def output_format(path: str | Path) -> str:
    """The format written for ``path``'s extension; PosterError if unsupported."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise PosterError(
            f"-o/--output must end in {', '.join(FORMATS)}; {Path(path).name!r} does not"
        )
    return FORMATS[suffix]


def select_items(
    bundle: Bundle,
    search_args: Mapping[str, str] | None = None,
    random_n: int | None = None,
    seed: int = 0,
) -> np.ndarray | None:
    """Item ids to place, sorted; None means the whole map in its stored grid.

    ``search_args`` are the server's search parameters (``q``, ``<facet>``,
    ``<col>_min``/``_max``); ``random_n`` draws that many of the matches
    with ``numpy.random.default_rng(seed)``.
    """
    n_items = bundle.counts.items
    search_args = {k: v for k, v in (search_args or {}).items() if v not in (None, "")}
    if random_n is not None and random_n < 1:
        raise PosterError(f"--random must be a whole number >= 1, not {random_n}")
    if not search_args and random_n is None:
        return None
    ids = np.setdiff1d(np.arange(n_items), bundle.removed_ids())
    if search_args:
        try:
            query = parse_search_args(search_args, bundle.columns)
            with closing(bundle.connect()) as conn:
                _total, found = search_items(conn, query)
        except QueryError as error:
            raise PosterError(f"bad filter: {error}") from None
        ids = np.array(sorted(found), dtype=np.int64)
        if len(ids) == 0:
            shown = " ".join(f"{k}={v}" for k, v in search_args.items())
            raise PosterError(f"the filters ({shown}) match no item; the subset is empty")
    if random_n is not None:
        if random_n > len(ids):
            raise PosterError(
                f"--random {random_n} is more than the {len(ids)} "
                f"{'matching ' if search_args else ''}items"
            )
        rng = np.random.default_rng(seed)
        ids = np.sort(rng.choice(ids, size=random_n, replace=False))
    return ids


def arrange_items(
    bundle: Bundle, ids: np.ndarray | None, arrange: str = "layout",
    seed: int = 0, layout: str | None = None,
) -> np.ndarray:
    """int (n_rows, n_cols) of item ids (-1 empty): the grid to print.

    ``ids=None`` keeps the stored grid. Otherwise ``arrange="layout"`` lays
    the items out afresh from their stored 2-D coordinates (similar items stay
    together, in the same relative order; this runs the grid stage), ``"map"``
    keeps them in the reading order of their cells on the stored map, packed
    row by row (no layout computed: what the server uses), and ``"random"``
    shuffles them into the grid with ``seed``.

    ``layout`` names one of the bundle's layouts (``Bundle.layouts``; None:
    similarity). In another layout than similarity, ``layout`` and ``map`` both
    keep the items in their cells of that layout (blocks, date columns, the
    map), the grid cropped to the rows and columns they cover.
    """
    if arrange not in ARRANGEMENTS:
        raise PosterError(f"--arrange must be one of {', '.join(ARRANGEMENTS)}, not {arrange!r}")
    chosen = bundle.layout(layout)
    if ids is None:
        return cell_ids(bundle.read_layout_positions(chosen), *chosen.grid.shape)
    ids = np.asarray(ids, dtype=np.int64)
    if chosen.kind != "similarity" and arrange != "random":
        cells = np.asarray(bundle.read_layout_positions(chosen, mmap=True)[ids],
                           dtype=np.int64)
        low = cells.min(axis=0)
        n_rows, n_cols = (cells.max(axis=0) - low + 1).tolist()
        grid = np.full((n_rows, n_cols), -1, dtype=np.int64)
        grid[cells[:, 0] - low[0], cells[:, 1] - low[1]] = ids
        return grid
    if arrange in ("random", "map"):
        if arrange == "random":
            order = np.random.default_rng(seed).permutation(ids)
        else:
            positions = bundle.read_layout_positions(mmap=True)
            cells = np.asarray(positions[ids], dtype=np.int64)
            order = ids[np.lexsort((cells[:, 1], cells[:, 0]))]
        n_rows, n_cols = grid_shape(len(order))
        grid = np.full(n_rows * n_cols, -1, dtype=np.int64)
        grid[:len(order)] = order
        return grid.reshape(n_rows, n_cols)
    from mosaic.pipeline.grid import assign_grid  # the grid stage: the CLI's posters only

    positions, (n_rows, n_cols) = assign_grid(np.asarray(bundle.read_layout_xy()[ids]),
                                              random_state=seed)
    grid = np.full((n_rows, n_cols), -1, dtype=np.int64)
    grid[positions[:, 0], positions[:, 1]] = ids
    return grid


def render_poster(
    bundle: Bundle,
    cell_grid: np.ndarray,
    options: PosterOptions,
    output: str | Path,
    preview: bool = False,
    selection: dict | None = None,
) -> dict:
    """Render ``cell_grid`` to ``output`` and write ``<stem>.items.json`` beside it.

    Returns that record (page, grid, placed items, warnings). The format is
    the extension's (see :data:`FORMATS`); with ``preview`` an A4-sized
    ``<stem>.preview.png`` is written too.
    """
    output = Path(output)
    fmt = output_format(output)
    if not output.parent.is_dir():
        raise PosterError(f"-o/--output folder {output.parent} does not exist")
    record = {"program": "mosaic", "program_version": __version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "bundle": bundle.id, "output": output.name, "format": fmt,
              "selection": selection or {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".poster-", dir=output.parent) as tmp:
        try:
            open_page, layout, info = _build_page(bundle, cell_grid, options, Path(tmp))
            timings = {"montage": time.perf_counter() - started}
            partial = output.with_name(f".{output.name}.partial")
            _save(open_page(), partial, fmt, options, bundle.title)
            os.replace(partial, output)
            timings["save"] = time.perf_counter() - started - timings["montage"]
            if preview:
                info["preview"] = _write_preview(open_page(), output)
                timings["preview"] = time.perf_counter() - started - sum(timings.values())
        finally:
            open_page = None
            _release_vips_cache()
    info["timings"] = {k: round(v, 3) for k, v in timings.items()}
    record.update(info)
    record["grid"] = layout.to_dict()
    record["count"] = int((cell_grid >= 0).sum())
    record["items"] = _placed_items(cell_grid)
    items_path = output.with_name(output.stem + ".items.json")
    items_path.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    return record


def render_poster_bytes(
    bundle: Bundle,
    ids: list[int] | np.ndarray | None,
    options: PosterOptions,
    fmt: str = "png",
    max_pixels: int = SERVER_MAX_PIXELS,
    arrange: str = "layout",
    seed: int = 0,
) -> bytes:
    """Render a poster of ``ids`` (None: the whole map) in memory, for the server.

    ``fmt`` is pdf, png, jpeg or tiff. Refuses pages over ``max_pixels`` with a
    PosterError that points to the CLI.
    """
    suffix = {"pdf": ".pdf", "png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "tiff": ".tif",
              "tif": ".tif"}.get(str(fmt).lower())
    if suffix is None:
        raise PosterError(f"format must be one of pdf, png, jpeg, tiff; not {fmt!r}")
    width, height = options.page.size_px
    if width * height > max_pixels:
        raise PosterError(
            f"a {width} x {height} px poster ({width * height / 1e6:.1f} MP) is over this "
            f"server's limit of {max_pixels / 1e6:.0f} MP; lower the size or dpi, or render "
            "it with `python run.py poster`"
        )
    if ids is not None:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        n_items = bundle.counts.items
        if len(ids) == 0:
            raise PosterError("the selection is empty; nothing to put on a poster")
        if ids[0] < 0 or ids[-1] >= n_items:
            raise PosterError(f"item ids must be in 0..{n_items - 1}")
    cell_grid = arrange_items(bundle, ids, arrange, seed)
    with tempfile.TemporaryDirectory(prefix="mosaic-poster-") as tmp:
        path = Path(tmp) / f"poster{suffix}"
        try:
            open_page, _layout, _info = _build_page(bundle, cell_grid, options, Path(tmp))
            _save(open_page(), path, FORMATS[suffix], options, bundle.title)
        finally:
            open_page = None
            _release_vips_cache()
        return path.read_bytes()


def _release_vips_cache() -> None:
    """Drop libvips's operation cache, which would keep the deleted montage file open."""
    size = pyvips.cache_get_max()
    pyvips.cache_set_max(0)
    pyvips.cache_set_max(size)


def _build_page(
    bundle: Bundle, cell_grid: np.ndarray, options: PosterOptions, tmp: Path
) -> tuple[Callable[[], pyvips.Image], Layout, dict]:
    """Lay out the page and write the montage to ``tmp``.

    Returns a function that opens a fresh lazy page image (one sequential
    pass each: call it again for a second output), the layout and the record.
    """
    page, warnings = options.page, []
    texts = _render_texts(page, options, warnings)
    header, footer = _text_block_heights(page, texts)
    layout = plan_layout(page, cell_grid.shape, options.gutter.to_px(page.dpi), header, footer)
    fetcher = CellFetcher(bundle, layout.cell_px, options.sources, options.background)
    montage_path = tmp / "montage.tif"
    # One BLAS thread: the cell resampling is many mid-sized GEMMs, which
    # multi-threaded BLAS slows down badly on a busy machine.
    with fetcher, threadpool_limits(1, user_api="blas"):
        fetcher.prepare(cell_grid[cell_grid >= 0], tmp)
        strips = iter_montage_strips(cell_grid, fetcher.fetch, layout.cell_px,
                                     layout.gutter_px, options.background)
        write_tiff(montage_path, strips, *layout.montage_size)
    warnings += fetcher.warnings()
    overlays = _place_texts(page, layout, texts, header)
    if options.hotspots:
        overlays += _hotspot_labels(_label_spots(bundle), cell_grid, layout,
                                    options, warnings)

    def open_page() -> pyvips.Image:
        # Plain sequential reads (no memory map); revalidate: never reuse a
        # cached loader that an earlier pass has already read to the end.
        montage = pyvips.Image.new_from_file(str(montage_path), access="sequential",
                                             revalidate=True)
        image = compose_page(page.size_px, options.background, montage,
                             (layout.montage_x, layout.montage_y), overlays)
        return image.copy(xres=page.px_per_mm, yres=page.px_per_mm)

    info = {"page": page.to_dict(), "cells": fetcher.summary(), "warnings": warnings}
    return open_page, layout, info


def _render_texts(page: Page, options: PosterOptions, warnings: list[str]) -> dict:
    colour = options.text_colour or text_colour_for(options.background)
    title_pt = min(page.width_mm, page.height_mm) * 0.028 / MM_PER_INCH * 72
    width = page.content_box[2]
    sizes = {"title": (title_pt, True), "subtitle": (title_pt * 0.55, False),
             "caption": (title_pt * 0.38, False)}
    return {
        name: render_text(getattr(options, name), size, page.dpi, width, colour,
                          options.background, options.font, bold, warnings)
        for name, (size, bold) in sizes.items()
    }


def _gap(page: Page) -> int:
    return max(1, round(min(page.trim_px) * 0.012))


def _text_block_heights(page: Page, texts: dict) -> tuple[int, int]:
    gap = _gap(page)
    header = sum(t.height + gap for t in (texts["title"], texts["subtitle"]) if t is not None)
    footer = texts["caption"].height + gap if texts["caption"] is not None else 0
    return header, footer


def _place_texts(page: Page, layout: Layout, texts: dict, header: int) -> list:
    left, _top, width, _height = page.content_box
    overlays, y = [], layout.header_y
    for name in ("title", "subtitle"):
        if texts[name] is not None:
            overlays.append((texts[name], left + (width - texts[name].width) // 2, y))
            y += texts[name].height + _gap(page)
    caption = texts["caption"]
    if caption is not None:
        overlays.append((caption, left + (width - caption.width) // 2,
                         layout.footer_y + _gap(page)))
    return overlays


def _label_spots(bundle: Bundle) -> list[dict]:
    """What ``--hotspots`` labels: the bundle's hotspots (pipeline ``--clusters``) if it
    has any, else its top-level labelled regions at their anchor items, largest first."""
    if bundle.hotspots:
        return bundle.hotspots
    regions = bundle.read_regions()
    if regions is None:
        return []
    top = [r for r in regions[0] if r["level"] == 1 and r["label"] is not None]
    return [{"label": r["label"], "representative": r["anchor"]}
            for r in sorted(top, key=lambda r: -r["size"])]


def _hotspot_labels(
    spots: list[dict], cell_grid: np.ndarray, layout: Layout, options: PosterOptions,
    warnings: list[str],
) -> list:
    """White label boxes centred on each spot's representative, where it is placed;
    one that would overlap a label already placed is left out."""
    page = options.page
    where = {int(i): (r, c) for (r, c), i in np.ndenumerate(cell_grid) if i >= 0}
    size_pt = min(page.width_mm, page.height_mm) * 0.016 / MM_PER_INCH * 72
    montage_w, montage_h = layout.montage_size
    overlays, boxes = [], []
    for hotspot in spots:
        cell = where.get(int(hotspot.get("representative", -1)))
        if cell is None or not str(hotspot.get("label", "")).strip():
            continue
        label = render_label(str(hotspot["label"]), size_pt, page.dpi, montage_w // 4,
                             options.font, warnings)
        if label is None or label.width > montage_w or label.height > montage_h:
            continue
        x, y = layout.cell_origin(*cell)
        x = x + layout.cell_px // 2 - label.width // 2
        y = y + layout.cell_px // 2 - label.height // 2
        x = min(max(x, layout.montage_x), layout.montage_x + montage_w - label.width)
        y = min(max(y, layout.montage_y), layout.montage_y + montage_h - label.height)
        box = (x, y, x + label.width, y + label.height)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
               for b in boxes):
            continue
        boxes.append(box)
        overlays.append((label, x, y))
    return overlays


def _save(image: pyvips.Image, path: Path, fmt: str, options: PosterOptions,
          bundle_title: str) -> None:
    """Write ``image`` as ``fmt`` with its resolution recorded (a PDF's title: the
    poster's, else the bundle's)."""
    page = options.page
    try:
        if fmt == "pdf":
            write_pdf(image, path, page.size_mm, page.bleed_mm, options.pdf_compression,
                      options.quality, title=options.title or bundle_title,
                      producer=f"mosaic {__version__}")
        elif fmt == "tiff":
            bigtiff = image.width * image.height * 3 > 3_500_000_000
            image.tiffsave(str(path), compression="deflate", predictor="horizontal",
                           resunit="inch", bigtiff=bigtiff)
        elif fmt == "png":
            image.pngsave(str(path), compression=6)
        else:
            if max(image.width, image.height) > JPEG_MAX_SIDE:
                raise PosterError(
                    f"JPEG sides are at most {JPEG_MAX_SIDE} px; this page is "
                    f"{image.width} x {image.height} px (write a .tif instead)"
                )
            image.jpegsave(str(path), Q=options.quality,
                           subsample_mode="off")
    except pyvips.Error as error:
        raise PosterError(f"cannot write {path.name}: {error.message.strip()}") from None


def _write_preview(page_image: pyvips.Image, output: Path) -> str:
    """An A4-sized PNG of the page (150 dpi, same orientation), never upscaled."""
    a4_w, a4_h = (round(s / MM_PER_INCH * PREVIEW_DPI) for s in A4_MM)
    if page_image.width > page_image.height:
        a4_w, a4_h = a4_h, a4_w
    scale = min(a4_w / page_image.width, a4_h / page_image.height, 1.0)
    preview = page_image.resize(scale) if scale < 1 else page_image
    preview = preview.copy(xres=PREVIEW_DPI / MM_PER_INCH, yres=PREVIEW_DPI / MM_PER_INCH)
    path = output.with_name(output.stem + ".preview.png")
    preview.pngsave(str(path))
    return path.name


def _placed_items(cell_grid: np.ndarray) -> list[dict]:
    rows, cols = np.nonzero(cell_grid >= 0)
    return [{"id": int(cell_grid[r, c]), "row": int(r), "col": int(c)}
            for r, c in zip(rows, cols, strict=True)]

