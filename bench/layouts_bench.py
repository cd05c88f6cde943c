"""The other layouts' placement at scale: date, category and geo on N synthetic items.

Arrays only (``mosaic.pipeline.arrange``), no images: years 1850-2020, 40
categories of Zipf-like sizes, and positions of which half sit on one spot (a
city: the geo layout's worst case) and half spread over the world.

    python bench/layouts_bench.py --n 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosaic.pipeline import arrange  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    for n in args.n:
        rng = np.random.default_rng(0)
        xy = rng.random((n, 2))
        years = rng.integers(1850, 2021, n).astype(float)
        categories = [f"c{int(v)}" for v in np.minimum(rng.zipf(1.5, n), 40)]
        latlng = np.column_stack([rng.uniform(-60, 70, n), rng.uniform(-180, 180, n)])
        latlng[: n // 2] = (48.85, 2.35)
        row = {"n": n}
        for name, function, values in (("date", arrange.arrange_date, years),
                                       ("category", arrange.arrange_category, categories),
                                       ("geo", arrange.arrange_geo, latlng)):
            started = time.perf_counter()
            _, shape, _ = function(values, xy)
            row[name] = {"seconds": round(time.perf_counter() - started, 2),
                         "grid": list(shape)}
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
