"""The small collection behind the server tests (see server_fixtures.py).

The collection: 60 images in 3 colour clusters (red, green, blue) and a CSV
with a text column (``name``, the display title), two facets (``category``,
``parity``), a year (``year``, one row blank), a number (``weight``) and free
text (``notes``). Row ``XSS_INDEX`` carries script payloads, which must come back
as plain data.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyvips

COLOURS = {"red": (215, 45, 40), "green": (45, 190, 70), "blue": (40, 60, 215)}
PER_CLUSTER = 20
XSS_NAME = "<script>alert(1)</script>"
XSS_NOTES = '<img src=x onerror="alert(2)"> & "quotes"'
XSS_INDEX = 7  # red #7
BLANK_YEAR_INDEX = 3  # green #3 has no year


def collection_rows() -> list[dict[str, str]]:
    """The CSV rows, in file-name order (= item id order)."""
    rows = []
    for c, category in enumerate(COLOURS):
        for index in range(PER_CLUSTER):
            rows.append({
                "filename": f"{category}_{index:02d}.png",
                "name": f"{category} tile {index}",
                "category": category,
                "year": str(1950 + 3 * index + c),
                "weight": f"{0.5 + 0.25 * index:.2f}",
                "parity": "even" if index % 2 == 0 else "odd",
                "notes": f"sample {index} of {category}",
            })
    rows.sort(key=lambda row: row["filename"])
    xss = next(r for r in rows if r["filename"] == f"red_{XSS_INDEX:02d}.png")
    xss.update(name=XSS_NAME, notes=XSS_NOTES)
    blank = next(r for r in rows if r["filename"] == f"green_{BLANK_YEAR_INDEX:02d}.png")
    blank["year"] = ""
    return rows


def write_collection(folder: Path) -> Path:
    """Write the PNGs into ``folder`` and return the metadata CSV's path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = collection_rows()
    for row in rows:
        category, index = row["filename"][:-4].split("_")
        rng = np.random.default_rng(list(COLOURS).index(category) * 100 + int(index))
        base = np.array(COLOURS[category], dtype=np.float64) * rng.uniform(0.75, 1.0)
        pixels = np.clip(base + rng.normal(0, 14, size=(40, 52, 3)), 0, 255).astype(np.uint8)
        image = pyvips.Image.new_from_array(pixels, interpretation="srgb")
        image.pngsave(str(folder / row["filename"]))
    csv_path = folder.parent / "metadata.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path
