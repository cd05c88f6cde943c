"""``python run.py similar``: the items of a bundle most like one or more new images,
or (``--text``) closest in meaning to a text.

A query image goes through the pipeline's own decode and embedding
(``mosaic.pipeline.decode.embed_query``, with the bundle's settings) and the server's
neighbour search (``server.neighbors.NeighborIndex``: exact for small bundles, else the
bundle's annoy index with its metric and ``search_k``), so the command, the API and
the map cannot disagree about what is near what. A text goes through the text tower
of the model that embedded the bundle's images (``decode.embed_text_query``: a ``clip``
embedding only) and the same neighbour search.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mosaic.bundle import DEFAULT_OUT, Bundle, bundle_dir
from mosaic.errors import UsageError

if TYPE_CHECKING:
    from server.bundles import ServedBundle

FIELDS = ("query", "rank", "id", "source", "distance")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``similar`` options to ``parser``."""
    parser.add_argument("--id", required=True, help="collection id")
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder that holds the bundles")
    parser.add_argument("-k", type=int, default=10, metavar="K",
                        help="neighbours per query image")
    parser.add_argument("--embedding", metavar="NAME",
                        help="the bundle's embedding to compare in (`info` lists them); "
                        "file: and xy: embeddings cannot embed a new image, and only clip "
                        "embeds a text (default: the bundle's first, with --text its "
                        "first clip)")
    parser.add_argument("--text", action="append", metavar="TEXT",
                        help="search by meaning: the items closest to this text in a clip "
                        "embedding, instead of query images; repeat for more texts")
    parser.add_argument("--format", choices=["csv", "json"], default="csv",
                        help="csv: one row per neighbour, columns " + ",".join(FIELDS)
                        + "; json: a list of the same rows as objects")
    parser.add_argument("-o", "--output",
                        help="file to write, or - for standard output (default: -)")
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="query image files, decoded as the pipeline decoded the bundle's")


def run(args: argparse.Namespace) -> int:
    """Every query's ``k`` nearest items, nearest first; each query is embedded before
    anything is written, so a bad one fails the command with no partial output."""
    from mosaic.pipeline.decode import embed_query, embed_text_query
    from server import EXACT_MAX
    from server.bundles import ServedBundle

    if bool(args.images) == bool(args.text):
        raise UsageError("give query IMAGE files or --text, one of the two")
    if args.k < 1:
        raise UsageError(f"-k must be at least 1, not {args.k}")
    to_stdout = args.output in (None, "-")
    if not to_stdout and not Path(args.output).parent.is_dir():
        raise UsageError(f"-o/--output folder {Path(args.output).parent} does not exist")
    model = Bundle.open(bundle_dir(args.out, args.id))
    bundle = ServedBundle(cid=args.id, model=model, exact_max=EXACT_MAX)
    if args.text:
        name = args.embedding or model.meaning_embedding or \
            (bundle.embedding_names or [None])[0]
    else:
        name = args.embedding or (bundle.embedding_names or [None])[0]
    embedding = bundle.embedding(name) if name else None
    if embedding is None:
        raise UsageError(f"--embedding {name!r}: collection {args.id!r} has "
                         f"{', '.join(bundle.embedding_names) or 'no embeddings'}")
    queries = args.text or args.images
    vectors = [embed_text_query(text, model, embedding) for text in args.text] \
        if args.text else [embed_query(path, model, embedding) for path in args.images]
    index = bundle.neighbor_index(name)
    found = [index.query_vector(vector, args.k) for vector in vectors]
    sources = _sources(bundle, sorted({int(i) for ids, _ in found for i in ids}))
    rows = [(query, rank, int(item), sources[int(item)], round(float(distance), 6))
            for query, (ids, distances) in zip(queries, found, strict=True)
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


def _sources(bundle: ServedBundle, ids: list[int]) -> dict[int, str]:
    """``{id: source}``: the item's file path or URL as the pipeline read it (what
    ``export`` writes as ``source``)."""
    conn = bundle.connect()
    try:
        sql = f"SELECT id, source FROM items WHERE id IN ({','.join('?' * len(ids))})"
        return {row["id"]: row["source"] for row in conn.execute(sql, ids)} if ids else {}
    finally:
        conn.close()
