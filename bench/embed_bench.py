"""VGG16 fc2 embedding throughput (images/s) through mosaic's Vgg16Embedder.

Runs on whatever Keras backend is configured (``KERAS_BACKEND=tensorflow`` on
the CPU here; ``KERAS_BACKEND=jax`` on a GPU machine), with random weights
(``--weights none``: the speed does not depend on the weights).

    python bench/embed_bench.py --batches 16,32,64 --images 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosaic.pipeline.embed import Vgg16Embedder  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="32")
    parser.add_argument("--images", type=int, default=128, help="images per measurement")
    args = parser.parse_args()
    import keras

    embedder = Vgg16Embedder("none")
    embedder.load()
    rng = np.random.default_rng(0)
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        inputs = rng.integers(0, 255, size=(batch, 224, 224, 3), dtype=np.uint8)
        embedder.embed(inputs)  # warm-up: compilation and memory allocation
        n_batches = max(1, args.images // batch)
        start = time.perf_counter()
        for _ in range(n_batches):
            vectors = embedder.embed(inputs)
        seconds = time.perf_counter() - start
        assert vectors.shape == (batch, 4096) and np.isfinite(vectors).all()
        results.append({"batch": batch, "images": n_batches * batch,
                        "images_per_second": round(n_batches * batch / seconds, 1)})
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"backend": keras.backend.backend(), "cpus": os.cpu_count(),
                      "machine": platform.machine(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
