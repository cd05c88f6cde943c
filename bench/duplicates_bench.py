"""Duplicate groups on real pictures: precision and recall of same-picture pairs.

One artist's complete emoji set (``bench/real_collections.py``, 64-px PNGs) is the
collection of originals. A seeded random ``--share`` of them get four copies each, one of
each kind a collection picks up by itself:

- ``resize``: scaled to 50-80 % (Lanczos), PNG with its alpha;
- ``jpeg``: flattened on white, JPEG at quality 70-90;
- ``crop``: 2-10 % of the width and of the height cut off, split at random between the
  two sides, PNG;
- ``screenshot``: flattened on white, down to 32-48 px and back up to 64 (bilinear), PNG.

Another artist's emoji of the same code points are added as near distractors: the same
concept drawn by another hand, so often the same layout and colours (a yellow face, a
flag), but another picture, which must never be grouped with the originals. The first
set's own skin-tone variants are harder distractors still (one picture with another skin
colour) and are different pictures too. Two items are the same picture when their
originals have equal pixels (a few code points share one drawing).

The bench runs ``python run.py pipeline`` (default flags) on the folder, then
``python run.py duplicates`` (default thresholds, timed), and scores the groups by pairs:
precision = same-picture pairs inside groups / all pairs inside groups, recall = same-
picture pairs inside groups / all same-picture pairs. It then compares every pair of
the first 20 stored neighbours with ``mosaic.duplicates``'s own stages (timed) and sweeps
the three thresholds (neighbour rank, ``pixels`` distance, aligned difference). With
``--candidates`` it also sweeps the first design, a 64-bit perceptual hash (pHash, dHash)
of the same 32-px pictures over all 50 neighbours, against the ``pixels`` distance.
``--scale N`` times the array stages that see every item (candidate pairs and groups) on
N synthetic items with 50 random neighbours each, for the cost at a million. Results go
to ``<work>/results.json``.

    python bench/real_collections.py --vendor google --vendor twitter --to /work/bench-data/real
    python bench/duplicates_bench.py --data /work/bench-data/real --work /tmp/dups \\
        --candidates --scale 1000000
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mosaic import duplicates  # noqa: E402
from mosaic.bundle import Bundle, read_manifest  # noqa: E402

KINDS = ("resize", "jpeg", "crop", "screenshot")
CID = "dups"


# -- the collection ------------------------------------------------------------


def pixel_key(image: Image.Image) -> str:
    """Equal pixels, equal key: what makes two files the same picture here."""
    rgba = image.convert("RGBA")
    return hashlib.blake2b(rgba.tobytes() + repr(rgba.size).encode(), digest_size=12).hexdigest()


def on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def make_copy(image: Image.Image, kind: str, rng: np.random.Generator
              ) -> tuple[Image.Image, dict]:
    """One copy of ``image`` of ``kind`` and the parameters drawn for it."""
    width, height = image.size
    if kind == "resize":
        scale = rng.uniform(0.5, 0.8)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return image.resize(size, Image.Resampling.LANCZOS), {"scale": round(scale, 3)}
    if kind == "jpeg":
        return on_white(image), {"quality": int(rng.integers(70, 91))}
    if kind == "crop":
        cut_x, cut_y = rng.uniform(0.02, 0.10, 2)
        share_x, share_y = rng.uniform(0, 1, 2)
        left, top = round(width * cut_x * share_x), round(height * cut_y * share_y)
        right = width - round(width * cut_x * (1 - share_x))
        bottom = height - round(height * cut_y * (1 - share_y))
        return image.crop((left, top, right, bottom)), {"cut": [round(cut_x, 3),
                                                              round(cut_y, 3)]}
    if kind == "screenshot":
        side = int(rng.integers(32, 49))
        small = on_white(image).resize((side, round(side * height / width)),
                                       Image.Resampling.BILINEAR)
        return small.resize((width, height), Image.Resampling.BILINEAR), {"side": side}
    raise ValueError(kind)


def build_collection(data: Path, work: Path, original: str, distractor: str, share: float,
                     seed: int) -> list[dict]:
    """``work/images/{orig,copy,other}/`` and ``work/truth.csv``; rows of truth.csv."""
    truth_path = work / "truth.csv"
    if truth_path.exists():
        with open(truth_path, newline="") as handle:
            return list(csv.DictReader(handle))
    import real_collections

    sources = {vendor: real_collections.prepare(vendor, data) / "images"
               for vendor in (original, distractor)}
    images = work / "images"
    shutil.rmtree(images, ignore_errors=True)
    for folder in ("orig", "copy", "other"):
        (images / folder).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = sorted(p.name for p in sources[original].iterdir())
    chosen = set(rng.choice(len(names), round(share * len(names)), replace=False).tolist())
    rows = []
    for number, name in enumerate(names):
        with Image.open(sources[original] / name) as image:
            image.load()
        key = pixel_key(image)
        shutil.copyfile(sources[original] / name, images / "orig" / name)
        rows.append({"filename": f"orig/{name}", "picture": key, "kind": "original",
                     "vendor": original, "params": ""})
        if number not in chosen:
            continue
        for kind in KINDS:
            copy, params = make_copy(image, kind, rng)
            stem = Path(name).stem
            if kind == "jpeg":
                target = images / "copy" / f"{stem}-{kind}.jpg"
                copy.save(target, "JPEG", quality=params["quality"])
            else:
                target = images / "copy" / f"{stem}-{kind}.png"
                copy.save(target, "PNG")
            rows.append({"filename": f"copy/{target.name}", "picture": key, "kind": kind,
                         "vendor": original, "params": json.dumps(params)})
    for name in names:  # the same code points drawn by another artist
        if (sources[distractor] / name).exists():
            with Image.open(sources[distractor] / name) as image:
                key = pixel_key(image)
            shutil.copyfile(sources[distractor] / name, images / "other" / name)
            rows.append({"filename": f"other/{name}", "picture": key, "kind": "distractor",
                         "vendor": distractor, "params": ""})
    with open(truth_path.with_suffix(".tmp"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    truth_path.with_suffix(".tmp").rename(truth_path)
    return rows


def run_cli(work: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=work,
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"run.py {args[0]} failed:\n{result.stderr}")
    return result, time.perf_counter() - started


# -- scoring -------------------------------------------------------------------


def picture_labels(bundle: Path, rows: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """Each item's picture as an int (items in id order), and its truth row."""
    import sqlite3

    by_file = {row["filename"]: row for row in rows}
    conn = sqlite3.connect(bundle / "metadata.sqlite")
    sources = [s for (s,) in conn.execute("SELECT source FROM items ORDER BY id")]
    conn.close()
    root = (bundle.parent.parent / "images").resolve()
    items = [by_file[Path(s).resolve().relative_to(root).as_posix()] for s in sources]
    codes: dict[str, int] = {}
    labels = np.array([codes.setdefault(row["picture"], len(codes)) for row in items])
    return labels, items


