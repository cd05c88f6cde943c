"""Small generated image collections for the tests: three colour clusters and a CSV.

A plain module (not conftest.py) so tests import it by a name no other folder shares.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyvips

from mosaic.cli.main import main

# Three well-separated colour families; each cluster's images vary in shade and texture.
CLUSTER_COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]
CATEGORIES = ["red", "green", "blue"]
CLUSTER_PLACES = [(48.0, 2.0), (-33.0, 151.0), (40.0, -74.0)]  # (lat, lng): Paris, Sydney, NYC


def write_image(path: Path, array: np.ndarray, **save_options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pyvips.Image.new_from_array(np.ascontiguousarray(array), interpretation="srgb")
    image.write_to_file(str(path), **save_options)
    return path


def cluster_image(cluster: int, index: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """An RGB uint8 (h, w, 3) image in the colour family of ``cluster``."""
    rng = np.random.default_rng(cluster * 1000 + index)
    base = np.array(CLUSTER_COLOURS[cluster], dtype=np.float64)
    shade = base * rng.uniform(0.8, 1.0)
    noise = rng.normal(0, 12, size=(*size, 3))
    return np.clip(shade + noise, 0, 255).astype(np.uint8)


def _place(cluster: int, index: int) -> dict[str, str]:
    """A position per image near its cluster's city (index 7 has none)."""
    if index == 7:
        return {"lat": "", "lng": ""}
    lat, lng = CLUSTER_PLACES[cluster]
    return {"lat": f"{lat + index * 0.1:.2f}", "lng": f"{lng + index * 0.2:.2f}"}


def make_collection(folder: Path, per_cluster: int = 12, with_csv: bool = True) -> Path | None:
    """Write ``3 * per_cluster`` PNG/JPEG images (two subfolders) and a metadata CSV."""
    rows = []
    for cluster in range(len(CLUSTER_COLOURS)):
        for index in range(per_cluster):
            sub = "a" if index % 2 == 0 else "b"
            suffix = ".png" if index % 3 else ".jpg"
            name = f"{CATEGORIES[cluster]}_{index:03d}{suffix}"
            write_image(folder / sub / name, cluster_image(cluster, index))
            rows.append({"filename": f"{sub}/{name}", "name": f"{CATEGORIES[cluster]} {index}",
                         "category": CATEGORIES[cluster], "year": str(1990 + index),
                         "notes": f"sample number {index} of {CATEGORIES[cluster]}",
                         **_place(cluster, index)})
    if not with_csv:
        return None
    csv_path = folder.parent / f"{folder.name}.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def build_bundle(images: Path, out: Path, cid: str, *extra: str, metadata: Path | None = None,
                 ) -> int:
    args = ["-q", "pipeline", "--images", str(images), "--out", str(out), "--id", cid,
            "--jobs", "2", "--cell-size", "32", "--tile-size", "64"]
    if metadata:
        args += ["--metadata", str(metadata), "--title", "{name} ({year})"]
    return main([*args, *extra])
