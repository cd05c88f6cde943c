"""The demo collection: scikit-learn's 1,797 handwritten digits written out as PNGs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyvips

DIGIT_SIZE = 64
INK_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
               (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


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
            if not path.exists():
                _digit_image(pixels, INK_COLOURS[label]).write_to_file(str(path))
            ink = float(pixels.sum() / 16.0)
            writer.writerow([name, int(label), "even" if label % 2 == 0 else "odd",
                             f"{ink:.2f}", index])
    return images_dir, metadata


def _digit_image(pixels: np.ndarray, colour: tuple[int, int, int]) -> pyvips.Image:
    """8x8 intensities (0..16) -> a smooth 64 px image, coloured ink on white."""
    ink = (pixels / 16.0)[:, :, None]
    rgb = 255 * (1 - ink) + np.array(colour)[None, None, :] * ink
    image = pyvips.Image.new_from_array(rgb.astype(np.uint8), interpretation="srgb")
    return image.resize(DIGIT_SIZE / 8, kernel="linear")
