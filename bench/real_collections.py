"""Labelled collections of real pictures, for measuring map quality.

Each is one artist's complete set of emoji as 64-px PNGs, from the npm
registry (``emoji-datasource-<vendor>``, pinned), labelled with the Unicode
emoji category (10) and subcategory (~100): drawings made by people, not
generated shapes, with a known structure. The three vendors are three
different collections of the same concepts drawn by different hands:

    python bench/real_collections.py --vendor google --to /work/bench-data/real

writes ``<to>/emoji-<vendor>/images/*.png`` and ``<to>/emoji-<vendor>/labels.csv``
(filename, name, category, subcategory), installing the package with npm
into ``<to>/npm`` when it is not there yet. (The ``apple`` set is left out of
our measurements on purpose: a reviewer holds it out.)
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
from pathlib import Path

VERSION = "16.0.0"
VENDORS = ("google", "twitter", "facebook")


def prepare(vendor: str, to: Path) -> Path:
    """The collection's folder (images/ and labels.csv), made once."""
    folder = to / f"emoji-{vendor}"
    labels = folder / "labels.csv"
    if labels.exists():
        return folder
    package = to / "npm" / "node_modules" / f"emoji-datasource-{vendor}"
    if not package.exists():
        (to / "npm").mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-save", "--no-audit", "--no-fund",
                        f"emoji-datasource-{vendor}@{VERSION}"], cwd=to / "npm", check=True)
    source = package / "img" / vendor / "64"
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for entry in json.loads((package / "emoji.json").read_text()):
        variants = [entry, *entry.get("skin_variations", {}).values()]
        for variant in variants:
            if not variant.get(f"has_img_{vendor}") or not (source / variant["image"]).exists():
                continue
            shutil.copyfile(source / variant["image"], images / variant["image"])
            rows.append({"filename": variant["image"], "name": entry["name"],
                         "category": entry["category"], "subcategory": entry["subcategory"]})
    with open(labels.with_suffix(".tmp"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda row: row["filename"]))
    labels.with_suffix(".tmp").rename(labels)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vendor", choices=VENDORS, action="append")
    parser.add_argument("--to", type=Path, required=True)
    args = parser.parse_args()
    for vendor in args.vendor or VENDORS:
        folder = prepare(vendor, args.to)
        print(folder, sum(1 for _ in (folder / "images").iterdir()), "images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
