"""``python run.py publish``: a bundle as a static site (mosaic.publish, docs/publish.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mosaic.bundle import DEFAULT_OUT, Bundle, bundle_dir
from mosaic.errors import UsageError

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parents[2] / "static"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``publish`` options to ``parser``."""
    parser.add_argument("--id", required=True, help="collection id")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help="folder that holds the bundles")
    parser.add_argument("--to", required=True, metavar="SITE_DIR",
                        help="folder to write the site into (created; into an earlier "
                             "publish, only the files that changed are rewritten)")
    parser.add_argument("--base-url", metavar="URL",
                        help="the public URL the site will be served from, e.g. "
                             "https://example.org/maps/digits/; with it, the IIIF image and "
                             "manifest are written under iiif/ (IIIF ids are absolute URLs) "
                             "(default: no IIIF)")
    parser.add_argument("--thumbnails", action=argparse.BooleanOptionalAction, default=True,
                        help="write each item's thumbnail (the panel and strips show them)")


def run(args: argparse.Namespace) -> int:
    """Write the site; returns the exit code."""
    from mosaic.publish import site_changes, site_snapshot, write_site

    directory = bundle_dir(args.out, args.id)
    Bundle.open(directory)  # BundleNotFound before any writing
    site = Path(args.to)
    if site.resolve() == directory.resolve() or directory.resolve() in site.resolve().parents:
        raise UsageError(f"--to {site} is inside the bundle {directory}; choose another folder")
    if site.exists() and not site.is_dir():
        raise UsageError(f"--to {site} exists and is not a folder")
    before = site_snapshot(site)
    sizes = write_site(directory, site, STATIC, thumbnails=args.thumbnails)
    if args.base_url:
        from mosaic.pipeline.iiif_out import write_iiif

        base = args.base_url.rstrip("/") + "/iiif"
        iiif = write_iiif(directory, site / "iiif", base)
        sizes["iiif"] = sum(iiif.values())
    total = sum(sizes.values())
    changes = site_changes(before, site_snapshot(site))
    rewritten = (f"; {changes['rewritten_files']:,} files ({changes['rewritten_bytes'] / 1e6:.1f}"
                 f" MB) new or rewritten, {changes['removed_files']:,} removed"
                 if before else "")
    print(f"Published {args.id} to {site} ({total / 1e6:.1f} MB: "
          + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sizes.items())
          + f"{rewritten}); serve it with any static host, e.g. "
          f"`python -m http.server -d {site}`", file=sys.stderr)
    return 0
