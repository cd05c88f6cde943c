"""Dask against the local process pool, on the same images.

Starts a ``distributed.LocalCluster`` with 2 worker processes of one thread
each (real worker processes, as ``dask worker --nworkers 2 --nthreads 1``
starts them), runs ``python run.py pipeline ... --dask ADDRESS`` through
``scale_bench.run``, then the same pipeline with the local process pool, and
checks the two bundles are identical (``tests/bundle_compare.py``: every
contract file byte for byte, the metadata rows, the manifest apart from how
and when the run was made, and the bundle id, which differs by design).

    python bench/dask_bench.py --n 20000 --work /work/scale

Appends both runs to ``WORK/results.jsonl`` and prints the overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests"))

import bundle_compare  # noqa: E402
from scale_bench import run  # noqa: E402


def same_bundle(a: Path, b: Path) -> None:
    """bundle_compare.assert_same_bundle, with the id (which names the run) left out."""
    original = bundle_compare.comparable_manifest

    def without_id(bundle: Path) -> dict:
        manifest = original(bundle)
        for key in ("id", "title"):
            manifest.pop(key)
            manifest["parameters"].pop(key, None)
        return manifest

    bundle_compare.comparable_manifest = without_id
    try:
        bundle_compare.assert_same_bundle(a, b)
    finally:
        bundle_compare.comparable_manifest = original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    from distributed import LocalCluster

    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    results = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        results.append(run(args.work, args.n, ["--dask", cluster.scheduler_address], "-dask"))
    results.append(run(args.work, args.n, [], "-local"))
    out = args.work / "out"
    same_bundle(out / f"scale-{args.n}-dask", out / f"scale-{args.n}-local")
    with open(args.work / "results.jsonl", "a", encoding="utf-8") as handle:
        for result in results:
            result["identical_dask_local"] = True
            handle.write(json.dumps(result) + "\n")
    dask, local = results
    print(f"identical bundles; dask {dask['wall_s']} s (decode {dask['timings']['decode']} s), "
          f"local {local['wall_s']} s (decode {local['timings']['decode']} s): "
          f"overhead {dask['wall_s'] / local['wall_s'] - 1:+.1%} end to end, "
          f"{dask['timings']['decode'] / local['timings']['decode'] - 1:+.1%} in decode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