def _pairs(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def score(group_of: np.ndarray, truth: np.ndarray) -> dict:
    """Pair precision and recall of groups (``group_of``: -1 for an item in none)."""
    in_group = group_of >= 0
    _, true_counts = np.unique(truth, return_counts=True)
    _, cell_counts = np.unique(np.stack([group_of[in_group], truth[in_group]]), axis=1,
                               return_counts=True)
    _, group_counts = np.unique(group_of[in_group], return_counts=True)
    found, true, hits = _pairs(group_counts), _pairs(true_counts), _pairs(cell_counts)
    return {"precision": hits / found if found else 1.0, "recall": hits / true,
            "pairs_found": found, "pairs_true": true, "groups": len(group_counts)}


def groups_to_labels(group: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """Each item's group number, -1 for an item in none."""
    group_of = np.full(n, -1)
    group_of[ids] = group
    return group_of


def recall_by_kind(group_of: np.ndarray, truth: np.ndarray, items: list[dict]) -> dict:
    """Share of the copies of each kind grouped with their original."""
    original_of = {truth[i]: i for i, row in enumerate(items) if row["kind"] == "original"}
    out = {}
    for kind in KINDS:
        copies = [i for i, row in enumerate(items) if row["kind"] == kind]
        hit = [group_of[i] >= 0 and group_of[i] == group_of[original_of[truth[i]]]
               for i in copies]
        out[kind] = float(np.mean(hit)) if hit else None
    return out


def mixed_vendor_groups(group_of: np.ndarray, items: list[dict]) -> int:
    """Groups that hold an original (or copy) and a distractor: the failure to avoid."""
    vendors: dict[int, set] = {}
    for i, row in enumerate(items):
        if group_of[i] >= 0:
            vendors.setdefault(int(group_of[i]), set()).add(row["vendor"])
    return sum(len(v) > 1 for v in vendors.values())


# -- the rejected design: a perceptual hash ------------------------------------


def hashes_of(pictures: np.ndarray, kind: str) -> np.ndarray:
    """64-bit hashes of uint8 (n, 32, 32, 3) pictures: ``phash`` (the 8 x 8 lowest DCT
    frequencies of the grey picture, each above or below their median: imagehash's
    definition) or ``dhash`` (9 x 8 grey, each pixel brighter than its left one)."""
    from scipy.fft import dctn

    grey = pictures.astype(np.float64).mean(axis=3)
    if kind == "phash":
        low = dctn(grey, type=2, axes=(1, 2))[:, :8, :8].reshape(len(grey), 64)
        bits = low > np.median(low, axis=1, keepdims=True)
    else:
        small = np.stack([np.asarray(Image.fromarray(g.astype(np.uint8)).resize(
            (9, 8), Image.Resampling.BOX), np.int16) for g in grey])
        bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(grey), 64)
    packed = np.packbits(bits, axis=1, bitorder="big")
    return packed.view(">u8").reshape(-1).astype(np.uint64)


def all_pictures(bundle: Bundle) -> np.ndarray:
    n = bundle.counts.items
    cell_size = bundle.grid.cell_size
    boxes = duplicates.picture_boxes(duplicates.read_sizes(bundle), cell_size)
    out = np.empty((n, duplicates.SIDE, duplicates.SIDE, 3), np.uint8)
    with bundle.open_cells() as cells:
        for part, block in duplicates.read_pictures(cells, boxes, np.arange(n), cell_size):
            out[part] = block
    return out


# -- the sweep -----------------------------------------------------------------


def neighbour_table(bundle: Bundle) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every stored neighbour pair once (a < b) with its ``pixels`` distance and its
    best rank (0 = nearest) in either list."""
    ids_rows, distance_rows = bundle.open_top_neighbors(duplicates.pixels_embedding(bundle))
    rows = np.arange(len(ids_rows))
    ids, distances = ids_rows.read_rows(rows), distance_rows.read_rows(rows)
    a = np.repeat(rows, ids.shape[1])
    rank = np.tile(np.arange(ids.shape[1]), len(rows))
    b, d = ids.reshape(-1).astype(np.int64), distances.reshape(-1)
    keep = b >= 0
    a, b, d, rank = a[keep], b[keep], d[keep], rank[keep]
    low, high = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((rank, high, low))
    low, high, d, rank = low[order], high[order], d[order], rank[order]
    first = np.concatenate([[True], (low[1:] != low[:-1]) | (high[1:] != high[:-1])])
    return low[first], high[first], d[first], rank[first]


def sweep(n: int, a, b, keys: dict, truth, grid: dict) -> list[dict]:
    """Score every combination of thresholds in ``grid`` ({name: values}); a pair is
    kept where each ``keys[name] <= value``."""
    import itertools

    results = []
    names = list(grid)
    for values in itertools.product(*(grid[name] for name in names)):
        keep = np.ones(len(a), bool)
        for name, value in zip(names, values):
            keep &= keys[name] <= value
        labels = duplicates.group_labels(n, [(a[keep], b[keep])])
        group_of = groups_to_labels(*duplicates.groups_from_labels(labels), n)
        results.append({**{name: float(v) for name, v in zip(names, values)},
                        **score(group_of, truth)})
    return results


def best(results: list[dict]) -> dict:
    """Highest recall with precision >= 0.95 (else the highest precision)."""
    good = [r for r in results if r["precision"] >= 0.95]
    if good:
        return max(good, key=lambda r: (r["recall"], r["precision"]))
    return max(results, key=lambda r: (r["precision"], r["recall"]))


def time_scale(n: int, seed: int = 0) -> dict:
    """The array stages at ``n`` items (no pictures): 50 random neighbours each,
    ``candidate_pairs`` and ``group_labels`` block by block, 1 % of items paired."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    pairs, count = [], 0
    for start in range(0, n, duplicates.CHUNK):
        stop = min(start + duplicates.CHUNK, n)
        ids = rng.integers(0, n, (stop - start, 50), dtype=np.int32)
        distances = np.sort(rng.uniform(0, 12, (stop - start, 50)).astype(np.float32), axis=1)
        a, b = duplicates.candidate_pairs(start, ids, distances)
        count += len(a)
        keep = rng.random(len(a)) < 0.01
        pairs.append((a[keep], b[keep]))
    pair_seconds = time.perf_counter() - started
    started = time.perf_counter()
    group, _ = duplicates.groups_from_labels(duplicates.group_labels(n, pairs))
    return {"n": n, "candidate_pairs": count, "pairs_seconds": round(pair_seconds, 2),
            "groups_seconds": round(time.perf_counter() - started, 2),
            "groups": int(group.max()) + 1 if len(group) else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/bench-data/real"),
                        help="where bench/real_collections.py keeps the emoji sets")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--original", default="google")
    parser.add_argument("--distractor", default="twitter")
    parser.add_argument("--share", type=float, default=0.2, help="originals that get copies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", action="store_true",
                        help="also score dHash, imagehash's pHash and PDQ where importable")
    parser.add_argument("--scale", type=int, nargs="*", default=[],
                        help="time the array stages at these N")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = build_collection(args.data, work, args.original, args.distractor, args.share,
                            args.seed)
    print(f"collection: {len(rows)} images ({sum(r['kind'] == 'original' for r in rows)} "
          f"originals, {sum(r['kind'] in KINDS for r in rows)} copies, "
          f"{sum(r['kind'] == 'distractor' for r in rows)} distractors) in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    bundle = work / "output" / CID
    if not (bundle / "manifest.json").exists():
        _, seconds = run_cli(work, "pipeline", "--images", "images", "--id", CID, "-q")
        print(f"pipeline: {seconds:.0f} s", flush=True)
    manifest = read_manifest(bundle)
    n = manifest["counts"]["items"]
    truth, items = picture_labels(bundle, rows)
    report: dict = {"items": n, "args": {k: str(v) for k, v in vars(args).items()}}

    result, seconds = run_cli(work, "duplicates", "--id", CID, "--format", "csv",
                              "-o", "groups.csv")
    with open(work / "groups.csv", newline="") as handle:
        listed = list(csv.DictReader(handle))
    group_of = np.full(n, -1)
    for row in listed:
        group_of[int(row["id"])] = int(row["group"])
    default = {"max_difference": duplicates.MAX_DIFFERENCE,
               "max_distance": duplicates.MAX_DISTANCE, "max_rank": duplicates.MAX_RANK,
               **score(group_of, truth), "cli_seconds": round(seconds, 2),
               "recall_by_kind": recall_by_kind(group_of, truth, items),
               "mixed_vendor_groups": mixed_vendor_groups(group_of, items)}
    largest = [row for row in listed if row["largest"] == "1"]
    default["largest_is_original"] = float(np.mean(
        [items[int(row["id"])]["kind"] == "original" for row in largest])) if largest else None
    report["default"] = default
    print("default:", json.dumps(default), flush=True)

    # the stages one by one, timed, then the sweeps on their arrays
    started = time.perf_counter()
    model = Bundle.open(bundle)
    a, b, d, rank = neighbour_table(model)
    report["neighbour_table_seconds"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    found = list(duplicates.iter_pair_differences(model, max_distance=np.inf,
                                                  max_rank=20))
    seconds = time.perf_counter() - started
    pa = np.concatenate([f[0] for f in found])
    pb = np.concatenate([f[1] for f in found])
    difference = np.concatenate([f[2] for f in found])
    position = np.searchsorted(a * n + b, pa * n + pb)
    report["compare"] = {"pairs": len(pa), "seconds": round(seconds, 2),
                         "ms_per_pair_with_decode": round(1000 * seconds / len(pa), 4)}
    print("compare:", report["compare"], flush=True)
    keys = {"max_rank": rank[position] + 1, "max_distance": d[position],
            "max_difference": difference}
    grid = {"max_rank": [5, 10, 20], "max_distance": [4.0, 5.0, 6.0, 8.0, np.inf],
            "max_difference": list(range(10, 33, 2))}
    report["sweeps"] = {"aligned difference (shipped)": sweep(n, pa, pb, keys, truth, grid)}
    print("aligned difference: best", json.dumps(best(report["sweeps"][
        "aligned difference (shipped)"])), flush=True)
    if args.candidates:  # the first design: a perceptual hash over all 50 neighbours
        pictures = all_pictures(model)
        for kind in ("phash", "dhash"):
            hashes = hashes_of(pictures, kind)
            keys = {"max_distance": d, "max_hamming": np.bitwise_count(hashes[a] ^ hashes[b])}
            grid = {"max_distance": [1.0, 2.0, 3.0, 4.0, 6.0, np.inf],
                    "max_hamming": list(range(0, 21, 2))}
            name = f"{kind} (64 bits) of the 32-px picture"
            report["sweeps"][name] = sweep(n, a, b, keys, truth, grid)
            print(f"{name}: best", json.dumps(best(report["sweeps"][name])), flush=True)
    report["scale"] = [time_scale(size) for size in args.scale]
    for row in report["scale"]:
        print("scale:", json.dumps(row), flush=True)
    (work / "results.json").write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
