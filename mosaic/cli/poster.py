"""``python run.py poster``: the command-line face of :mod:`mosaic.poster.compose`.

``configure_parser`` adds the flags; ``run(args) -> int`` renders. Every value
is checked here rather than by argparse, so each bad argument gives one
``Error: ...`` line (a PosterError, a ValueError) instead of a usage dump.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pyvips

from mosaic.bundle import DEFAULT_OUT, Bundle, bundle_dir
from mosaic.colour import parse_colour
from mosaic.errors import BundleError
from mosaic.poster.compose import (
    ARRANGEMENTS,
    FORMATS,
    PosterOptions,
    arrange_items,
    output_format,
    render_poster,
    select_items,
)
from mosaic.poster.paper import DEFAULT_PAPER, PAPER_SIZES, PosterError, parse_length, resolve_page
from mosaic.poster.pdf import PDF_COMPRESSIONS
from mosaic.store import META_PREFIX

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the poster flags to ``parser`` (the ``poster`` subcommand)."""
    parser.epilog = (
        "examples:\n"
        "  run.py poster --id digits -o digits.pdf --paper A2 --title Digits\n"
        "  run.py poster --id arxiv -o cs.tif --where category=cs.CV --min year=2015\n"
        "  run.py poster --id arxiv -o sample.png --random 144 --seed 7 --paper A4\n"
        f"formats: {', '.join(FORMATS)}"
    )
    src = parser.add_argument_group("bundle and output")
    src.add_argument("--id", help="collection id (the bundle folder's name under --out)")
    src.add_argument("--out", default=DEFAULT_OUT, help="folder that holds the bundles")
    src.add_argument("--bundle", help="a bundle folder, instead of --out/--id")
    src.add_argument("-o", "--output", help="poster file (required): .pdf .tif .png .jpg")
    src.add_argument("--preview", action=argparse.BooleanOptionalAction, default=False,
                     help="also write an A4-sized <stem>.preview.png")
    size = parser.add_argument_group("size (lengths take mm, cm or in; a bare number is mm)")
    size.add_argument("--paper", help=f"{', '.join(PAPER_SIZES)}; with no size flag at all, "
                      f"{DEFAULT_PAPER}")
    size.add_argument("--landscape", action=argparse.BooleanOptionalAction, default=False,
                      help="turn the paper on its side")
    size.add_argument("--width", help="page width, e.g. 600mm, 60cm or 24in")
    size.add_argument("--height", help="page height")
    size.add_argument("--dpi", help="print resolution in dots per inch; 300 unless --pixels")
    size.add_argument("--pixels", help="exact page size in pixels, WIDTHxHEIGHT (instead of --dpi)")
    size.add_argument("--margin", default="10mm", help="blank border inside the page edge")
    size.add_argument("--bleed", default="0mm",
                      help="background added outside the page on every side, for trimming")
    content = parser.add_argument_group(
        "content (the whole map unless filtered; filters are the server's search)")
    content.add_argument("--q", help="keyword search (every word must occur)")
    content.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                         help="facet equals VALUE; repeat for more columns")
    content.add_argument("--min", action="append", default=[], metavar="COLUMN=N",
                         help="numeric column >= N")
    content.add_argument("--max", action="append", default=[], metavar="COLUMN=N",
                         help="numeric column <= N")
    content.add_argument("--random", metavar="N", help="a random sample of N (matching) items")
    content.add_argument("--seed", default="0", help="seed for --random and --arrange random")
    content.add_argument("--layout", metavar="NAME",
                         help="which of the bundle's layouts to print, a --layout value of "
                         "the pipeline, e.g. date:year (default: similarity)")
    content.add_argument("--arrange", default="layout",
                         help=f"subset order: {' | '.join(ARRANGEMENTS)} (layout = re-grid "
                         "the stored 2-D layout, similar items together)")
    look = parser.add_argument_group("look")
    look.add_argument("--title", help="title above the montage")
    look.add_argument("--subtitle", help="smaller line under the title")
    look.add_argument("--caption", help="credits or caption line under the montage")
    look.add_argument("--background", default="white", help="#rrggbb, R,G,B or a colour name")
    look.add_argument("--text-colour",
                      help="text colour; unset = black or white, whichever contrasts")
    look.add_argument("--font", default="sans", help="fontconfig family, e.g. 'serif'")
    look.add_argument("--gutter", default="0mm", help="space between cells (mm, cm, in or px)")
    look.add_argument("--hotspots", action=argparse.BooleanOptionalAction, default=False,
                      help="label the map: the bundle's hotspots (pipeline --clusters) if it "
                      "has any, else its top-level labelled regions; overlapping labels are "
                      "left out")
    look.add_argument("--sources", action=argparse.BooleanOptionalAction, default=True,
                      help="re-read source images when a print cell is bigger than the "
                      "stored thumbnails")
    look.add_argument("--quality", default="92", help="JPEG quality (also inside PDFs), 1-100")
    look.add_argument("--pdf-compression", default="jpeg",
                      help=f"image compression inside PDFs: {' | '.join(PDF_COMPRESSIONS)}")


