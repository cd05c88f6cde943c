"""``python run.py duplicates``: groups of exact and near duplicates (mosaic.duplicates)."""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from pathlib import Path

from mosaic.bundle import DEFAULT_OUT, Bundle, bundle_dir
from mosaic.errors import UsageError
from mosaic.store import iter_export_rows

# The CSV's columns, in order (README, "Finding duplicates").
FIELDS = ("group", "id", "source", "width", "height", "bytes", "largest")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``duplicates`` options to ``parser``."""
    from mosaic.duplicates import MAX_DIFFERENCE

    parser.add_argument("--id", required=True, help="collection id")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help="folder that holds the bundles")
    parser.add_argument("--threshold", type=float, default=MAX_DIFFERENCE, metavar="T",
                        help="largest colour difference (0-255, after aligning a crop and "
                             "blurring) at which two neighbours are the same picture; lower "
                             "is stricter")
    parser.add_argument("--format", choices=["csv", "json"], default="csv")
    parser.add_argument("-o", "--output",
                        help="file to write, or - for standard output (default: -)")


def run(args: argparse.Namespace) -> int:
    """Find the groups and write them; returns the exit code."""
    from mosaic import duplicates

    if not 0 <= args.threshold <= 255:
        raise UsageError(f"--threshold must be between 0 and 255, not {args.threshold:g}")
    to_stdout = args.output in (None, "-")
    if not to_stdout and not Path(args.output).parent.is_dir():
        raise UsageError(f"-o/--output folder {Path(args.output).parent} does not exist")
    bundle = Bundle.open(bundle_dir(args.out, args.id))
    group, ids, how = _groups(bundle, args.threshold)
    rows = _member_rows(bundle, ids)
    sources = [row[1] for row in rows]
    sizes = duplicates.file_sizes(sources)
    pixels = [int(row[2] or 0) * int(row[3] or 0) for row in rows]
    largest = duplicates.largest_members(group, ids, pixels, sizes)
    handle = sys.stdout if to_stdout else open(args.output, "w", newline="", encoding="utf-8")
    try:
        members = ((int(g), *row, int(size) if size >= 0 else None, bool(top))
                   for g, row, size, top in zip(group, rows, sizes, largest))
        if args.format == "json":
            _write_json(handle, args.id, args.threshold, members)
        else:
            writer = csv.writer(handle)
            writer.writerow(FIELDS)
            for g, item, source, width, height, size, top in members:
                writer.writerow([g, item, source, width, height,
                                 "" if size is None else size, int(top)])
    finally:
        if not to_stdout:
            handle.close()
    print(f"{len(set(group.tolist())):,} groups of duplicates, {len(ids):,} items ({how})",
          file=sys.stderr)
    return 0


def _groups(bundle: Bundle, threshold: float):
    """``(group, ids, how)``: the groups the pipeline stored when they are at this
    threshold and the bundle is still as the pipeline wrote it (generation 1: items
    removed or added since change the neighbour lists, so the pairs), else searched now."""
    from mosaic import duplicates

    stored = bundle.duplicates
    if stored and stored.threshold == threshold and bundle.generation == 1:
        group, ids = duplicates.stored_groups(duplicates.read_stored(bundle))
        return group, ids, f"stored by the pipeline, {stored.path}"
    group, ids = duplicates.find_duplicates(bundle, max_difference=threshold)
    return group, ids, "searched now"


def _member_rows(bundle: Bundle, ids) -> list[tuple]:
    """``(id, source, width, height)`` of each member, in the order of ``ids``."""
    conn = bundle.connect()
    try:
        found = {fields[0]: fields for fields, _ in iter_export_rows(
            conn, [], ids=[int(i) for i in ids], fields=("id", "source", "width", "height"))}
    finally:
        conn.close()
    return [found[int(i)] for i in ids]


def _write_json(handle, cid: str, threshold: float, members) -> None:
    """``{"collection", "threshold", "groups": [{"group", "items": [...]}]}``, streamed
    one group at a time (members come grouped, in group order)."""
    handle.write(json.dumps({"collection": cid, "threshold": threshold})[:-1]
                 + ', "groups": [')
    written = 0
    for number, items in itertools.groupby(members, key=lambda member: member[0]):
        body = [{"id": item, "source": source, "width": width, "height": height,
                 "bytes": size, "largest": top}
                for _, item, source, width, height, size, top in items]
        handle.write(("," if written else "") + "\n"
                     + json.dumps({"group": number, "items": body}, ensure_ascii=False))
        written += 1
    handle.write("\n]}\n")
