"""``python run.py pipeline``: build (or resume) a bundle from images."""

from __future__ import annotations

import argparse

from mosaic.cli.commands import print_summary
from mosaic.cli.types import colour_flag
from mosaic.pipeline import grid
from mosaic.pipeline.orchestrator import PipelineConfig, run_pipeline


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``pipeline`` flags; their defaults are ``PipelineConfig``'s."""
    d = PipelineConfig(images="")
    io = p.add_argument_group("input and output")
    io.add_argument("--images", required=True,
                    help="a folder (searched recursively), a glob ('**' allowed) or a .txt list "
                         "of image paths or of IIIF manifest/image service URLs")
    io.add_argument("--iiif-concurrency", type=int, default=d.iiif_concurrency,
                    help="IIIF URL lists: downloads at a time")
    io.add_argument("--metadata", help="CSV with one row per image")
    io.add_argument("--filename-column", default=d.filename_column,
                    help="CSV column holding the image file name or relative path")
    io.add_argument("--title", dest="title_template",
                    help="display title template over CSV columns, e.g. '{Name} ({Year})'")
    io.add_argument("--url", dest="url_template",
                    help="link template over CSV columns, e.g. 'https://example.org/{Id}'")
    io.add_argument("--tags-column", dest="tags_columns", action="append", metavar="NAME",
                    help="CSV column of pipe-delimited tags ('red|sky|sea'), a multi-valued "
                    "facet; repeat for more (default: a column called 'tags', any case)")
    io.add_argument("--out", default=d.out, help="folder that holds the bundles")
    io.add_argument("--id", help="collection id: letters, digits, '.', '_', '-' "
                    "(default: the image folder's name)")
    io.add_argument("--collection-title", dest="title", help="human title (default: the id)")
    th = p.add_argument_group("thumbnails")
    th.add_argument("--cell-size", type=int, default=d.cell_size, help="cell side in pixels")
    th.add_argument("--fit", choices=["fit", "fill"], default=d.fit,
                    help="fit = letterbox the whole image, fill = centre crop")
    th.add_argument("--background", type=colour_flag("--background"), default="white",
                    help="colour behind letterboxes, transparency and empty cells")
    th.add_argument("--max-pixels", type=int, default=d.max_pixels,
                    help="refuse images with more pixels (decompression bombs)")
    th.add_argument("--jobs", type=int, default=d.jobs,
                    help="decoding worker processes, and threads for the layout "
                    "(default: number of CPUs)")
    th.add_argument("--dask", metavar="ADDRESS",
                    help="decode on the workers of this Dask scheduler, e.g. "
                    "tcp://10.0.0.5:8786, instead of local processes (docs/scale.md)")
    em = p.add_argument_group("embedding and layout")
    em.add_argument("--embedding", dest="embeddings", action="append",
                    help="pixels | raw | vgg16 | clip | file:PATH | xy:PATH; repeat for "
                    "more indexes, the first drives the layout (default: pixels); clip "
                    "(CLIP or SigLIP through KerasHub) also answers searches by meaning")
    em.add_argument("--weights", default=d.weights,
                    help="VGG16 weights: imagenet | none | PATH; for clip a KerasHub preset: "
                    "a folder saved with save_to_preset (PATH) or a preset name "
                    "(imagenet means clip_vit_base_patch32; a name needs internet)")
    em.add_argument("--pca", type=int, default=d.pca,
                    help="PCA components before the layout (0 = off)")
    em.add_argument("--reducer", choices=["tsne", "umap"], default=d.reducer)
    em.add_argument("--tsne-backend", choices=["opentsne", "multicore", "sklearn"],
                    default=d.tsne_backend)
    em.add_argument("--perplexity", type=float, default=d.perplexity)
    em.add_argument("--layout-sample", type=int, default=d.layout_sample, metavar="N",
                    help="t-SNE (openTSNE) on more than N items: fit on a seeded sample of N, "
                    "place the others near their nearest fitted items, then refine all "
                    "together (faster; docs/scale.md measures the quality); 0 = always fit "
                    f"all (default: {d.layout_sample:,})")
    em.add_argument("--layout-fast", type=int, default=d.layout_fast, metavar="N",
                    help="t-SNE (openTSNE) on more than N items (up to --layout-sample): fit "
                    "all with a cheaper neighbour search and fewer iterations (about 0.56x "
                    "the time for 0.97x the grid P@10, docs/scale.md); 0 = never "
                    f"(default: {d.layout_fast:,})")
    em.add_argument("--n-neighbors", type=int, default=d.n_neighbors, help="UMAP n_neighbors")
    em.add_argument("--min-dist", type=float, default=d.min_dist, help="UMAP min_dist")
    em.add_argument("--metric", default=d.metric, help="distance for t-SNE/UMAP")
    em.add_argument("--random-state", type=int, default=d.random_state, help="seed")
    em.add_argument("--label-column", metavar="COLUMN",
                    help="supervised layout: this CSV column's values guide UMAP (its y; "
                    "items without a value are unlabelled); needs --reducer umap "
                    "(default: none, unsupervised)")
    em.add_argument("--grid", choices=["auto", "rasterfairy", "lap"], default=d.grid,
                    help=f"auto = lap up to {grid.LAP_AUTO_MAX_ITEMS:,} items, rasterfairy above")
    em.add_argument("--grid-sweeps", type=int, default=d.grid_sweeps, metavar="N",
                    help="after the grid: N passes of swaps that bring each item's nearest "
                    "neighbours into the cells around it (raises grid P@10; docs/benchmarks.md); "
                    f"0 = none (default: {grid.MAX_SWEEPS}, fewer above "
                    f"{grid.MOVE_BUDGET // grid.MAX_SWEEPS:,} items, {grid.MIN_SWEEPS} at least)")
    em.add_argument("--layout", dest="layouts", action="append", metavar="SPEC",
                    help="another layout in the bundle, each with its own grid and tiles: "
                    "date[:COLUMN] (default column year, else date), category[:COLUMN] "
                    "(default category), geo[:LATCOL,LNGCOL] (default lat/lng), xy:PATH (a CSV "
                    "of filename, x, y); repeat for more; similarity (the map above) is "
                    "always the first")
    ti = p.add_argument_group("tiles and indexes")
    ti.add_argument("--tile-size", type=int, default=d.tile_size)
    ti.add_argument("--overlap", type=int, default=d.overlap)
    ti.add_argument("--tile-format", choices=["jpeg", "webp", "png"], default=d.tile_format)
    ti.add_argument("--quality", type=int, default=d.quality, help="jpeg/webp quality")
    ti.add_argument("--n-trees", type=int, default=d.n_trees, help="annoy trees")
    ti.add_argument("--clusters", default=d.clusters,
                    help="the older hotspots list (off | auto | N), kept for compatibility: "
                    "the labelled regions (--region-size) subsume it")
    ti.add_argument("--region-size", type=int, default=d.region_size, metavar="N",
                    help="labelled regions of the map at every zoom: about 12 at the top, "
                    "split until they hold about N items, each labelled by the metadata "
                    "values and words most distinctive of it; 0 = none "
                    f"(default: {d.region_size})")
    ti.add_argument("--duplicates", action=argparse.BooleanOptionalAction, default=d.duplicates,
                    help="find the groups of exact and near duplicates (resized, re-encoded, "
                    "lightly cropped copies; `run.py duplicates` at its default threshold) and "
                    "store them in the bundle for the viewer's Duplicates filter and `info`; "
                    "needs the pixels embedding (default: "
                    f"{'--duplicates' if d.duplicates else '--no-duplicates'})")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    fields = PipelineConfig.__dataclass_fields__
    values = {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}
    return PipelineConfig(**values)


def run(args: argparse.Namespace) -> int:
    quiet = getattr(args, "quiet", False)
    result = run_pipeline(config_from_args(args), show_progress=not quiet)
    if not quiet:
        print_summary(result.manifest, result.directory, result.cached_stages)
    return 0
