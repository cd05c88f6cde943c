"""How to store the bundle's cells: bytes, encode/decode time and PSNR per 128 px cell.

Cells are made the way the pipeline makes them (``thumbnail.square_array``,
letterboxed on white) from two kinds of source: generated photo-like images
(gradients, blobs and lines, sensor-like noise, some with smooth skies and
sharp edges) and the 1,797 scikit-learn digits (8 x 8, scaled up). Every
codec is run on the same cells, one cell at a time, with pyvips (one libvips
thread, as the decode stage runs it); the JPEG decode is also timed with PIL.

    python bench/cell_codec_bench.py --n 400 --cell-size 128
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import pyvips
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mosaic.pipeline.thumbnail import square_array  # noqa: E402

CODECS = {
    "jpeg q85": lambda im: im.jpegsave_buffer(Q=85, strip=True),
    "jpeg q90": lambda im: im.jpegsave_buffer(Q=90, strip=True),
    "jpeg q95": lambda im: im.jpegsave_buffer(Q=95, strip=True),
    "webp q85": lambda im: im.webpsave_buffer(Q=85, strip=True),
    "webp q90": lambda im: im.webpsave_buffer(Q=90, strip=True),
    "webp lossless": lambda im: im.webpsave_buffer(lossless=True, strip=True),
    "png": lambda im: im.pngsave_buffer(compression=6, strip=True),
}


def photo_like(rng: np.random.Generator) -> np.ndarray:
    """A (h, w, 3) uint8 image: a gradient sky, a few soft blobs and hard shapes, noise."""
    h, w = int(rng.integers(100, 600)), int(rng.integers(100, 600))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = top + (bottom - top) * (y / h)[..., None]
    for _ in range(int(rng.integers(2, 7))):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, max(h, w) / 2)
        colour = rng.uniform(0, 255, 3)
        weight = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None]
        if rng.random() < 0.5:  # a hard-edged disc instead of a soft blob
            weight = (weight > 0.5).astype(np.float32)
        image = image * (1 - weight) + colour * weight
    for _ in range(int(rng.integers(0, 5))):  # thin lines: branches, wires, text strokes
        row = int(rng.integers(0, h))
        image[row:row + int(rng.integers(1, 4))] = rng.uniform(0, 255, 3)
    image += rng.normal(0, rng.uniform(2, 20), size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def digit_cells(n: int, cell: int) -> list[np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits().images[:n]
    out = []
    for digit in digits:
        grey = (255 - digit * 255 / 16).astype(np.uint8)
        big = np.repeat(np.repeat(grey, 8, axis=0), 8, axis=1)
        out.append(square_array(np.stack([big] * 3, axis=-1), cell, "fit", (255, 255, 255)))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def measure(cells: list[np.ndarray]) -> list[dict]:
    rows = []
    for name, encode in CODECS.items():
        images = [pyvips.Image.new_from_array(c, interpretation="srgb") for c in cells]
        started = time.perf_counter()
        encoded = [encode(im) for im in images]
        encode_ms = (time.perf_counter() - started) * 1000 / len(cells)
        started = time.perf_counter()
        decoded = [pyvips.Image.new_from_buffer(b, "").numpy() for b in encoded]
        decode_ms = (time.perf_counter() - started) * 1000 / len(cells)
        row = {"codec": name, "bytes": np.mean([len(b) for b in encoded]),
               "encode_ms": encode_ms, "decode_ms": decode_ms,
               "psnr": np.mean([min(psnr(a, b), 99.0) for a, b in zip(cells, decoded)]),
               "psnr_min": min(min(psnr(a, b), 99.0) for a, b in zip(cells, decoded))}
        if name.startswith("jpeg"):
            started = time.perf_counter()
            for b in encoded:
                np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
            row["pil_decode_ms"] = (time.perf_counter() - started) * 1000 / len(cells)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="cells of each kind")
    parser.add_argument("--cell-size", type=int, default=128)
    args = parser.parse_args()
    pyvips.concurrency_set(1)
    pyvips.cache_set_max(0)
    rng = np.random.default_rng(0)
    sets = {
        "photo-like": [square_array(photo_like(rng), args.cell_size, "fit", (255, 255, 255))
                       for _ in range(args.n)],
        "digits": digit_cells(args.n, args.cell_size),
    }
    raw = args.cell_size * args.cell_size * 3
    print(f"{args.n} cells of each kind, {args.cell_size} px (raw: {raw:,} bytes per cell)\n")
    print("| cells | codec | bytes/cell | of raw | encode ms | decode ms (vips / PIL) "
          "| PSNR dB mean (min) |")
    print("|---|---|---|---|---|---|---|")
    for label, cells in sets.items():
        for row in measure(cells):
            pil = f" / {row['pil_decode_ms']:.2f}" if "pil_decode_ms" in row else ""
            print(f"| {label} | {row['codec']} | {row['bytes']:,.0f} | "
                  f"{row['bytes'] / raw:.1%} | {row['encode_ms']:.2f} | "
                  f"{row['decode_ms']:.2f}{pil} | {row['psnr']:.1f} ({row['psnr_min']:.1f}) |")


if __name__ == "__main__":
    main()
