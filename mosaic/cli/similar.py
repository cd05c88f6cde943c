"""``python run.py similar``: the items of a bundle most like one or more new images.

A query image goes through the pipeline's own decode and embedding
(``mosaic.pipeline.decode.embed_query``, with the bundle's settings) and the server's
neighbour search (``server.neighbors.NeighborIndex``: exact for small bundles, else the
bundle's annoy index with its metric and ``search_k``), so the command, the API and
the map cannot disagree about what is near what.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mosaic.bundle import DEFAULT_OUT, bundle_dir, open_manifest
from mosaic.errors import UsageError

if TYPE_CHECKING:
    from server.bundles import Bundle

FIELDS = ("query", "rank", "id", "source", "distance")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``similar`` options to ``parser``."""
    parser.add_argument("--id", required=True, help="collection id")
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder that holds the bundles")
    parser.add_argument("-k", type=int, default=10, metavar="K",
                        help="neighbours per query image")
    parser.add_argument("--embedding", metavar="NAME",
                        help="the bundle's embedding to compare in (`info` lists them); "
                        "file: and xy: embeddings cannot embed a new image "
                        "(default: the bundle's first)")
    parser.add_argument("--format", choices=["csv", "json"], default="csv",
                        help="csv: one row per neighbour, columns " + ",".join(FIELDS)
                        + "; json: a list of the same rows as objects")
    parser.add_argument("-o", "--output",
                        help="file to write, or - for standard output (default: -)")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="query image files, decoded as the pipeline decoded the bundle's")


def run(args: argparse.Namespace) -> int:
    """Every query's ``k`` nearest items, nearest first; each query is embedded before
    anything is written, so a bad one fails the command with no partial output."""
    from mosaic.pipeline.decode import embed_query
    from server import EXACT_MAX
    from server.bundles import Bundle

    if args.k < 1:
        raise UsageError(f"-k must be at least 1, not {args.k}")
    to_stdout = args.output in (None, "-")
    if not to_stdout and not Path(args.output).parent.is_dir():
        raise UsageError(f"-o/--output folder {Path(args.output).parent} does not exist")
    directory = bundle_dir(args.out, args.id)
    manifest, version = open_manifest(directory)
    bundle = Bundle(cid=args.id, path=directory, manifest=manifest, version=version,
                    exact_max=EXACT_MAX)
    name = args.embedding or (bundle.embedding_names or [None])[0]
    embedding = bundle.embedding(name) if name else None
    if embedding is None:
        raise UsageError(f"--embedding {name!r}: collection {args.id!r} has "
                         f"{', '.join(bundle.embedding_names) or 'no embeddings'}")
    vectors = [embed_query(path, manifest, embedding) for path in args.images]
    index = bundle.neighbor_index(name)
    found = [index.query_vector(vector, args.k) for vector in vectors]
    sources = _sources(bundle, sorted({int(i) for ids, _ in found for i in ids}))
    rows = [(query, rank, int(item), sources[int(item)], round(float(distance), 6))
            for query, (ids, distances) in zip(args.images, found, strict=True)
            for rank, (item, distance) in enumerate(zip(ids, distances, strict=True), 1)]
    handle = sys.stdout if to_stdout else open(args.output, "w", newline="", encoding="utf-8")
    try:
        if args.format == "json":
            handle.write("[" + ",".join("\n" + json.dumps(dict(zip(FIELDS, row)),
                                                          ensure_ascii=False)
                                        for row in rows) + "\n]\n")
        else:
            writer = csv.writer(handle)
            writer.writerow(FIELDS)
            writer.writerows(rows)
    finally:
        if not to_stdout:
            handle.close()
    return 0


def _sources(bundle: Bundle, ids: list[int]) -> dict[int, str]:
    """``{id: source}``: the item's file path or URL as the pipeline read it (what
    ``export`` writes as ``source``)."""
    conn = bundle.connect()
    try:
        sql = f"SELECT id, source FROM items WHERE id IN ({','.join('?' * len(ids))})"
        return {row["id"]: row["source"] for row in conn.execute(sql, ids)} if ids else {}
    finally:
        conn.close()
