"""Labelled regions (issue 19) on labelled collections: how pure the regions are, and
how often their label names the majority value.

For each collection the bench runs ``python run.py pipeline`` (default flags: regions of
about 50 items, 12 at the top) with its CSV, then, level by level:

- ``purity``: the share of items whose ``--truth`` value is their region's majority;
- ``named``: the share of regions whose label is that majority value (the label's own
  column may be another, e.g. ``parity``; then it does not count as named);
- ``labelled``: the share of regions that have a label at all;
- ``label_is_majority``: of the labelled regions, the share whose label is the majority
  value of its own column among the region's items (a facet), or is carried by more
  than half of them (a word or tag);
- the same purity for a seeded random permutation of the truth over the items (the
  negative control: what regions of those sizes get by chance), and how many regions
  the labeller labels when the CSV's values are so shuffled (``control_labelled``).

``--scale N`` times the stage's functions on N synthetic items (20 blobs, one facet).

    python bench/regions_bench.py --digits --work /tmp/regions
    python bench/real_collections.py --vendor google --to /work/bench-data/real
    E=/work/bench-data/real/emoji-google
    python bench/regions_bench.py --work /tmp/regions --scale 100000 \\
        --collection $E/images,$E/labels.csv,category
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mosaic.pipeline import regions  # noqa: E402


def build(images: Path, metadata: Path, out: Path, cid: str) -> Path:
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run.py"), "-q", "pipeline", "--images",
                    str(images), "--metadata", str(metadata), "--out", str(out), "--id", cid],
                   check=True)
    print(f"{cid}: pipeline {time.perf_counter() - started:.0f} s", flush=True)
    return out / cid


def columns(bundle: Path) -> dict[str, list]:
    """The export's rows as columns (``meta.<name>`` for the CSV's), by item id."""
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "export", "--out",
                           str(bundle.parent), "--id", bundle.name, "-o", "-"],
                          check=True, capture_output=True, text=True)
    rows = list(csv.DictReader(done.stdout.splitlines()))
    return {name: [row[name] for row in rows] for name in rows[0]}


def score(bundle: Path, truth_column: str, seed: int = 0) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["regions"]
    ids = np.load(bundle / entry["ids"])
    described = json.loads((bundle / entry["path"]).read_text())["regions"]
    table = columns(bundle)
    truth = table[f"meta.{truth_column}"]
    shuffled = list(np.random.default_rng(seed).permutation(np.array(truth, dtype=object)))
    # the labeller on the same regions with every CSV column shuffled the same way
    kinds = {c["name"]: c["kind"] for c in manifest["columns"]}
    order = np.random.default_rng(seed).permutation(len(truth))
    values = {name: [table[f"meta.{name}"][i] for i in order] for name in kinds
              if kinds[name] in regions.LABEL_KINDS}
    spans = np.array([r["levels"] for r in described])
    terms, vocabulary = regions.item_terms(values, kinds)
    control = regions.label_regions(ids, spans, terms, vocabulary)
    levels = []
    for level in range(ids.shape[1]):
        shown = [r for r in described if r["levels"][0] <= level + 1 <= r["levels"][1]]
        named = labelled = is_majority = 0
        for region in shown:
            members = np.flatnonzero(ids[:, level] == region["id"])
            majority = regions.majority([truth[i] for i in members])
            labelled += region["label"] is not None
            if region["label"] is not None:
                column = region["terms"][0]["column"]
                own = table[f"meta.{column}"]
                is_majority += region["label"] == regions.majority([own[i] for i in members]) \
                    if kinds[column] == "facet" else region["terms"][0]["share"] > 0.5
            named += region["label"] is not None and region["label"] == majority \
                and region["terms"][0]["column"] == truth_column
        levels.append({
            "level": level + 1, "regions": len(shown),
            "mean_size": round(len(truth) / len(shown), 1),
            "purity": round(regions.purity(ids[:, level], truth), 3),
            "control_purity": round(regions.purity(ids[:, level], shuffled), 3),
            "labelled": round(labelled / len(shown), 3), "named": round(named / len(shown), 3),
            "label_is_majority": round(is_majority / max(1, labelled), 3),
            "control_labelled": round(sum(control[r["id"]][0] is not None for r in shown)
                                      / len(shown), 3)})
    top = [r for r in described if r["level"] == 1]
    return {"items": len(truth), "truth": truth_column, "levels": levels,
            "top_labels": [(r["label"], r["terms"][0]["column"] if r["terms"] else None,
                            r["size"]) for r in top],
            "stage_seconds": manifest["timings"].get("regions")}


def digits(work: Path) -> tuple[Path, Path]:
    from mosaic.cli.demo import write_digits

    return write_digits(work / "data")


def scale(n_items: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 2)) * 5
    blob = rng.integers(0, 20, n_items)
    xy = (centres[blob] + rng.normal(size=(n_items, 2))).astype(np.float32)
    positions = np.stack([np.arange(n_items) // 1000, np.arange(n_items) % 1000], 1)
    times = {}
    started = time.perf_counter()
    ids, parents, spans = regions.build_hierarchy(xy)
    times["hierarchy"] = time.perf_counter() - started
    started = time.perf_counter()
    terms, vocabulary = regions.item_terms({"blob": [str(b) for b in blob]}, {"blob": "facet"})
    labels = regions.label_regions(ids, spans, terms, vocabulary)
    times["labels"] = time.perf_counter() - started
    started = time.perf_counter()
    regions.describe_regions(ids, parents, spans, xy, positions, labels)
    regions.region_order(ids)
    times["describe"] = time.perf_counter() - started
    return {"items": n_items, "levels": regions.level_counts(spans, ids.shape[1]),
            "seconds": {k: round(v, 2) for k, v in times.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--digits", action="store_true",
                        help="scikit-learn's digits (the demo), truth: label")
    parser.add_argument("--collection", action="append", default=[],
                        metavar="IMAGES,CSV,TRUTH", help="another labelled collection")
    parser.add_argument("--scale", type=int, help="time the stage on N synthetic items")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.digits:
        images, metadata = digits(args.work)
        results["digits"] = score(build(images, metadata, args.work / "out", "digits"),
                                  "label")
    for spec in args.collection:
        images, metadata, truth = spec.split(",")
        cid = Path(images).parent.name or "collection"
        results[f"{cid}:{truth}"] = score(build(Path(images), Path(metadata),
                                                args.work / "out", cid), truth)
    if args.scale:
        results["scale"] = scale(args.scale)
    print(json.dumps(results, indent=1))
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
