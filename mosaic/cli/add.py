"""``python run.py add``: new images into a bundle without a rebuild, as a new generation."""

from __future__ import annotations

import argparse
import os
import sys

from mosaic.bundle import DEFAULT_OUT, Bundle, bundle_dir
from mosaic.errors import UsageError
from mosaic.pipeline.place import REACH


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``add`` options to ``parser``."""
    parser.add_argument("--id", required=True, help="collection id")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help="folder that holds the bundles")
    parser.add_argument("--images", required=True,
                        help="the new images: a folder (searched recursively), a glob ('**' "
                             "allowed), a .txt list of image paths, or a .txt list of IIIF "
                             "manifest / image / collection URLs (downloaded; their labels "
                             "and metadata fill the collection's columns)")
    parser.add_argument("--metadata", help="CSV with one row per new image, with the "
                                           "collection's columns (no others)")
    parser.add_argument("--filename-column", default=None,
                        help="CSV column holding the image file name or relative path "
                             "(default: the one the collection was built with)")
    parser.add_argument("--allow-duplicates", action="store_true",
                        help="add images already in the collection (the same file or the "
                             "same pixels) again instead of reporting them")
    parser.add_argument("--reach", type=int, default=REACH, metavar="CELLS",
                        help="how far from the median cell of its nearest items a new item "
                             "may take the cell of an existing item that fits its own place "
                             "poorly (that item moves to a free cell, at the bottom of a full "
                             "map; no other moves) (default: %(default)s; 0: no existing "
                             "item moves, new items take the nearest free cell)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="decoding worker processes (default: number of CPUs)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")


def run(args: argparse.Namespace) -> int:
    """Add the images and report; returns the exit code."""
    from mosaic.pipeline import collect
    from mosaic.pipeline.add import add_items, check_addable

    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if args.reach < 0:
        raise UsageError("--reach must be 0 or more cells")
    directory = bundle_dir(args.out, args.id)
    bundle = Bundle.open(directory)
    check_addable(bundle)
    inputs = collect.collect_inputs(args.images)
    filename_column = args.filename_column or \
        bundle.parameters.get("filename_column") or "filename"
    metadata = collect.read_metadata(args.metadata, filename_column) if args.metadata else None
    result = add_items(directory, inputs, metadata, allow_duplicates=args.allow_duplicates,
                       jobs=args.jobs or os.cpu_count() or 1,
                       reach=args.reach,
                       show_progress=args.progress)
    if result.dropped_columns:
        print(f"note: the IIIF metadata {', '.join(result.dropped_columns)} has no column in "
              f"collection {args.id!r} and was not added", file=sys.stderr)
    for kind, found in (("not added", result.duplicates), ("skipped", result.skipped)):
        for entry in found[:20]:
            print(f"{kind}: {entry['source']}: {entry['reason']}", file=sys.stderr)
        if len(found) > 20:
            print(f"{kind}: ... {len(found) - 20:,} more", file=sys.stderr)
    if not result.added:
        print(f"Nothing added to {directory} (generation {result.generation}): "
              f"{len(result.duplicates):,} already there, {len(result.skipped):,} undecodable")
        return 0
    first, last = result.added[0], result.added[-1]
    print(f"Added {len(result.added):,} items to {directory} (ids {first}-{last}): "
          f"generation {result.generation}, in {result.seconds:.1f}s")
    if result.grown_rows:
        print(f"  the map grew by {result.grown_rows:,} rows")
    tiles = ", ".join(f"{name} {count:,}" for name, count in result.tiles.items())
    moved = ", ".join(f"{name} {count:,}" for name, count in result.moved.items())
    print(f"  tiles written: {tiles}")
    far = result.moved_cells
    print(f"  existing items moved: {moved}" + (
        f" (similarity: each once, to a free cell {far['median']:,} cells away at the "
        f"median, {far['max']:,} at most)" if far else ""))
    if result.duplicates or result.skipped:
        print(f"  not added: {len(result.duplicates):,} already in the collection, "
              f"{len(result.skipped):,} undecodable (listed above)")
    return 0
