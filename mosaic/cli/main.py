"""Command line: ``mosaic`` / ``python run.py`` with subcommands.

``get_parser()`` builds the parser; ``main(argv) -> int`` runs it. Errors in
the user's input print one ``Error: ...`` line and exit 2; other failures exit 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from mosaic import __version__
from mosaic.errors import MosaicError

logger = logging.getLogger("mosaic")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _colour(value: str) -> tuple[int, int, int]:
    """'#rrggbb', 'r,g,b' or a few names -> (r, g, b)."""
    names = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128),
             "gray": (128, 128, 128)}
    text = value.strip().lower()
    try:
        if text in names:
            return names[text]
        if text.startswith("#") and len(text) == 7:
            return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        parts = [int(p) for p in text.split(",")]
        if len(parts) == 3 and all(0 <= p <= 255 for p in parts):
            return tuple(parts)  # type: ignore[return-value]
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{value!r} is not a colour (#rrggbb, r,g,b or white/black)")


def _add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    from mosaic.pipeline.orchestrator import PipelineConfig

    d = PipelineConfig(images="")
    io = p.add_argument_group("input and output")
    io.add_argument("--images", required=True,
                    help="a folder (searched recursively), a glob ('**' allowed) or a .txt list")
    io.add_argument("--metadata", help="CSV with one row per image")
    io.add_argument("--filename-column", default=d.filename_column,
                    help="CSV column holding the image file name or relative path")
    io.add_argument("--title", dest="title_template",
                    help="display title template over CSV columns, e.g. '{Name} ({Year})'")
    io.add_argument("--url", dest="url_template",
                    help="link template over CSV columns, e.g. 'https://example.org/{Id}'")
    io.add_argument("--out", default=d.out, help="folder that holds the bundles")
    io.add_argument("--id", help="collection id (default: the image folder's name)")
    io.add_argument("--collection-title", dest="title", help="human title (default: the id)")
    th = p.add_argument_group("thumbnails")
    th.add_argument("--cell-size", type=int, default=d.cell_size, help="cell side in pixels")
    th.add_argument("--fit", choices=["fit", "fill"], default=d.fit,
                    help="fit = letterbox the whole image, fill = centre crop")
    th.add_argument("--background", type=_colour, default="white",
                    help="colour behind letterboxes, transparency and empty cells")
    th.add_argument("--max-pixels", type=int, default=d.max_pixels,
                    help="refuse images with more pixels (decompression bombs)")
    th.add_argument("--jobs", type=int, default=d.jobs, help="parallel decoders and threads")
    em = p.add_argument_group("embedding and layout")
    em.add_argument("--embedding", dest="embeddings", action="append",
                    help="vgg16 | raw | file:PATH | xy:PATH; repeat for more indexes, the "
                    "first drives the layout (default: raw)")
    em.add_argument("--weights", default=d.weights, help="VGG16 weights: imagenet | none | PATH")
    em.add_argument("--pca", type=int, default=d.pca,
                    help="PCA components before the layout (0 = off)")
    em.add_argument("--reducer", choices=["tsne", "umap"], default=d.reducer)
    em.add_argument("--tsne-backend", choices=["opentsne", "multicore", "sklearn"],
                    default=d.tsne_backend)
    em.add_argument("--perplexity", type=float, default=d.perplexity)
    em.add_argument("--n-neighbors", type=int, default=d.n_neighbors, help="UMAP n_neighbors")
    em.add_argument("--min-dist", type=float, default=d.min_dist, help="UMAP min_dist")
    em.add_argument("--metric", default=d.metric, help="distance for t-SNE/UMAP")
    em.add_argument("--random-state", type=int, default=d.random_state, help="seed")
    em.add_argument("--grid", choices=["auto", "rasterfairy", "lap"], default=d.grid,
                    help="auto = lap up to 1,000 items, rasterfairy above")
    ti = p.add_argument_group("tiles and indexes")
    ti.add_argument("--tile-size", type=int, default=d.tile_size)
    ti.add_argument("--overlap", type=int, default=d.overlap)
    ti.add_argument("--tile-format", choices=["jpeg", "webp", "png"], default=d.tile_format)
    ti.add_argument("--quality", type=int, default=d.quality, help="jpeg/webp quality")
    ti.add_argument("--n-trees", type=int, default=d.n_trees, help="annoy trees")
    ti.add_argument("--clusters", default=d.clusters, help="hotspots: off | auto | N")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosaic", formatter_class=_Formatter,
                                     description="Turn an image collection into a zoomable "
                                     "similarity map.")
    parser.add_argument("--version", action="version", version=f"mosaic {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log each step")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=_Formatter)
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
        sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
        return sub

    _add_pipeline_arguments(command("pipeline", "build (or resume) a bundle from images"))
    for name, help_text in (("export", "write one row per item as CSV or JSON"),
                            ("info", "print what a bundle holds")):
        sub = command(name, help_text)
        sub.add_argument("--id", required=True, help="collection id")
        sub.add_argument("--out", default="output", help="folder that holds the bundles")
        if name == "export":
            sub.add_argument("--format", choices=["csv", "json"], default="csv")
            sub.add_argument("-o", "--output", help="file to write (default: stdout)")
    demo = command("demo", "build the demo collection (scikit-learn's digits)")
    demo.add_argument("--out", default="output", help="folder that holds the bundles")
    demo.add_argument("--data", default="demo_data", help="where the demo images are written")
    _add_optional_command(command, "serve", "serve bundles over HTTP with the viewer",
                          "mosaic.cli.serve")
    _add_optional_command(command, "poster", "export a print-ready poster from a bundle",
                          "mosaic.cli.poster")
    return parser


def help_markdown() -> str:
    """Every command's ``--help`` as Markdown: the text of docs/cli.md."""
    parser = get_parser()
    os.environ.setdefault("COLUMNS", "100")
    sections = ["# Command-line reference", "",
                "Generated from `--help` by `make docs`; a test keeps it current.", "",
                "```text", parser.format_help().rstrip(), "```"]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        sections += ["", f"## {name}", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(sections) + "\n"


def _add_optional_command(command, name: str, help_text: str, module_name: str) -> None:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        return  # that part of the tool is not installed in this checkout
    module.configure_parser(command(name, help_text))


def main(argv: Sequence[str] | None = None) -> int:
    # Idle OpenMP threads (openTSNE, scikit-learn) otherwise spin-wait and, on a
    # few cores, starve the threads doing the work: 10-30 s instead of 1 s.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = get_parser()
    args = parser.parse_args(argv)
    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR if quiet
                        else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args, quiet)
    except (MosaicError, ValueError) as error:
        print(f"Error: {error}", file=sys.stderr)
        is_usage = not isinstance(error, MosaicError) or isinstance(error, ValueError)
        return 2 if is_usage else 1
    except KeyboardInterrupt:
        print("Interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, quiet: bool) -> int:
    from mosaic.cli import commands

    if args.command == "pipeline":
        return commands.pipeline(args, quiet)
    if args.command == "export":
        return commands.export(args)
    if args.command == "info":
        return commands.info(args)
    if args.command == "demo":
        return commands.demo(args, quiet)
    if args.command == "serve":
        from mosaic.cli.serve import run
        return run(args)
    if args.command == "poster":
        from mosaic.cli.poster import run
        return run(args)
    raise AssertionError(args.command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
