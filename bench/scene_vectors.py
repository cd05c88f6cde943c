"""The ``pixels`` vectors of N distinct generated scenes, without writing the pictures.

    python bench/scene_vectors.py --n 1000000 --out /work/bench-data/scenes-1m [--seed 1]

For benchmarks of the stages after decoding (layout, grid, index) at a million items
when the pictures themselves (``bench/distinct_images.py``: 41 GB and 87 minutes at 1M)
are not on the machine. Item i is ``distinct_images``'s scene i of the same seed and
classes, drawn at 64 px on its long side (not at its 256-800 px), letterboxed on black
into a 64-px square and box-filtered to 16 x 16 RGB as ``thumbnail.raw_vector`` does:
the same class structure as the decoded collection's vectors, but not the same vectors
(no JPEG, no greyscale or alpha, a smaller drawing). Say so beside any figure made from
them.

Writes ``vectors.npy`` (uint8 (N, 768), the stored form of ``pixels``) and
``classes.npy`` (int16 (N,), the scene class of each item).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distinct_images import item_params, render_scene  # noqa: E402

from mosaic.pipeline.thumbnail import raw_vector, square_array  # noqa: E402

SIDE = 64
CHUNK = 2_000


def _chunk(task: tuple[int, int, int, int]) -> tuple[int, np.ndarray, np.ndarray]:
    seed, classes, start, stop = task
    vectors = np.empty((stop - start, 768), dtype=np.uint8)
    labels = np.empty(stop - start, dtype=np.int16)
    for row, index in enumerate(range(start, stop)):
        params = item_params(seed, index, classes)
        scale = SIDE / max(params.width, params.height)
        width = max(4, round(params.width * scale))
        height = max(4, round(params.height * scale))
        picture = np.asarray(render_scene(params, seed, width, height))
        vectors[row] = raw_vector(square_array(picture, SIDE, "fit", (0, 0, 0))).reshape(-1)
        labels[row] = params.cls
    return start, vectors, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    vectors = np.lib.format.open_memmap(args.out / "vectors.partial.npy", mode="w+",
                                        dtype=np.uint8, shape=(args.n, 768))
    labels = np.empty(args.n, dtype=np.int16)
    tasks = [(args.seed, args.classes, start, min(args.n, start + CHUNK))
             for start in range(0, args.n, CHUNK)]
    with ProcessPoolExecutor(args.jobs) as pool:
        for done, (start, chunk, chunk_labels) in enumerate(pool.map(_chunk, tasks), 1):
            vectors[start:start + len(chunk)] = chunk
            labels[start:start + len(chunk)] = chunk_labels
            if done % 50 == 0:
                print(f"{done * CHUNK:,} of {args.n:,}", flush=True)
    vectors.flush()
    del vectors
    np.save(args.out / "classes.npy", labels)
    (args.out / "vectors.partial.npy").rename(args.out / "vectors.npy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
