"""``python run.py remove``: take items out of a bundle (a takedown), as a new generation."""

from __future__ import annotations

import argparse
import sys

from mosaic.bundle import DEFAULT_OUT, Bundle, bundle_dir
from mosaic.errors import UsageError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``remove`` options to ``parser``."""
    parser.add_argument("--id", required=True, help="collection id")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help="folder that holds the bundles")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", metavar="ID,ID,...",
                       help="the item ids to remove, comma-separated (as the API, the "
                            "viewer and run.py export show them)")
    which.add_argument("--where", metavar="COLUMN=VALUE",
                       help="remove every item whose metadata column COLUMN is VALUE "
                            "(a tags column: carries the tag VALUE)")


def parse_ids(text: str) -> list[int]:
    """``3,17, 40`` as ints; UsageError naming what is not an id."""
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise UsageError("--ids needs at least one item id")
    bad = [v for v in values if not v.isdigit()]
    if bad:
        raise UsageError(f"--ids: {bad[0]!r} is not an item id (a whole number >= 0)")
    return [int(v) for v in values]


def parse_where(text: str) -> tuple[str, str]:
    column, equals, value = text.partition("=")
    if not equals or not column.strip():
        raise UsageError(f"--where must be COLUMN=VALUE, not {text!r}")
    return column.strip(), value


def run(args: argparse.Namespace) -> int:
    """Remove the items and report; returns the exit code."""
    from mosaic.pipeline.remove import remove_items, select_ids

    ids = parse_ids(args.ids) if args.ids is not None else None
    where = parse_where(args.where) if args.where is not None else None
    directory = bundle_dir(args.out, args.id)
    chosen = select_ids(Bundle.open(directory), ids, where)
    result = remove_items(directory, chosen)
    if result.already:
        print(f"already removed before: {len(result.already):,} items "
              f"({_some(result.already)})", file=sys.stderr)
    if not result.removed:
        print(f"Nothing to remove from {directory} (generation {result.generation})")
        return 0
    tiles = ", ".join(f"{name} {count:,}" for name, count in result.tiles.items())
    print(f"Removed {len(result.removed):,} items from {directory} ({_some(result.removed)}): "
          f"generation {result.generation}, in {result.seconds:.1f}s")
    print(f"  tiles written again: {tiles}")
    return 0


def _some(ids: list[int], shown: int = 10) -> str:
    text = ", ".join(str(i) for i in ids[:shown])
    return text + (f", ... {len(ids) - shown:,} more" if len(ids) > shown else "")
