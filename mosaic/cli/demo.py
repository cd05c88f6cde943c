"""The demo collection: scikit-learn's 1,797 handwritten digits written out as PNGs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyvips

DIGIT_SIZE = 64
# One plain ink for every digit: the images carry no hint of their label, so what
# groups them on the map is their shape alone (the label is metadata only).
INK = (20, 20, 20)


def write_digits(folder: Path) -> tuple[Path, Path]:
    """Write each digit as a 64 px PNG plus metadata.csv; returns (image folder, csv)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images_dir = folder / "digits"
    images_dir.mkdir(parents=True, exist_ok=True)
    metadata = folder / "digits.csv"
    with open(metadata, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label", "parity", "ink", "index"])
        for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
            name = f"digit_{index:04d}.png"
            path = images_dir / name
            data = _digit_image(pixels, INK).write_to_buffer(".png")
            # Rewritten only when different, so a re-run keeps its cache (and an old
            # demo folder from another version is brought up to date).
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)
            ink = float(pixels.sum() / 16.0)
            writer.writerow([name, int(label), "even" if label % 2 == 0 else "odd",
                             f"{ink:.2f}", index])
    return images_dir, metadata


def _digit_image(pixels: np.ndarray, colour: tuple[int, int, int]) -> pyvips.Image:
    """8x8 intensities (0..16) -> a smooth 64 px image, dark ink on white."""
    ink = (pixels / 16.0)[:, :, None]
    rgb = 255 * (1 - ink) + np.array(colour)[None, None, :] * ink
    image = pyvips.Image.new_from_array(rgb.astype(np.uint8), interpretation="srgb")
    return image.resize(DIGIT_SIZE / 8, kernel="linear")