def run(args: argparse.Namespace) -> int:
    """Render the poster described by ``args``; PosterError for any bad value."""
    if not args.output:
        raise PosterError(f"give -o/--output FILE ending in {', '.join(FORMATS)}")
    output = Path(args.output)
    output_format(output)
    try:
        bundle = Bundle.open(_bundle_path(args))
    except BundleError as error:
        raise PosterError(str(error)) from None
    layout = bundle.layout(args.layout).name  # an unknown name: one Error line
    page = resolve_page(
        paper=args.paper, landscape=args.landscape, width=args.width, height=args.height,
        dpi=None if args.dpi is None else _number(args.dpi, "--dpi", float),
        pixels=args.pixels, margin=args.margin, bleed=args.bleed,
    )
    background = parse_colour(args.background, "--background")
    options = PosterOptions(
        page=page, background=background,
        text_colour=parse_colour(args.text_colour, "--text-colour") if args.text_colour else None,
        title=args.title, subtitle=args.subtitle, caption=args.caption, font=args.font,
        gutter=parse_length(args.gutter, "--gutter", allow_px=True), hotspots=args.hotspots,
        sources=args.sources, quality=_number(args.quality, "--quality", int),
        pdf_compression=args.pdf_compression,
    )
    seed = _number(args.seed, "--seed", int)
    random_n = None if args.random is None else _number(args.random, "--random", int)
    search = search_args(args.q, args.where, args.min, args.max)
    try:
        ids = select_items(bundle, search, random_n, seed)
        cell_grid = arrange_items(bundle, ids, args.arrange, seed, layout)
        selection = {"filters": search, "random": random_n, "seed": seed,
                     "arrange": args.arrange if ids is not None else "stored",
                     "layout": layout}
        record = render_poster(bundle, cell_grid, options, output,
                               preview=args.preview, selection=selection)
    except (pyvips.Error, OSError) as error:
        raise PosterError(f"cannot write the poster {output}: {error}") from None
    if not getattr(args, "quiet", False):
        grid = record["grid"]
        print(f"wrote {output}: {page.size_mm[0]:g} x {page.size_mm[1]:g} mm at "
              f"{page.dpi:g} dpi ({page.size_px[0]} x {page.size_px[1]} px), "
              f"{record['count']} items in {grid['n_rows']} x {grid['n_cols']} cells of "
              f"{grid['cell_px']} px; placed items in {output.stem}.items.json")
    return 0


def search_args(
    q: str | None, where: list[str], minimum: list[str], maximum: list[str]
) -> dict[str, str]:
    """The server's search parameters from ``--q``/``--where``/``--min``/``--max``."""
    args: dict[str, str] = {}
    if q:
        args["q"] = q
    for flag, values, suffix in (("--where", where, ""), ("--min", minimum, "_min"),
                                 ("--max", maximum, "_max")):
        for text in values:
            column, sep, value = text.partition("=")
            if not sep or not column.strip() or not value.strip():
                raise PosterError(f"{flag} must be COLUMN=VALUE, not {text!r}")
            args[META_PREFIX + column.strip() + suffix] = value.strip()  # the CSV's column
    return args


def _bundle_path(args: argparse.Namespace) -> Path:
    if args.bundle:
        return Path(args.bundle)
    if not args.id:
        raise PosterError("give --id NAME (a bundle under --out) or --bundle PATH")
    return bundle_dir(Path(args.out), args.id)


def _number(text: str, name: str, kind: type) -> int | float:
    try:
        return kind(text)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise PosterError(f"{name} must be {what}, not {text!r}") from None
