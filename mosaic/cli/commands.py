"""The CLI commands that read a bundle or build the demo: export, info, demo."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from mosaic.bundle import Bundle, bundle_dir, region_text
from mosaic.errors import UsageError
from mosaic.pipeline.orchestrator import PipelineConfig, run_pipeline
from mosaic.store import EXPORT_FIELDS, export_header, iter_export_rows, read_columns


def print_summary(manifest: dict, directory: Path, cached: list[str]) -> None:
    """What a pipeline run made of ``directory``, from the ``manifest`` it wrote."""
    bundle = Bundle.from_manifest(manifest, directory)
    counts, grid, stored = bundle.counts.entry, bundle.grid, bundle.manifest
    print(f"Built {directory}: {counts['items']} items from {counts['inputs']} inputs, "
          f"{counts['skipped']} skipped, grid {grid.n_rows} x {grid.n_cols} "
          f"at {grid.cell_size} px")
    if stored["grid"].get("quality"):
        score = stored["grid"]["quality"]
        print(f"  map quality: grid P@10 {score['grid_p10']:.3f} (a random grid: "
              f"{score['random_p10']:.3f}; docs/bundle.md)")
    for entry in stored["skipped"][:10]:
        print(f"  skipped {entry['source']}: {entry['reason']}")
    if counts["skipped"] > 10:
        print(f"  ... and {counts['skipped'] - 10} more (see manifest.json 'skipped')")
    if counts["metadata_rows"]:
        print(f"  metadata: {counts['images_without_row']} images without a row, "
              f"{counts['rows_without_image']} rows without an image (manifest 'unmatched')")
    if counts.get("ignored_files"):
        print(f"  ignored {counts['ignored_files']} non-image files (manifest 'ignored_files')")
    found = bundle.duplicates
    if found:
        print(f"  duplicates: {found.groups} groups of {found.items} items "
              f"(python run.py duplicates --id {bundle.id} lists them)")
    timings = ", ".join(f"{name} {seconds:.1f}s{' (cached)' if name in cached else ''}"
                        for name, seconds in stored["timings"].items())
    print(f"  timings: {timings}")
    print(f"  serve it: python run.py serve --out {directory.parent}")


def export(args: argparse.Namespace) -> int:
    """One row per item, streamed: CSV (the user's columns as ``meta.<name>``) or JSON
    (the user's columns nested under ``"metadata"``); ``-o -`` or no ``-o`` is stdout.
    ``row``/``col`` are those of ``--layout`` (default: similarity). ``region_1``,
    ``region_2``... (after the item's fields) name its labelled region at each level."""
    bundle = Bundle.open(bundle_dir(args.out, args.id))
    layout = bundle.layout(getattr(args, "layout", None))
    # Other layouts' cells are not in metadata.sqlite: read from their positions.npy.
    positions = None if layout.kind == "similarity" else \
        bundle.read_layout_positions(layout, mmap=True)
    at_row, at_col = EXPORT_FIELDS.index("row"), EXPORT_FIELDS.index("col")
    to_stdout = args.output in (None, "-")
    if not to_stdout and not Path(args.output).parent.is_dir():
        raise UsageError(f"-o/--output folder {Path(args.output).parent} does not exist")
    regions = bundle.read_regions()
    level_names = [f"region_{level + 1}" for level in range(regions[1].shape[1])] \
        if regions else []
    conn = bundle.connect()
    handle = sys.stdout if to_stdout else open(args.output, "w", newline="", encoding="utf-8")
    try:
        columns = read_columns(conn)
        rows = iter_export_rows(conn, columns)
        if positions is not None:
            rows = ((_with_cell(fields, positions, at_row, at_col), values)
                    for fields, values in iter_export_rows(conn, columns))
        if args.format == "json":
            handle.write("[")
            for count, (fields, values) in enumerate(rows):
                item = dict(zip(EXPORT_FIELDS, fields))
                item.update(zip(level_names, _region_texts(regions, fields[0])))
                item["metadata"] = {c["name"]: v for c, v in zip(columns, values)}
                handle.write(("," if count else "") + "\n" + json.dumps(item, ensure_ascii=False))
            handle.write("\n]\n")
        else:
            writer = csv.writer(handle)
            header = export_header(columns)
            writer.writerow([*header[:len(EXPORT_FIELDS)], *level_names,
                             *header[len(EXPORT_FIELDS):]])
            for fields, values in rows:
                writer.writerow([*fields, *_region_texts(regions, fields[0]), *values])
    finally:
        conn.close()
        if not to_stdout:
            handle.close()
    return 0


def _region_texts(regions, item: int) -> list[str]:
    """An item's region at each level as ``region_text`` names it; none without regions."""
    if regions is None:
        return []
    described, ids = regions
    return [region_text(described[region]) for region in ids[item].tolist()]


def _with_cell(fields: tuple, positions, at_row: int, at_col: int) -> tuple:
    """An export row's item fields with ``row``/``col`` from ``positions`` (by its id)."""
    fields = list(fields)
    row, col = positions[fields[0]]
    fields[at_row], fields[at_col] = int(row), int(col)
    return tuple(fields)


def info(args: argparse.Namespace) -> int:
    directory = bundle_dir(args.out, args.id)
    bundle = Bundle.open(directory)
    counts, grid, tiles, stored = bundle.counts, bundle.grid, bundle.tiles, bundle.manifest
    print(f"{bundle.title} ({bundle.id}), {directory}")
    print(f"  built {stored['created']} by mosaic {stored['program_version']}, "
          f"schema {bundle.schema_version}")
    print(f"  items {counts.items} of {counts.inputs} inputs, skipped {counts.skipped}")
    if counts.added:
        print(f"  added {counts.added} of them later (run.py add)")
    if counts.removed:
        print(f"  removed {counts.removed} of them (run.py remove), {counts.left} left")
    if bundle.generation > 1:
        print(f"  generation {bundle.generation} (changed in place since the pipeline)")
    print(f"  grid {grid.n_rows} rows x {grid.n_cols} cols, cell {grid.cell_size} px "
          f"({grid.method})")
    for layout in bundle.layouts[1:]:
        print(f"  layout {layout.name}: {layout.grid.n_rows} rows x {layout.grid.n_cols} cols, "
              f"{len(layout.labels)} blocks, {layout.missing} items without a value")
    print(f"  tiles {tiles.width} x {tiles.height} px, {tiles.levels} levels, "
          f"{tiles.tile_size} px {tiles.format}")
    for embedding in bundle.embeddings:
        print(f"  embedding {embedding.name}: {embedding.dim}-d {embedding.metric}, "
              f"search_k {embedding.search_k} "
              f"(recall@20 {embedding.entry['recall_at_20']})")
    for column in bundle.columns:
        print(f"  column {column['name']}: {column['kind']}")
    print(f"  hotspots {len(bundle.hotspots)}")
    regions = bundle.regions
    if regions:
        print(f"  regions {' / '.join(map(str, regions.levels))} at levels "
              f"1-{len(regions.levels)} (about {regions.region_size} items at the "
              f"finest), {regions.labelled} labelled"
              + (f" from {', '.join(regions.terms_from)}" if regions.terms_from else
                 " (no metadata: no labels)"))
    print(f"  duplicates {_duplicates_line(bundle)}")
    return 0


def _duplicates_line(bundle: Bundle) -> str:
    """What ``info`` says of the stored duplicate groups (without removed items)."""
    from mosaic.duplicates import read_stored

    entry = bundle.duplicates
    if entry is None:
        pixels = any(e.name == "pixels" and e.top for e in bundle.embeddings)
        why = ("a bundle made before them" if "duplicates" not in bundle.manifest
               else "pipeline --no-duplicates" if pixels else "no pixels embedding")
        return f"not stored ({why})" + ("; python run.py duplicates finds them" if pixels
                                        else "")
    groups = read_stored(bundle)["groups"]
    counts = bundle.counts
    changes = [f"less the {counts.removed} removed" if counts.removed else "",
               f"not looking at the {counts.added} added" if counts.added else ""]
    since = "" if bundle.generation == 1 else \
        (f", as the pipeline found them, {' and '.join(c for c in changes if c)} since: "
         f"python run.py duplicates searches the bundle as it is now")
    return (f"{len(groups)} groups of {sum(len(g['ids']) for g in groups)} items "
            f"(threshold {entry.threshold:g}{since})")


def demo(args: argparse.Namespace, quiet: bool) -> int:
    from mosaic.cli.demo import write_digits

    images, metadata = write_digits(Path(args.data))
    config = PipelineConfig(images=str(images), metadata=str(metadata), out=args.out,
                            id="digits", title="Handwritten digits (scikit-learn)",
                            title_template="Digit {label} (#{index})",
                            layouts=["category:label"])
    result = run_pipeline(config, show_progress=not quiet)
    if not quiet:
        print_summary(result.manifest, result.directory, result.cached_stages)
    return 0
