"""Same-picture recall@5: do an item's nearest neighbours find the same picture?

A generated collection (``build_collection``, seeded): distinct base pictures,
each written as 3-5 variants: long side 100-1200 px; all but the first cut to
another screen aspect (at most ``MAX_CROP`` a side) or cropped up to 5 % a side;
JPEG quality 30-95 or PNG; some with a slight colour shift. Honest distractors:
most bases come in families of ``FAMILY_SIZE`` shots of one scene (same
palette, sky, bars and texture, shapes shifted a little, a few shapes of their
own), the rest are far-apart crops of scikit-learn's two sample photos. An
item's recall@5 is 1 when another variant of its base is among its 5 nearest
neighbours (itself excluded); the figure is the mean over items.

The bench runs ``python run.py pipeline`` on the collection (a subprocess,
relative ``--out``) with both pixel embeddings, then asks the server (its
Flask test client) for every item's 5 neighbours, through annoy with the
manifest's ``search_k`` and through exact search on the same stored vectors.
``--candidates`` also scores other pixel embeddings computed here from each
image's decode, exactly, to show why the shipped one was chosen.

    python bench/same_picture_bench.py --work /tmp/same-picture --bases 500 --candidates
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

K = 5
FAMILY_SIZE = 5  # bases per scene family
MAX_CROP = 0.15  # per side


# -- the collection ------------------------------------------------------------


def draw_scene(rng: np.random.Generator) -> dict:
    """A family's shared scene: palette, sky gradient, bars, texture and a few shapes.
    The pictures of one family are like shots of one place with things moved."""
    palette = rng.uniform(0, 255, (6, 3)).astype(np.float32)
    return {"palette": palette, "angle": rng.uniform(-0.6, 0.6),
            "shapes": [_draw_shape(rng, palette) for _ in range(int(rng.integers(2, 5)))],
            "bars": [(rng.integers(0, 6), rng.uniform(0, 1), rng.uniform(0.005, 0.03),
                      rng.random() < 0.5) for _ in range(int(rng.integers(0, 4)))],
            "texture": (rng.uniform(20, 60), rng.uniform(0, 6), rng.uniform(0.5, 2),
                        rng.uniform(0, 1), rng.uniform(0.1, 0.3), rng.uniform(10, 40))
            if rng.random() < 0.5 else None,
            "noise": rng.uniform(2, 10)}


def _draw_shape(rng: np.random.Generator, palette: np.ndarray, largest: float = 0.3) -> tuple:
    colour = palette[int(rng.integers(2, len(palette)))] + rng.normal(0, 12, 3)
    return (*rng.uniform(0, 1, 2), *rng.uniform(0.04, largest, 2), colour, rng.random() < 0.5)


def render_picture(rng: np.random.Generator, height: int, width: int,
                   scene: dict) -> np.ndarray:
    """A photo-like (height, width, 3) uint8 picture of ``scene`` (``draw_scene``)
    shifted a little, with 1-2 small shapes of its own from ``rng``: a gradient
    sky, soft blobs and hard shapes, bars, fine texture and noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y /= height
    x /= width
    palette, angle = scene["palette"], scene["angle"]
    ramp = np.clip(y * np.cos(angle) + (x - 0.5) * np.sin(angle), 0, 1)[..., None]
    image = palette[0] + (palette[1] - palette[0]) * ramp
    # the camera moved a little between the family's shots, and things of their own
    dy, dx = rng.uniform(-0.06, 0.06, 2)
    shared = [(cy + dy, cx + dx, *rest) for cy, cx, *rest in scene["shapes"]]
    own = [_draw_shape(rng, palette, 0.15) for _ in range(int(rng.integers(1, 3)))]
    for cy, cx, ry, rx, colour, hard in shared + own:
        weight = np.exp(-(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) / 2)[..., None]
        if hard:
            weight = (weight > 0.5).astype(np.float32)
        image = image * (1 - weight) + colour * weight
    for colour, start, length, across in scene["bars"]:
        band = y if across else x
        image = np.where(((band >= start) & (band < start + length))[..., None],
                         palette[colour], image)
    if scene["texture"] is not None:
        freq, phase, stretch, centre, half, strength = scene["texture"]
        texture = np.sin(freq * x * np.pi * 2 + phase) * np.sin(freq * y * np.pi * 2 * stretch)
        mask = (np.abs(y - centre) < half)[..., None]
        image = image + mask * texture[..., None] * strength
    image = image + rng.normal(0, scene["noise"], size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def sample_crops(rng: np.random.Generator, photo: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` crops of one photo, about a third of its height, that overlap at most
    a little: different pictures of one scene (the hardest distractors)."""
    height, width = photo.shape[:2]
    crops: list[tuple[int, int, int, int]] = []
    for _ in range(400):
        if len(crops) == count:
            break
        h = int(rng.uniform(0.3, 0.45) * height)
        w = int(h * rng.uniform(0.8, 1.5))
        top, left = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        if all(_overlap((top, left, h, w), other) < 0.25 for other in crops):
            crops.append((top, left, h, w))
    return [photo[top:top + h, left:left + w] for top, left, h, w in crops]


def _overlap(a, b) -> float:
    top, bottom = max(a[0], b[0]), min(a[0] + a[2], b[0] + b[2])
    left, right = max(a[1], b[1]), min(a[1] + a[3], b[1] + b[3])
    area = max(0, bottom - top) * max(0, right - left)
    return area / min(a[2] * a[3], b[2] * b[3])


ASPECTS = (21 / 9, 16 / 9, 16 / 10, 3 / 2, 4 / 3, 5 / 4, 1.0, 4 / 5, 3 / 4, 9 / 16)


def make_variant(rng: np.random.Generator, base: np.ndarray, first: bool) -> tuple[bytes, str]:
    """One copy of ``base``: the first whole, the others cut to another screen aspect
    (at most ``MAX_CROP`` a side, off centre by up to 3 %) or cropped up to 5 % a
    side; resized to a longest side of 100-1200 px, maybe colour-shifted, saved as
    JPEG (quality 30-95) or PNG."""
    image = Image.fromarray(base)
    if not first:
        width, height = image.size
        left, right, top, bottom = rng.uniform(0, 0.05, 4)
        aspects = [a for a in ASPECTS if abs(a / (width / height) - 1) > 0.05
                   and min(a / (width / height), width / height / a) >= 1 - 2 * MAX_CROP]
        if aspects and rng.random() < 0.6:  # the same picture for another screen
            aspect = aspects[int(rng.integers(len(aspects)))]
            cut = 1 - min(aspect / (width / height), width / height / aspect)
            shift = rng.uniform(-0.03, 0.03)
            if aspect < width / height:
                left, right, top, bottom = cut / 2 + shift, cut / 2 - shift, 0, 0
            else:
                left, right, top, bottom = 0, 0, cut / 2 + shift, cut / 2 - shift
            left, right, top, bottom = (max(0.0, v) for v in (left, right, top, bottom))
        image = image.crop((round(left * width), round(top * height),
                            round(width * (1 - right)), round(height * (1 - bottom))))
    side = int(rng.integers(100, 1201))
    scale = side / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.LANCZOS)
    if rng.random() < 0.3:  # a slight colour shift: white balance, exposure, gamma
        pixels = np.asarray(image, dtype=np.float32) / 255
        pixels = 255 * pixels ** rng.uniform(0.85, 1.15) * rng.uniform(0.93, 1.07, 3)
        pixels += rng.uniform(-10, 10)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    if rng.random() < 0.15:
        image.save(out, "PNG")
        return out.getvalue(), "png"
    image.save(out, "JPEG", quality=int(rng.integers(30, 96)))
    return out.getvalue(), "jpg"


def build_bases(n_bases: int, seed: int, max_side: int = 1000) -> list[tuple[np.ndarray, str]]:
    """``n_bases`` (picture, family) pairs: generated pictures in families of
    ``FAMILY_SIZE`` that share a scene, heights ``max_side``/2 to ``max_side``; and up
    to a fifth of them crops of scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    bases: list[tuple[np.ndarray, str]] = []
    photos = load_sample_images().images
    n_crops = min(n_bases // 5, 24 * len(photos))
    for number, photo in enumerate(photos):
        share = n_crops // len(photos) + (number < n_crops % len(photos))
        bases += [(crop, f"photo{number}") for crop in sample_crops(rng, photo, share)]
    family = 0
    while len(bases) < n_bases:
        scene = draw_scene(rng)
        aspect = rng.uniform(0.6, 1.8)
        for _ in range(min(FAMILY_SIZE, n_bases - len(bases))):
            height = int(rng.integers(max_side // 2, max_side))
            width = int(height * aspect * rng.uniform(0.9, 1.1))
            bases.append((render_picture(rng, height, width, scene), f"scene{family}"))
        family += 1
    return bases


def build_collection(folder: Path, n_bases: int, seed: int = 0, max_side: int = 1000) -> Path:
    """Write the collection into ``folder``/images and its truth (one row per image:
    filename, base, family, width, height) into ``folder``/truth.csv; returns the
    truth file. Deterministic for a seed."""
    rng = np.random.default_rng(seed + 1)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, (base, family) in enumerate(build_bases(n_bases, seed, max_side)):
        for copy in range(int(rng.integers(3, 6))):
            data, ext = make_variant(rng, base, first=copy == 0)
            name = f"b{number:04d}-v{copy}.{ext}"
            (images / name).write_bytes(data)
            with Image.open(io.BytesIO(data)) as opened:
                rows.append([name, number, family, opened.width, opened.height])
    truth = folder / "truth.csv"
    with open(truth, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "base", "family", "width", "height"])
        writer.writerows(rows)
    return truth


# -- scoring -------------------------------------------------------------------


def recall_at_k(neighbours: np.ndarray, bases: np.ndarray) -> float:
    """Mean over items of: another copy of the item's base is among its neighbours
    (an (N, k) array of ids, the item itself excluded). Items whose base has no
    other copy are left out."""
    others = np.bincount(bases)[bases] > 1
    hits = (bases[neighbours] == bases[:, None]).any(axis=1)
    return float(hits[others].mean())


def exact_neighbours(vectors: np.ndarray, k: int = K) -> np.ndarray:
    """(N, k) ids of each row's k nearest rows by euclidean distance, itself excluded."""
    vectors = np.asarray(vectors, dtype=np.float64)
    squared = (vectors ** 2).sum(axis=1)
    out = np.empty((len(vectors), k), dtype=np.int64)
    for start in range(0, len(vectors), 512):
        block = vectors[start:start + 512]
        distances = squared[start:start + 512, None] - 2 * block @ vectors.T + squared[None]
        distances[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        nearest = np.argpartition(distances, k, axis=1)[:, :k]
        order = np.take_along_axis(distances, nearest, axis=1).argsort(axis=1)
        out[start:start + len(block)] = np.take_along_axis(nearest, order, axis=1)
    return out


# -- the pipeline and the server ----------------------------------------------


def run_pipeline(work: Path, embeddings: list[str], jobs: int | None) -> Path:
    """``python run.py pipeline`` over ``work``/images, relative paths, in ``work``;
    a fresh bundle (no stage cache from an earlier run)."""
    shutil.rmtree(work / "out", ignore_errors=True)
    command = [sys.executable, str(ROOT / "run.py"), "-q", "pipeline", "--images", "images",
               "--metadata", "truth.csv", "--out", "out", "--id", "same"]
    for embedding in embeddings:
        command += ["--embedding", embedding]
    if jobs:
        command += ["--jobs", str(jobs)]
    subprocess.run(command, cwd=work, check=True)
    return work / "out" / "same"


def api_neighbours(out: Path, name: str, n_items: int, exact: bool) -> tuple[np.ndarray, str]:
    """Every item's K neighbours from GET /api/collections/same/items/<id>/neighbors,
    through annoy (``exact=False``: MOSAIC_EXACT_MAX 0) or exact search; and the
    method the server reports."""
    from server import create_app

    app = create_app({"MOSAIC_EXACT_MAX": 10 ** 12 if exact else 0, "TESTING": True},
                     out_dir=out.parent)
    client = app.test_client()
    result = np.empty((n_items, K), dtype=np.int64)
    method = ""
    for item in range(n_items):
        response = client.get(f"/api/collections/same/items/{item}/neighbors"
                              f"?k={K}&embedding={name}")
        body = response.get_json()
        assert response.status_code == 200, body
        result[item] = [row["id"] for row in body["neighbors"]]
        method = body["method"]
    return result, method


def item_bases(out: Path, truth: Path) -> np.ndarray:
    """The base of each item id, from the export's ``source`` column."""
    by_name = {}
    with open(truth, newline="") as handle:
        for row in csv.DictReader(handle):
            by_name[row["filename"]] = int(row["base"])
    manifest = json.loads((out / "manifest.json").read_text())
    import sqlite3

    with sqlite3.connect(out / manifest["files"]["metadata"]) as conn:
        rows = conn.execute("SELECT id, filename FROM items ORDER BY id").fetchall()
    return np.array([by_name[os.path.basename(name)] for _, name in rows])


# -- candidate embeddings, scored exactly --------------------------------------


def candidate_vectors(paths: list[str]) -> dict[str, np.ndarray]:
    """Candidate pixel embeddings of each image, from the pipeline's own decode
    (``thumbnail.decode_image``, 128 px cells): name -> (N, dim) float32."""
    from mosaic.pipeline.thumbnail import decode_image, raw_vector, resample

    fit, fill, squash16, squash32 = [], [], [], []
    for path in paths:
        image = decode_image(path, 128, "fit", picture_side=16)
        fit.append(image.cell)
        squash16.append(image.picture)
        squash32.append(decode_image(path, 128, "fit", picture_side=32).picture)
        fill.append(decode_image(path, 128, "fill").cell)
    fit, fill = np.stack(fit), np.stack(fill)
    squash16, squash32 = np.stack(squash16), np.stack(squash32)
    fill16 = np.stack([resample(c, 16, 16) for c in fill])
    squash8 = np.stack([resample(p, 8, 8) for p in squash16])
    histograms = np.stack([_histogram(c) for c in fill])
    n = len(paths)

    def plain(pictures: np.ndarray) -> np.ndarray:
        return pictures.reshape(len(pictures), -1).astype(np.float32) / 255

    return {
        "raw: letterboxed cell, 16 px (today)": np.stack([raw_vector(c) for c in fit]) / 255,
        "letterboxed cell, 32 px": np.stack([raw_vector(c, 32) for c in fit]) / 255,
        "centre square, 16 px": plain(fill16),
        "centre square, 32 px": plain(np.stack([resample(c, 32, 32) for c in fill])),
        "pixels: squashed, 16 px": plain(squash16),
        "squashed, 32 px": plain(squash32),
        "squashed, 16 px, Gaussian blur (sigma 1 px) first": plain(np.stack(
            [_blur(p) for p in squash32]).reshape(n, 32, 32, 3)[:, ::2, ::2]),
        "centre square, 16 px, channels standardised": _standardised(fill16),
        "squashed, 16 px, channels standardised": _standardised(squash16),
        "squashed, 32 px, channels standardised": _standardised(squash32),
        "squashed 8 + 16 px": np.hstack([2 * plain(squash8), plain(squash16)]),
        "squashed 16 px + colour histogram (4^3)": np.hstack([plain(squash16),
                                                             2 * histograms]),
    }


def _standardised(pictures: np.ndarray) -> np.ndarray:
    """Each image's channels to mean 0, standard deviation 1 (at least 8/255 before):
    exposure and white balance dropped, and with them the picture's colour."""
    values = pictures.reshape(len(pictures), -1, 3).astype(np.float32)
    std = np.maximum(values.std(axis=1, keepdims=True), 8.0)
    return ((values - values.mean(axis=1, keepdims=True)) / std).reshape(len(pictures), -1)


def _blur(picture: np.ndarray) -> np.ndarray:
    from PIL import ImageFilter

    return np.asarray(Image.fromarray(picture).filter(ImageFilter.GaussianBlur(2)))


def _histogram(cell: np.ndarray, bins: int = 4) -> np.ndarray:
    quantised = cell.reshape(-1, 3).astype(np.int64) * bins // 256
    codes = (quantised[:, 0] * bins + quantised[:, 1]) * bins + quantised[:, 2]
    counts = np.bincount(codes, minlength=bins ** 3).astype(np.float32)
    return np.sqrt(counts / counts.sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True,
                        help="folder for the collection (kept and reused) and the bundle")
    parser.add_argument("--bases", type=int, default=500, help="distinct base pictures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=None, help="the pipeline's --jobs")
    parser.add_argument("--candidates", action="store_true",
                        help="also score candidate embeddings exactly")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    truth = work / "truth.csv"
    if not truth.exists():
        started = time.perf_counter()
        build_collection(work, args.bases, args.seed)
        print(f"collection: {args.bases} bases built in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    out = run_pipeline(work, ["pixels", "raw"], args.jobs)
    print(f"pipeline (--embedding pixels --embedding raw): {time.perf_counter() - started:.1f} s")
    manifest = json.loads((out / "manifest.json").read_text())
    bases = item_bases(out, truth)
    n = len(bases)
    print(f"{n} items of {len(set(bases.tolist()))} bases; same-picture recall@{K}:")
    print("| embedding | dim | bytes/item | search_k | API (annoy) | API (exact) | exact, numpy |")
    print("|---|---|---|---|---|---|---|")
    from mosaic.bundle import open_vectors

    for entry in manifest["embeddings"]:
        name = entry["name"]
        annoy, method = api_neighbours(out, name, n, exact=False)
        assert method == "annoy", method
        exact, method = api_neighbours(out, name, n, exact=True)
        assert method == "exact", method
        vectors = open_vectors(out, entry)[:]
        ours = exact_neighbours(vectors)
        size = np.dtype(entry["dtype"]).itemsize * entry["dim"]
        print(f"| {name} | {entry['dim']} | {size} | {entry['search_k']} | "
              f"{recall_at_k(annoy, bases):.3f} | {recall_at_k(exact, bases):.3f} | "
              f"{recall_at_k(ours, bases):.3f} |")
    shuffled = open_vectors(out, manifest["embeddings"][0])[:]
    np.random.default_rng(args.seed).shuffle(shuffled)
    print(f"negative control (pixels vectors shuffled between items): "
          f"{recall_at_k(exact_neighbours(shuffled), bases):.3f}")
    if args.candidates:
        import sqlite3

        with sqlite3.connect(out / manifest["files"]["metadata"]) as conn:
            names = [row[0] for row in conn.execute("SELECT filename FROM items ORDER BY id")]
        paths = [str(work / "images" / os.path.basename(name)) for name in names]
        started = time.perf_counter()
        candidates = candidate_vectors(paths)
        print(f"\ncandidates (exact search, {time.perf_counter() - started:.1f} s to decode):")
        print("| candidate | dim | recall@5 |")
        print("|---|---|---|")
        for name, vectors in candidates.items():
            print(f"| {name} | {vectors.shape[1]} | "
                  f"{recall_at_k(exact_neighbours(vectors), bases):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
