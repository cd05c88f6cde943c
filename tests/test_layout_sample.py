"""The large-collection layouts, reached at small N from the real CLI.

Above ``--layout-fast`` items openTSNE fits every item with a cheaper neighbour search
and fewer iterations; above ``--layout-sample`` items it is fitted on a seeded sample,
the others are placed and then all are refined together
(``reduce.tsne_sample_place_refine``). The pipeline runs as a user runs it (a
subprocess, relative paths, default flags otherwise) on 600 distinct generated pictures
in 10 classes: once with a full fit (``--layout-sample 0``), once with the fast fit
(``--layout-fast 100``) and once fitting a quarter of them; the map's grid P@10
(mosaic/quality.py) of each large-collection layout must stay close to the full fit's, a
random placement of the same items is the negative control, and the manifest's own
quality report must be the metric recomputed here from the bundle.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mosaic import quality
from mosaic.bundle import open_vectors, read_manifest
from mosaic.pipeline import reduce

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import distinct_images  # noqa: E402

N = 600
SAMPLE = 150
FAST = 100


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("layout-sample")
    distinct_images.generate(work / "pictures", N, seed=3, classes=10, jobs=1, quiet=True)
    built = {}
    for cid, flags in (("full", ["--layout-sample", "0"]),
                       ("fast", ["--layout-fast", str(FAST)]),
                       ("sampled", ["--layout-sample", str(SAMPLE)])):
        result = run_cli(work, "pipeline", "--images", "pictures/images", "--id", cid,
                         *flags)
        assert result.returncode == 0, result.stderr
        assert "map quality: grid P@10" in result.stdout
        built[cid] = work / "output" / cid
    return built


def features_and_positions(bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    """The layout vectors in PCA-50 (as the metric defines them) and the grid cells."""
    manifest = read_manifest(bundle)
    entry = next(e for e in manifest["embeddings"]
                 if e["name"] == manifest["layout"]["embedding"])
    vectors = np.asarray(open_vectors(bundle, entry)[:], dtype=np.float32)
    features = reduce.reduce_pca(vectors, manifest["layout"]["pca"])[:, :quality.FEATURE_DIMS]
    return features, np.load(bundle / "positions.npy")


def test_each_path_ran_and_is_recorded(bundles):
    full, fast, sampled = (read_manifest(bundles[c]) for c in ("full", "fast", "sampled"))
    assert [m["layout"]["method"] for m in (full, fast, sampled)] == [
        "full", "fast-fit", "sample-place-refine"]
    assert full["layout"]["sample"] is None and fast["layout"]["sample"] is None
    assert sampled["layout"]["sample"] == SAMPLE
    assert full["counts"]["items"] == fast["counts"]["items"] == sampled["counts"]["items"] == N
    # Different methods, different maps: neither run fell back to the default full fit.
    for cid in ("fast", "sampled"):
        assert not np.allclose(np.load(bundles["full"] / "layout.npy"),
                               np.load(bundles[cid] / "layout.npy"))


def test_sampled_layout_keeps_the_full_fits_local_order(bundles):
    scores = {}
    for cid, bundle in bundles.items():
        features, positions = features_and_positions(bundle)
        scores[cid] = quality.grid_precision(features, positions)
        shuffled = np.random.default_rng(5).permutation(positions)
        scores[f"{cid}-random"] = quality.grid_precision(features, shuffled)
    assert scores["full"] > 0.3, scores  # the full fit itself makes a map
    assert scores["sampled"] >= 0.9 * scores["full"], scores
    assert scores["fast"] >= 0.9 * scores["full"], scores
    # Negative control: a random placement of the same items keeps nearly nothing.
    assert max(scores[f"{cid}-random"] for cid in bundles) < 0.05, scores


def test_manifest_reports_the_metric_recomputed_from_the_bundle(bundles):
    for bundle in bundles.values():
        report = read_manifest(bundle)["grid"]["quality"]
        features, positions = features_and_positions(bundle)
        assert report["queries"] == min(N, quality.N_QUERIES)
        # PCA-50 here is the first 50 of the pipeline's PCA-256 components: equal up to
        # the solver's rounding, so the scores agree closely rather than bit for bit.
        assert abs(report["grid_p10"] - quality.grid_precision(features, positions)) < 0.02
        assert report["random_p10"] < 0.05 < report["grid_p10"]


def test_bad_layout_sample_is_one_error_line(tmp_path):
    (tmp_path / "pictures").mkdir()
    result = run_cli(tmp_path, "pipeline", "--images", "pictures", "--layout-sample", "3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: --layout-sample must be 0 (fit all) or at least "
        f"{reduce.MIN_ITEMS_FOR_MANIFOLD}"]


def test_bad_layout_fast_is_one_error_line(tmp_path):
    (tmp_path / "pictures").mkdir()
    result = run_cli(tmp_path, "pipeline", "--images", "pictures", "--layout-fast", "-1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: --layout-fast must be 0 (never) or positive"]


def test_large_layouts_change_the_layout_cache_key_only_where_they_run(bundles):
    """--layout-sample and --layout-fast above N leave the full fit's cached layout valid
    (same key)."""
    work = bundles["full"].parents[1]
    result = run_cli(work, "pipeline", "--images", "pictures/images", "--id", "full",
                     "--layout-sample", str(N + 1), "--layout-fast", str(N))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((bundles["full"] / "manifest.json").read_text())
    assert manifest["layout"]["sample"] is None
    assert re.search(r"\blayout [\d.]+s \(cached\)", result.stdout), result.stdout
