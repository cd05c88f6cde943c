"""The orchestrator: runs the stages in order, caches each one in the bundle, writes the manifest.

Each stage's cache key chains the key of what it reads, plus its own
parameters and the program version, so changing a late parameter re-runs only
the stages after it. The manifest is removed when a run starts and written
last, so its presence always means a complete bundle.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyvips

from mosaic import SCHEMA_VERSION, __version__, duplicates, knn, quality
from mosaic.bundle import (
    CELL_CODEC,
    CELL_QUALITY,
    CELLS_INDEX,
    CELLS_PACK,
    COLLECTION_ID,
    DEFAULT_OUT,
    MANIFEST,
    Bundle,
    bundle_dir,
    cells_record,
    grid_entry,
    layout_record,
    open_cell_pack,
    open_vectors,
    similarity_layout_entry,
)
from mosaic.errors import MosaicError, UsageError
from mosaic.pipeline import arrange, collect, grid, iiif_in, reduce, regions, render, thumbnail
from mosaic.pipeline import hotspots as clusters_mod
from mosaic.pipeline.decode import DONE, DecodeOptions, compact, open_executor, run_decode
from mosaic.pipeline.embed import (
    MODEL_KINDS,
    VECTOR_DTYPES,
    VECTOR_SCALES,
    EmbeddingSpec,
    check_model_weights,
    clip_weights,
    parse_embedding_specs,
    pixel_dims,
    read_user_vectors,
    weights_signature,
)
from mosaic.pipeline.index import (
    FOREST_METRICS,
    FOREST_SETTINGS,
    build_annoy,
    choose_search_k,
    forest_top_neighbors,
    lists_recall,
    recall_truth,
)
from mosaic.pipeline.metadata import ItemRecord, write_metadata_db
from mosaic.pipeline.store import (
    StageCache,
    bundle_lock,
    cache_key,
    create_npy_rows,
    save_npy_atomic,
    write_bytes_atomic,
    write_json_atomic,
)
from mosaic.pipeline.thumbnail import DEFAULT_MAX_PIXELS
from mosaic.progress import Progress
from mosaic.store import sql_names

logger = logging.getLogger(__name__)
# The grid P@10 reference (quality.py): each query item's nearest neighbours in the
# layout vectors, written with the layout and scored against the grid.
QUALITY_NEIGHBOURS = "cache/quality-neighbours.npy"
# Each item's nearest items in the layout vectors (reduce.neighbour_graph), written with
# the layout: what the grid refinement (grid.refine_grid) keeps together.
LAYOUT_GRAPH = "cache/layout-graph.npy"


@dataclass
class PipelineConfig:
    """Every parameter of a run; the CLI fills it from flags (same names)."""

    images: str
    out: str = DEFAULT_OUT
    id: str | None = None
    title: str | None = None
    metadata: str | None = None
    filename_column: str = "filename"
    title_template: str | None = None
    url_template: str | None = None
    tags_columns: list[str] = field(default_factory=list)  # besides a column called "tags"
    cell_size: int = 128
    fit: str = "fit"
    background: tuple[int, int, int] = (255, 255, 255)
    max_pixels: int = DEFAULT_MAX_PIXELS
    jobs: int | None = None  # None: one per CPU (see n_jobs)
    dask: str | None = None  # a Dask scheduler's address: decode on its workers
    embeddings: list[str] = field(default_factory=lambda: ["pixels"])
    weights: str = "imagenet"
    pca: int = 256
    reducer: str = "tsne"
    tsne_backend: str = "opentsne"
    perplexity: float = 30.0
    layout_sample: int = reduce.LAYOUT_SAMPLE  # openTSNE: fit a sample above this; 0 = all
    layout_fast: int = reduce.LAYOUT_FAST  # openTSNE: a cheaper full fit above this; 0 = never
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "euclidean"
    random_state: int = 0
    label_column: str | None = None  # supervised UMAP: this CSV column's values as y
    grid: str = "auto"
    grid_sweeps: int | None = None  # grid.refine_grid passes; None = grid.default_sweeps(N)
    layouts: list[str] = field(default_factory=list)  # --layout: besides similarity (first)
    tile_size: int = 256
    overlap: int = 0
    tile_format: str = "jpeg"
    quality: int = 85
    n_trees: int = 20
    clusters: str = "off"  # the older hotspots; regions (below) subsume them
    region_size: int = regions.REGION_SIZE  # labelled regions: the finest ones' size; 0 = none
    duplicates: bool = True  # store the duplicate groups (mosaic.duplicates) in the bundle
    iiif_concurrency: int = 4  # IIIF in: downloads at a time

    def n_jobs(self) -> int:
        """Parallel decoders and threads: ``jobs``, or one per CPU of this machine."""
        return self.jobs or os.cpu_count() or 1

    def collection_id(self) -> str:
        if self.id:
            return self.id
        spec = Path(self.images)
        base = spec if spec.is_dir() else Path(self.images.split("*")[0] or ".").resolve()
        name = base.name if base.is_dir() else base.stem
        # The default id is the folder's name made safe for a URL: "My photos" -> "My-photos".
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
        return name or "collection"


def validate(config: PipelineConfig) -> None:
    """UsageError naming the first bad parameter."""
    checks = [
        (8 <= config.cell_size <= 1024, "--cell-size must be between 8 and 1024"),
        (config.fit in ("fit", "fill"), "--fit must be fit or fill"),
        (config.jobs is None or config.jobs >= 1, "--jobs must be at least 1"),
        (config.pca >= 0, "--pca must be 0 (off) or positive"),
        (config.perplexity > 0, "--perplexity must be positive"),
        (config.layout_sample == 0 or config.layout_sample >= reduce.MIN_ITEMS_FOR_MANIFOLD,
         f"--layout-sample must be 0 (fit all) or at least {reduce.MIN_ITEMS_FOR_MANIFOLD}"),
        (config.layout_fast >= 0, "--layout-fast must be 0 (never) or positive"),
        (config.n_neighbors >= 2, "--n-neighbors must be at least 2"),
        (0 <= config.min_dist <= 1, "--min-dist must be between 0 and 1"),
        (16 <= config.tile_size <= 4096, "--tile-size must be between 16 and 4096"),
        (0 <= config.overlap < config.tile_size // 2, "--overlap must be in [0, tile-size/2)"),
        (config.tile_format in render.TILE_FORMATS, "--tile-format must be jpeg, webp or png"),
        (1 <= config.quality <= 100, "--quality must be between 1 and 100"),
        (config.n_trees >= 1, "--n-trees must be at least 1"),
        (config.iiif_concurrency >= 1, "--iiif-concurrency must be at least 1"),
        (config.max_pixels >= 1, "--max-pixels must be positive"),
        (config.grid in grid.METHODS, f"--grid must be one of {', '.join(grid.METHODS)}"),
        (config.grid_sweeps is None or config.grid_sweeps >= 0,
         "--grid-sweeps must be 0 (no refinement) or positive"),
        (config.reducer in reduce.REDUCERS, "--reducer must be tsne or umap"),
        (config.label_column is None or config.reducer == "umap", reduce.LABELS_NEED_UMAP),
        (config.tsne_backend in reduce.TSNE_BACKENDS,
         "--tsne-backend must be opentsne, multicore or sklearn"),
        (config.clusters == "off" or config.clusters == "auto" or config.clusters.isdigit()
         and int(config.clusters) >= 1, "--clusters must be off, auto or a positive count"),
        (config.region_size >= 0, "--region-size must be 0 (no regions) or positive"),
        (COLLECTION_ID.match(config.collection_id()) is not None,
         f"--id must be letters, digits, '.', '_' or '-', starting with a letter or digit, "
         f"not {config.collection_id()!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


@dataclass
class PipelineResult:
    manifest: dict[str, Any]
    directory: Path
    cached_stages: list[str]


def run_pipeline(config: PipelineConfig, show_progress: bool = False) -> PipelineResult:
    """Run every stage (resuming/caching); returns the written manifest and what was cached."""
    validate(config)
    specs = parse_embedding_specs(config.embeddings)
    check_model_weights([s.kind for s in specs], config.weights)
    inputs = collect.collect_inputs(config.images)
    if inputs.urls and config.metadata:
        raise UsageError("--metadata cannot be used with a list of IIIF URLs: their labels "
                         "and metadata are the items' metadata")
    if inputs.urls:  # IIIF in: the title is the manifest's label, unless --title says
        config = replace(config, title_template=config.title_template or "{label}")
    metadata = collect.read_metadata(config.metadata, config.filename_column) \
        if config.metadata else None
    columns = metadata.columns if metadata else []
    if inputs.urls:  # the metadata is only known once fetched: the checks come then
        columns = ["label", "manifest", *collect.template_fields(config.title_template or ""),
                   *collect.template_fields(config.url_template or "")]
    collect.check_template("--title", config.title_template, columns)
    collect.check_template("--url", config.url_template, columns)
    if config.label_column and specs[0].kind == "xy":
        raise UsageError(f"--label-column needs a computed layout, not --embedding "
                         f"{config.embeddings[0]} (the layout itself)")
    if not inputs.urls:  # a IIIF list's columns are known once fetched: checked then
        _check_user_columns(config, metadata)
        layouts = _check_layouts(config.layouts, metadata, inputs)
    directory = bundle_dir(config.out, config.collection_id())
    with bundle_lock(directory):
        (directory / MANIFEST).unlink(missing_ok=True)
        pyvips.cache_set_max(0)
        fetch_skipped: list[dict] = []
        if inputs.urls:
            inputs, metadata, fetch_skipped = iiif_in.fetch_inputs(
                inputs.urls, directory / "cache" / "iiif",
                iiif_in.model_size(config.cell_size, config.embeddings), config.iiif_concurrency)
            _check_user_columns(config, metadata)
            layouts = _check_layouts(config.layouts, metadata, inputs)
        run = _Run(config, specs, inputs, metadata, directory, show_progress)
        run.layouts = layouts
        run.fetch_skipped = fetch_skipped
        return PipelineResult(run.execute(), directory, run.cached)


def _check_user_columns(config: PipelineConfig, metadata: collect.Metadata | None) -> None:
    """UsageError naming a ``--label-column`` or ``--tags-column`` the CSV lacks."""
    if config.label_column:
        collect.check_columns("--label-column", [config.label_column], metadata)
        if not any(row.get(config.label_column) for row in metadata.rows):
            raise UsageError(f"--label-column {config.label_column!r} has no values in the "
                             f"metadata CSV")
    if metadata is not None:
        collect.tags_columns(metadata, config.tags_columns)
    elif config.tags_columns:
        collect.check_columns("--tags-column", config.tags_columns, None)


def _check_layouts(values: list[str], metadata: collect.Metadata | None,
                   inputs: collect.Inputs) -> list[arrange.LayoutSpec]:
    """The ``--layout`` specs resolved (similarity first); one UsageError naming the
    layout and its column for a missing column or one without any usable value."""
    specs = arrange.resolve_layout_specs(values, metadata.columns if metadata else None)
    for spec in specs[1:]:
        if spec.kind == "xy":
            coords = _read_layout_xy(spec, inputs.paths)
            if not np.isfinite(coords).all(axis=1).any():
                raise UsageError(f"--layout {spec.name}: no image has a row in {spec.path}")
            continue
        values = [[row.get(column, "") for row in metadata.rows] for column in spec.columns]
        usable = arrange.layout_values(spec.kind, values)
        ok = (np.isfinite(usable).any() if spec.kind == "date"
              else np.isfinite(usable).all(axis=1).any() if spec.kind == "geo"
              else any(v is not None for v in usable))
        if not ok:
            what = {"date": "a year or an ISO date", "category": "a value",
                    "geo": "a latitude and longitude in range"}[spec.kind]
            raise UsageError(f"--layout {spec.name}: column "
                             f"{' / '.join(repr(c) for c in spec.columns)} has no usable value "
                             f"({what}) in the CSV")
    return specs


def _read_layout_xy(spec: arrange.LayoutSpec, paths: list[str]) -> np.ndarray:
    """``--layout xy:PATH``'s (x, y) per input through ``--embedding xy:``'s reader; NaN
    rows for images it has no row for."""
    if not os.path.isfile(spec.path):
        raise UsageError(f"--layout {spec.name}: no such file {spec.path!r} (a CSV of "
                         f"filename, x, y, or a .npy of (n_images, 2))")
    vectors = read_user_vectors(EmbeddingSpec(spec.slug, "xy", spec.path), paths,
                                missing_ok=True)
    return np.asarray(vectors, dtype=np.float64)


class _Run:
    """One pipeline run over one bundle folder (held under its lock)."""

    def __init__(self, config, specs, inputs, metadata, directory, show_progress):
        self.config: PipelineConfig = config
        self.specs: list[EmbeddingSpec] = specs
        self.inputs: collect.Inputs = inputs
        self.metadata: collect.Metadata | None = metadata
        self.directory: Path = directory
        self.cache = StageCache(directory)
        self.show_progress = show_progress
        self.timings: dict[str, float] = {}
        self.cached: list[str] = []
        self.fetch_skipped: list[dict] = []  # IIIF in: what could not be fetched
        self.layouts: list[arrange.LayoutSpec] = [arrange.LayoutSpec("similarity")]

    def stage(self, name: str, key: str, build) -> dict[str, Any]:
        """Return the fresh cache record of ``name`` or run ``build`` to make one."""
        record = self.cache.read(name, key)
        started = time.perf_counter()
        if record is None:
            logger.info("stage %s: running", name)
            outputs, info = build()
            self.cache.write(name, key, outputs, **info)
            record = self.cache.read(name, key)
        else:
            self.cached.append(name)
        self.timings[name] = round(time.perf_counter() - started, 3)
        return record

    def path(self, name: str) -> Path:
        return self.directory / name

    def execute(self) -> dict[str, Any]:
        c = self.config
        stats = [_file_signature(p) for p in self.inputs.paths]
        input_key = cache_key(__version__, self.inputs.paths, stats)
        pixel_specs = [asdict(s) for s in self.specs if s.from_pixels]
        decode_key = cache_key(input_key, c.cell_size, c.fit, c.background, c.max_pixels,
                               pixel_specs, c.weights if pixel_specs else None,
                               *([weights_signature(c.weights)]
                                 if any(s.kind == "clip" for s in self.specs) else []),
                               CELL_CODEC, CELL_QUALITY, "decoder", thumbnail.DECODER)
        decoded = self.stage("decode", decode_key, lambda: self.build_decode(decode_key))
        kept = np.load(self.path("cache/kept.npy"))
        user_files = [(s.name, _file_signature(s.path)) for s in self.specs if not s.from_pixels]
        vectors_key = cache_key(decode_key, user_files)
        self.stage("vectors", vectors_key, lambda: self.build_user_vectors(kept))
        # A supervised layout also reads the CSV (its label column); unsupervised keys
        # are as before.
        supervised = [c.label_column, _file_signature(c.metadata), c.filename_column] \
            if c.label_column else []
        layout_key = cache_key(vectors_key, c.pca, c.reducer, c.tsne_backend, c.perplexity,
                               c.n_neighbors, c.min_dist, c.metric, c.random_state,
                               *supervised, *self.layout_method_key(),
                               *(["graph", reduce.GRAPH_K, reduce.GRAPH_VERSION]
                                 if self.specs[0].kind != "xy"
                                 else []))
        layout = self.stage("layout", layout_key, self.build_layout)
        grid_key = cache_key(layout_key, c.grid, *self.grid_refine_key())
        gridded = self.stage("grid", grid_key, self.build_grid)
        render_key = cache_key(grid_key, decode_key, c.tile_size, c.overlap, c.tile_format,
                               c.quality, c.background)
        tiles = self.stage("render", render_key, lambda: self.build_render(gridded))
        extra_layouts = []
        for spec in self.layouts[1:]:
            source = [_file_signature(spec.path)] if spec.kind == "xy" else \
                [_file_signature(c.metadata), c.filename_column]
            key = cache_key(grid_key, spec.name, source, arrange.ARRANGE_VERSION)
            placed = self.stage(f"layout-{spec.slug}", key,
                                lambda spec=spec: self.build_arrangement(spec, kept))
            key = cache_key(key, decode_key, c.tile_size, c.overlap, c.tile_format, c.quality,
                            c.background)
            rendered = self.stage(f"render-{spec.slug}", key,
                                  lambda spec=spec, placed=placed: self.build_render(
                                      placed, f"layouts/{spec.slug}/"))
            extra_layouts.append((spec, placed, rendered))
        index_keys = {s.name: cache_key(vectors_key, s.name, c.n_trees, c.random_state, "top",
                                        knn.TOP_K, FOREST_SETTINGS) for s in self.specs}
        indexes = [self.stage(f"index-{s.name}", index_keys[s.name],
                              lambda s=s: self.build_annoy(s)) for s in self.specs]
        meta_key = cache_key(grid_key, _file_signature(c.metadata), c.filename_column,
                             c.title_template, c.url_template,
                             *([["tags", tagged]] if (tagged := self.tags_columns()) else []))
        stored = self.stage("metadata", meta_key, lambda: self.build_metadata(kept))
        hotspot_key = cache_key(meta_key, c.clusters)
        hotspots = self.stage("hotspots", hotspot_key, lambda: self.build_hotspots(stored))
        regions_key = cache_key(meta_key, c.region_size, c.random_state, regions.REGIONS_VERSION)
        labelled = self.stage("regions", regions_key, lambda: self.build_regions(stored, kept))
        # The duplicate groups read the pixels embedding's stored neighbour lists (its index
        # stage), its cells and sizes (decode) and metadata.sqlite's sizes (written above).
        duplicates_key = cache_key(index_keys.get(duplicates.EMBEDDING), c.duplicates,
                                   duplicates.SETTINGS)
        grouped = self.stage("duplicates", duplicates_key,
                             lambda: self.build_duplicates(indexes, kept))
        manifest = self.manifest(decoded, layout, gridded, tiles, indexes, stored, hotspots)
        manifest["regions"] = labelled["regions"]
        manifest["duplicates"] = grouped["duplicates"]
        manifest["layouts"] = self.layout_entries(extra_layouts)
        write_json_atomic(self.path(MANIFEST), manifest)
        return manifest

    # -- stages -------------------------------------------------------------
    def build_decode(self, key: str):
        c = self.config
        n = len(self.inputs.paths)
        kinds = tuple(s.kind for s in self.specs if s.from_pixels)
        options = DecodeOptions(c.cell_size, c.fit, c.background, c.max_pixels,
                                c.weights if set(MODEL_KINDS) & set(kinds) else "none",
                                kinds)
        work = self.path("cache/decode-work")
        with Progress(n, "decode", self.show_progress) as bar, \
                open_executor(c.n_jobs(), c.dask) as (executor, workers):
            summary = run_decode(self.inputs.paths, options, work, key, executor, workers,
                                 bar.update)
        kept = np.flatnonzero(summary.status == DONE)
        skipped = [{"source": collect.display_path(self.inputs.paths[i]),
                    "reason": summary.failures[i]} for i in sorted(summary.failures)]
        if len(kept) == 0:
            reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in skipped[:3])
            raise MosaicError(f"no usable images: all {n} inputs failed ({reasons})")
        dims = pixel_dims(kinds, c.weights)
        vector_paths = {name: self.path(f"embeddings/{name}.npy") for name in dims}
        compact(work, n, len(kept), self.path(CELLS_PACK), self.path(CELLS_INDEX),
                vector_paths, dims)
        save_npy_atomic(self.path("cache/kept.npy"), kept)
        save_npy_atomic(self.path("cache/sizes.npy"), summary.sizes[kept])
        shutil.rmtree(work, ignore_errors=True)
        outputs = [CELLS_PACK, CELLS_INDEX, "cache/kept.npy", "cache/sizes.npy",
                   *(f"embeddings/{name}.npy" for name in dims)]
        return outputs, {"skipped": skipped, "n_items": int(len(kept))}

    def build_user_vectors(self, kept: np.ndarray):
        outputs = []
        for spec in self.specs:
            if spec.from_pixels:
                continue
            vectors = read_user_vectors(spec, self.inputs.paths)[kept]
            save_npy_atomic(self.path(f"embeddings/{spec.name}.npy"), vectors)
            outputs.append(f"embeddings/{spec.name}.npy")
        return outputs, {}

    def build_layout(self):
        c = self.config
        lead = self.specs[0]
        vectors = self.vectors(lead)
        outputs = ["layout.npy"]
        if lead.kind == "xy":
            xy = reduce.scale_unit(np.asarray(vectors[:], dtype=np.float64))
        else:
            reduced = reduce.reduce_pca(vectors, c.pca, c.random_state) if c.pca else vectors
            labels = self.label_codes() if c.label_column else None
            # One neighbour search for the t-SNE affinities and the grid refinement's graph.
            shared = reduce.layout_neighbours(reduced, c.reducer, c.tsne_backend, c.perplexity,
                                              c.metric, c.random_state, c.n_jobs(),
                                              c.layout_sample, c.layout_fast)
            xy = reduce.layout_2d(reduced, c.reducer, c.tsne_backend, c.perplexity,
                                  c.n_neighbors, c.min_dist, c.metric, c.random_state, c.n_jobs(),
                                  labels=labels, sample=c.layout_sample, fast=c.layout_fast,
                                  neighbours=shared)
            if len(xy) > quality.K + 1:
                outputs += self.write_neighbours(vectors, reduced, shared)
        save_npy_atomic(self.path("layout.npy"), xy)
        return outputs, {}

    def write_neighbours(self, vectors, reduced: np.ndarray,
                         shared: reduce.Neighbours | None = None) -> list[str]:
        """What the grid stage needs from the layout vectors: the map-quality reference
        (each query item's nearest neighbours in their first 50 PCA components) and the
        grid refinement's neighbour graph (from ``shared``, the layout's own search, where
        there is one); their paths."""
        c = self.config
        features = reduced[:, :quality.FEATURE_DIMS] \
            if c.pca or reduced.shape[1] <= quality.FEATURE_DIMS \
            else reduce.reduce_pca(vectors, quality.FEATURE_DIMS, c.random_state)
        queries = quality.query_ids(len(reduced), random_state=c.random_state)
        save_npy_atomic(self.path(QUALITY_NEIGHBOURS), quality.feature_neighbours(
            np.asarray(features, dtype=np.float32), queries))
        save_npy_atomic(self.path(LAYOUT_GRAPH), reduce.neighbour_graph(
            reduced, reduce.GRAPH_K, c.metric, c.random_state, c.n_jobs(), shared))
        return [QUALITY_NEIGHBOURS, LAYOUT_GRAPH]

    def layout_method_key(self) -> list:
        """What else decides the similarity layout: the large-collection methods'
        parameters, where they run (openTSNE above ``--layout-sample`` or ``--layout-fast``
        items); nothing otherwise, so smaller layouts keep their cache keys."""
        c = self.config
        if c.reducer != "tsne" or c.tsne_backend != "opentsne":
            return []
        n_items = len(np.load(self.path("cache/kept.npy"), mmap_mode="r"))
        if c.layout_sample and n_items > c.layout_sample:
            return ["sample-place-refine", c.layout_sample, reduce.PLACE_K,
                    reduce.REFINE_EXAGGERATION_ITER, reduce.REFINE_ITER]
        if c.layout_fast and n_items > c.layout_fast:
            return ["fast-fit", c.layout_fast, reduce.FAST_TREES, reduce.FAST_ITER, "forest"]
        return []

    def layout_method(self) -> str:
        """The manifest's ``layout.method``: ``given`` (an ``xy:`` lead), the openTSNE
        large-collection method that ran (``fast-fit``, ``sample-place-refine``), or
        ``full`` (the reducer's own fit of all items)."""
        if self.specs[0].kind == "xy":
            return "given"
        key = self.layout_method_key()
        return key[0] if key else "full"

    def tags_columns(self) -> list[str]:
        """The CSV's ``tags`` columns (by name or ``--tags-column``); none without a CSV."""
        return collect.tags_columns(self.metadata, self.config.tags_columns) \
            if self.metadata else []

    @functools.cached_property
    def match(self) -> collect.Match:
        """Which CSV row belongs to each input (matched once per run)."""
        return collect.match_metadata(self.inputs, self.metadata)

    def label_codes(self) -> np.ndarray:
        """``--label-column``'s value per item as UMAP's integer codes (-1: no value)."""
        kept = np.load(self.path("cache/kept.npy"))
        column = self.config.label_column
        codes = reduce.encode_labels(collect.item_values(self.metadata, self.match,
                                                         kept.tolist(), column))
        if (codes < 0).any():
            logger.warning("--label-column %s: %d of %d items have no value (unlabelled)",
                           column, int((codes < 0).sum()), len(codes))
        return codes

    def grid_refine_key(self) -> list:
        """What else decides the similarity grid: the refinement's sweeps and weights,
        where it runs (a layout with a neighbour graph); nothing otherwise."""
        sweeps = self.grid_sweeps()
        return ["refine", sweeps, grid.CLOSE_NEIGHBOURS, grid.FAR_WEIGHT,
                grid.START_TEMPERATURE, grid.END_TEMPERATURE] if sweeps else []

    def grid_sweeps(self) -> int:
        """The refinement's sweeps at this N (0 without a neighbour graph: ``xy:``)."""
        if self.specs[0].kind == "xy":
            return 0
        if self.config.grid_sweeps is not None:
            return self.config.grid_sweeps
        return grid.default_sweeps(len(np.load(self.path("cache/kept.npy"), mmap_mode="r")))

    def build_grid(self):
        xy = np.load(self.path("layout.npy"))
        positions, (n_rows, n_cols) = grid.assign_grid(xy, self.config.grid,
                                                       self.config.random_state)
        method = grid.resolve_method(self.config.grid, len(xy))
        sweeps = self.grid_sweeps() if os.path.exists(self.path(LAYOUT_GRAPH)) else 0
        if sweeps:
            positions = grid.refine_grid(positions, n_rows, n_cols,
                                         np.load(self.path(LAYOUT_GRAPH)), sweeps,
                                         self.config.random_state)
        report = None
        if os.path.exists(self.path(QUALITY_NEIGHBOURS)):
            near = np.load(self.path(QUALITY_NEIGHBOURS))
            queries = quality.query_ids(len(xy), random_state=self.config.random_state)
            report = quality.grid_report(near, positions, queries, self.config.random_state)
        return self.write_grid("", positions, n_rows, n_cols), {
            "n_rows": n_rows, "n_cols": n_cols, "method": method, "sweeps": sweeps,
            "quality": report}

    def write_grid(self, folder: str, positions: np.ndarray, n_rows: int, n_cols: int
                   ) -> list[str]:
        """A layout's ``positions.npy`` and ``grid.i32`` under ``folder``; their paths."""
        save_npy_atomic(self.path(folder + "positions.npy"), positions)
        cells = grid.cell_ids(positions, n_rows, n_cols)
        write_bytes_atomic(self.path(folder + "grid.i32"), cells.astype("<i4").tobytes())
        return [folder + "positions.npy", folder + "grid.i32"]

    def build_arrangement(self, spec: arrange.LayoutSpec, kept: np.ndarray):
        """A ``--layout``'s positions and grid (``layouts/<slug>/``), from the CSV or file."""
        xy = np.load(self.path("layout.npy"))
        if spec.kind == "xy":
            coords = _read_layout_xy(spec, self.inputs.paths)[kept]
            positions, (n_rows, n_cols), labels = arrange.arrange_xy(
                coords, xy, self.config.random_state)
        else:
            values = arrange.layout_values(
                spec.kind, [collect.item_values(self.metadata, self.match, kept.tolist(), column)
                            for column in spec.columns])
            arrange_kind = {"date": arrange.arrange_date, "category": arrange.arrange_category,
                            "geo": arrange.arrange_geo}[spec.kind]
            positions, (n_rows, n_cols), labels = arrange_kind(values, xy)
        folder = f"layouts/{spec.slug}/"
        written = self.write_grid(folder, positions, n_rows, n_cols)
        missing = sum(label["count"] for label in labels if label["text"] in arrange.MISSING)
        if missing:
            logger.warning("--layout %s: %d of %d items have no usable value (%s)",
                           spec.name, missing, len(positions), labels[-1]["text"])
        return written, {
            "n_rows": n_rows, "n_cols": n_cols, "method": spec.kind, "labels": labels,
            "missing": missing, "positions": folder + "positions.npy",
            "grid_file": folder + "grid.i32"}

    def build_render(self, gridded: dict, folder: str = ""):
        """The pyramid and overview of one layout: the similarity map (``folder`` "") or
        ``layouts/<slug>/``'s, from the stored cells (no image is decoded again)."""
        c = self.config
        positions = np.load(self.path(gridded.get("positions", "positions.npy")))
        cells = open_cell_pack(self.directory, len(positions), c.cell_size)
        # The matrix is streamed into dzsave a row of cells at a time; no file holds it.
        with Progress(gridded["n_rows"], f"render {folder or 'map'}", self.show_progress) as bar:
            tiles, overview = render.render_grid(
                cells, positions, gridded["n_rows"], gridded["n_cols"],
                self.path(folder + "tiles"), c.background, c.tile_size, c.overlap,
                c.tile_format, c.quality, bar.update)
        cells.close()
        tiles["dzi"] = folder + tiles["dzi"]
        write_bytes_atomic(self.path(folder + "overview.jpg"), overview.jpegsave_buffer(Q=85))
        overview_info = {"path": folder + "overview.jpg", "width": overview.width,
                         "height": overview.height}
        self.path("cache/matrix.tif").unlink(missing_ok=True)  # left by a killed older version
        return [folder + "tiles/map.dzi", folder + "overview.jpg"], {
            "tiles": tiles, "overview": overview_info}

    def vectors(self, spec: EmbeddingSpec):
        """An embedding's stored vectors, read as float32 rows (``mosaic.bundle``)."""
        return open_vectors(self.directory, self.vector_entry(spec))

    @staticmethod
    def vector_entry(spec: EmbeddingSpec) -> dict:
        """How an embedding's vectors are stored: the manifest's fields for them."""
        entry = {"vectors": f"embeddings/{spec.name}.npy",
                 "dtype": np.dtype(VECTOR_DTYPES[spec.kind]).name}
        if spec.kind in VECTOR_SCALES:
            entry["scale"] = VECTOR_SCALES[spec.kind]
        return entry

    def build_annoy(self, spec: EmbeddingSpec):
        vectors = self.vectors(spec)
        target = self.path(f"embeddings/{spec.name}.ann")
        tmp = target.with_name(f".{target.name}.tmp")
        index = build_annoy(vectors, spec.metric, self.config.n_trees, self.config.random_state,
                            path=tmp)
        # one brute-force sample measures both the index and the stored lists
        truth = recall_truth(vectors, spec.metric, self.config.random_state)
        search_k, recall = choose_search_k(index, vectors, spec.metric, truth=truth)
        top = self.write_top_neighbors(spec, vectors, index, search_k, truth)
        index.unload()
        tmp.replace(target)
        return [f"embeddings/{spec.name}.ann", top["ids"], top["distances"]], {
            "embedding": {"name": spec.name, "kind": spec.kind, "dim": int(vectors.shape[1]),
                          "metric": spec.metric, **self.vector_entry(spec),
                          "index": f"embeddings/{spec.name}.ann",
                          "n_trees": self.config.n_trees, "search_k": search_k,
                          "recall_at_20": round(recall, 4), "top": top,
                          # what the server loads to embed a text (embed.clip_weights)
                          **({"weights": clip_weights(self.config.weights)}
                             if spec.kind == "clip" else {})}}

    def write_top_neighbors(self, spec: EmbeddingSpec, vectors, index, search_k: int,
                            truth) -> dict:
        """Every item's ``knn.TOP_K`` nearest, on all cores, into two ``.npy`` files
        written a block or a leaf at a time (nothing N-sized in memory) and renamed into
        place; their manifest entry. ``method``: ``exact`` for small collections, else
        ``forest`` (``index.forest_top_neighbors``, its recall measured) for euclidean
        and angular, else through ``index`` with ``search_k``. ``truth``:
        ``index.recall_truth``, what the forest's lists are measured against."""
        exact = knn.exact_is_cheap(*vectors.shape, spec.metric)
        method = "exact" if exact else "forest" if spec.metric in FOREST_METRICS else "annoy"
        top = {"k": knn.TOP_K, "exact": exact, "method": method,
               "ids": f"embeddings/{spec.name}.top-ids.npy",
               "distances": f"embeddings/{spec.name}.top-distances.npy"}
        shape = (len(vectors), knn.TOP_K)
        files = {}
        for part, dtype in (("ids", np.int32), ("distances", np.float32)):
            target = self.path(top[part])
            tmp = target.with_name(f".{target.name}.tmp")
            files[part] = (tmp, target, create_npy_rows(tmp, shape, dtype))
        if method == "forest":
            forest_top_neighbors(vectors, spec.metric, files["ids"][2], files["distances"][2],
                                 knn.TOP_K, self.config.n_jobs(), self.config.random_state)
            top["recall_at_20"] = round(lists_recall(files["ids"][2], truth), 4)
        else:
            for start, ids, distances in knn.iter_top_neighbors(
                    vectors, index, spec.metric, search_k, knn.TOP_K, self.config.n_jobs()):
                files["ids"][2].write_rows(start, ids)
                files["distances"][2].write_rows(start, distances)
        for tmp, target, rows in files.values():
            rows.flush()
            rows.close()
            tmp.replace(target)
        return top

    def build_metadata(self, kept: np.ndarray):
        c = self.config
        positions = np.load(self.path("positions.npy"))
        xy = np.load(self.path("layout.npy"))
        sizes = np.load(self.path("cache/sizes.npy"))
        kinds, match, rows = {}, None, []
        if self.metadata:
            kinds = collect.infer_column_kinds(self.metadata, c.tags_columns)
            match = self.match
            rows = self.metadata.rows

        def records():
            for item, input_index in enumerate(kept.tolist()):
                source = self.inputs.paths[input_index]
                row_index = match.row_of_input[input_index] if match else None
                values = dict(rows[row_index]) if row_index is not None else {}
                name = collect.display_path(Path(source).name)
                # Templates see the CSV's columns verbatim; filename, stem and id fill in
                # only where the CSV has no column of that name.
                fields = {"filename": name, "stem": Path(name).stem, "id": str(item), **values}
                title = collect.format_template(c.title_template, fields) or name
                yield ItemRecord(
                    id=item, source=collect.display_path(os.path.abspath(source)),
                    row=int(positions[item, 0]), col=int(positions[item, 1]),
                    x=float(xy[item, 0]), y=float(xy[item, 1]),
                    title=title, url=collect.format_template(c.url_template, fields),
                    width=int(sizes[item, 0]), height=int(sizes[item, 1]),
                    metadata=values or None)

        target = self.path("metadata.sqlite")
        tmp = target.with_name(".metadata.sqlite.tmp")
        tmp.unlink(missing_ok=True)
        write_metadata_db(tmp, records(), kinds)
        tmp.replace(target)
        kept_paths = {self.inputs.paths[i] for i in kept.tolist()}
        unmatched = {
            "images_without_row": [collect.display_path(p) for p in
                                   (match.images_without_row if match else []) if p in kept_paths],
            "rows_without_image": match.rows_without_image if match else []}
        columns = [{"name": n, "kind": k} for n, k in kinds.items()]
        return ["metadata.sqlite"], {"columns": columns, "unmatched": unmatched,
                                     "metadata_rows": len(rows)}

    def build_hotspots(self, stored: dict):
        setting = self.config.clusters
        if setting == "off":
            return [], {"hotspots": []}
        xy = np.load(self.path("layout.npy"))
        positions = np.load(self.path("positions.npy"))
        labels = clusters_mod.find_clusters(xy, None if setting == "auto" else int(setting),
                                            self.config.random_state)
        facets = [col["name"] for col in stored["columns"] if col["kind"] == "facet"]
        categories = None
        if facets:
            import sqlite3

            conn = sqlite3.connect(self.path("metadata.sqlite"))
            column = sql_names(stored["columns"])[facets[0]]
            categories = [v for (v,) in conn.execute(f"SELECT {column} FROM metadata ORDER BY id")]
            conn.close()
        return [], {"hotspots": clusters_mod.describe_hotspots(labels, xy, positions, categories)}

    def build_regions(self, stored: dict, kept: np.ndarray):
        """The labelled regions (``regions.py``): ``regions.npy``, ``regions.order.i32``
        and ``regions.json``; none with ``--region-size 0``."""
        size = self.config.region_size
        if not size:
            return [], {"regions": None}
        xy = np.load(self.path("layout.npy"))
        positions = np.load(self.path("positions.npy"))
        ids, parents, spans = regions.build_hierarchy(xy, size,
                                                      random_state=self.config.random_state)
        kinds = {col["name"]: col["kind"] for col in stored["columns"]}
        values = {name: collect.item_values(self.metadata, self.match, kept.tolist(), name)
                  for name, kind in kinds.items() if kind in regions.LABEL_KINDS} \
            if self.metadata else {}
        terms, vocabulary = regions.item_terms(values, kinds)
        labels = regions.label_regions(ids, spans, terms, vocabulary)
        described = regions.describe_regions(ids, parents, spans, xy, positions, labels)
        save_npy_atomic(self.path("regions.npy"), ids)
        write_bytes_atomic(self.path("regions.order.i32"),
                           regions.region_order(ids).astype("<i4").tobytes())
        write_json_atomic(self.path("regions.json"), {"levels": int(ids.shape[1]),
                                                      "regions": described})
        entry = {"path": "regions.json", "ids": "regions.npy", "order": "regions.order.i32",
                 "method": "kmeans-layout", "region_size": size,
                 "top": regions.TOP_REGIONS, "branching": regions.BRANCHING,
                 "levels": regions.level_counts(spans, ids.shape[1]),
                 "labelled": sum(label is not None for label, _ in labels),
                 "terms_from": [name for name in values if kinds[name] in regions.LABEL_KINDS]}
        return ["regions.npy", "regions.order.i32", "regions.json"], {"regions": entry}

    def build_duplicates(self, indexes: list[dict], kept: np.ndarray):
        """The groups of exact and near duplicates (``mosaic.duplicates``, at its default
        threshold) in ``duplicates.json``; none with ``--no-duplicates`` or without a
        ``pixels`` embedding, whose distances and neighbour lists the search uses."""
        c = self.config
        entry = next((record["embedding"] for record in indexes
                      if record["embedding"]["name"] == duplicates.EMBEDDING
                      and record["embedding"].get("top")), None)
        if not c.duplicates or entry is None:
            return [], {"duplicates": None}
        n_items = len(kept)
        # The bundle as the search reads it, from the manifest fields it needs, before
        # the manifest is written.
        partial = Bundle.from_manifest({
            "id": c.collection_id(), "counts": {"items": n_items},
            "files": {"metadata": "metadata.sqlite"}, "cells": cells_record(thumbnail.DECODER),
            "grid": grid_entry(0, 0, c.cell_size, c.fit, c.grid), "embeddings": [entry]},
            self.directory)
        group, ids = duplicates.find_duplicates(partial, n_jobs=c.n_jobs())
        sizes = np.load(self.path("cache/sizes.npy"))[ids].astype(np.int64)
        largest = duplicates.largest_members(
            group, ids, sizes[:, 0] * sizes[:, 1],
            duplicates.file_sizes(self.inputs.paths[i] for i in kept[ids].tolist()))
        document = duplicates.groups_document(group, ids, largest, duplicates.MAX_DIFFERENCE)
        write_bytes_atomic(self.path(duplicates.STORED), duplicates.document_bytes(document))
        return [duplicates.STORED], {"duplicates": {
            "path": duplicates.STORED, "embedding": duplicates.EMBEDDING,
            "threshold": duplicates.MAX_DIFFERENCE, "groups": len(document["groups"]),
            "items": int(len(ids))}}

    # -- manifest -----------------------------------------------------------
    def layout_entries(self, extra) -> list[dict]:
        """The manifest's ``layouts``: similarity first (its grid, files and tiles are the
        manifest's top-level ones), then each ``--layout`` under ``layouts/<slug>/``."""
        entries = [similarity_layout_entry()]
        for spec, placed, rendered in extra:
            column = None if spec.kind == "xy" else \
                spec.columns[0] if len(spec.columns) == 1 else list(spec.columns)
            entries.append(layout_record(
                spec.name, spec.kind, spec.slug, n_rows=placed["n_rows"],
                n_cols=placed["n_cols"], method=placed["method"],
                positions=placed["positions"], grid_file=placed["grid_file"],
                tiles=rendered["tiles"], overview=rendered["overview"],
                labels=placed["labels"], missing=placed["missing"], column=column,
                source=spec.path if spec.kind == "xy" else None))
        return entries

    def manifest(self, decoded, layout, gridded, tiles, indexes, stored, hotspots) -> dict:
        c = self.config
        n_items = decoded["n_items"]
        unmatched = stored["unmatched"]
        parameters = asdict(c)
        return {
            "schema_version": SCHEMA_VERSION,
            "program": "mosaic",
            "program_version": __version__,
            "id": c.collection_id(),
            "title": c.title or c.collection_id(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "parameters": parameters,
            "counts": {"inputs": len(self.inputs.paths) + len(self.fetch_skipped),
                       "items": n_items,
                       "skipped": len(decoded["skipped"]) + len(self.fetch_skipped),
                       "ignored_files": len(self.inputs.ignored),
                       "metadata_rows": stored["metadata_rows"],
                       "images_without_row": len(unmatched["images_without_row"]),
                       "rows_without_image": len(unmatched["rows_without_image"])},
            "grid": grid_entry(gridded["n_rows"], gridded["n_cols"], c.cell_size, c.fit,
                               gridded["method"], sweeps=gridded.get("sweeps", 0),
                               quality=gridded.get("quality")),
            "tiles": tiles["tiles"],
            "overview": tiles["overview"],
            "files": {"metadata": "metadata.sqlite", "positions": "positions.npy",
                      "layout": "layout.npy", "grid": "grid.i32"},
            "cells": cells_record(thumbnail.DECODER),
            "embeddings": [record["embedding"] for record in indexes],
            "layout": {"embedding": self.specs[0].name, "pca": c.pca, "reducer": c.reducer,
                       "backend": c.tsne_backend if c.reducer == "tsne" else "umap",
                       "method": self.layout_method(),
                       "sample": c.layout_sample if self.layout_method() == "sample-place-refine"
                       else None,
                       "random_state": c.random_state, "label_column": c.label_column},
            "display": {"title": c.title_template, "url": c.url_template},
            "columns": stored["columns"],
            "facets": [col["name"] for col in stored["columns"]
                       if col["kind"] in ("facet", "tags")],
            "hotspots": hotspots["hotspots"],
            "skipped": self.fetch_skipped + decoded["skipped"],
            "ignored_files": [collect.display_path(p) for p in self.inputs.ignored],
            "unmatched": unmatched,
            "timings": self.timings,
        }


def _file_signature(path: str | None) -> list | None:
    """(size, mtime_ns) of a file, or the error for one that cannot be stat'ed."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
        return [stat.st_size, stat.st_mtime_ns]
    except OSError as error:
        return [type(error).__name__]
