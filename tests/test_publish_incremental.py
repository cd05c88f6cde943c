"""`run.py publish` into an earlier publish rewrites only what changed, and the site's
neighbour lists are the ones the pipeline stored in the bundle (``embeddings[].top``).

The real CLI as a subprocess, relative paths, default flags: a pipeline on distinct
generated pictures, a publish, the same publish again (nothing to rewrite), a change of
the title template (only the item, title and word-index shards change, not one tile), and a copy of
the bundle as an older pipeline made it (no stored lists) whose site must be the same.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mosaic.bundle import open_top_neighbors, read_manifest
from mosaic.knn import TOP_K
from mosaic.publish import site_changes, site_snapshot

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import distinct_images  # noqa: E402

N = 150


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("incremental")
    distinct_images.generate(work / "pictures", N, seed=5, classes=5, jobs=1, quiet=True)
    run_cli(work, "pipeline", "--images", "pictures/images", "--id", "pics")
    run_cli(work, "publish", "--id", "pics", "--to", "site")
    return work


def test_the_bundle_stores_every_items_top_neighbours(work):
    bundle = work / "output" / "pics"
    entry = read_manifest(bundle)["embeddings"][0]
    assert entry["top"]["k"] == TOP_K
    ids_rows, distance_rows = open_top_neighbors(bundle, entry)
    ids = ids_rows.read_rows(np.arange(N))
    distances = distance_rows.read_rows(np.arange(N))
    assert ids.shape == (N, TOP_K) and (ids >= 0).all() and (ids < N).all()
    assert not (ids == np.arange(N)[:, None]).any()
    assert (np.diff(distances, axis=1) >= 0).all()
    # Neighbours are near: each item's nearest is closer than a random other item.
    vectors = np.load(bundle / entry["vectors"]).astype(np.float32)
    random_other = (np.arange(N) + 1 + np.random.default_rng(0).integers(0, N - 1, N)) % N
    nearest = np.linalg.norm(vectors - vectors[ids[:, 0]], axis=1)
    control = np.linalg.norm(vectors - vectors[random_other], axis=1)
    assert (nearest <= control).all() and (nearest < control).mean() > 0.9


def test_publishing_again_rewrites_nothing(work):
    before = site_snapshot(work / "site")
    result = run_cli(work, "publish", "--id", "pics", "--to", "site")
    changes = site_changes(before, site_snapshot(work / "site"))
    assert changes["rewritten_files"] == 0 and changes["removed_files"] == 0, changes
    assert "0 files (0.0 MB) new or rewritten, 0 removed" in result.stderr


def test_a_title_change_rewrites_only_the_item_and_text_shards(work):
    run_cli(work, "pipeline", "--images", "pictures/images", "--id", "pics",
            "--title", "Picture {stem}")
    before = site_snapshot(work / "site")
    run_cli(work, "publish", "--id", "pics", "--to", "site")
    after = site_snapshot(work / "site")
    changed = sorted(path for path in after if before.get(path) != after[path])
    assert changed, "the new titles must reach the site"
    # The items and titles, the collection's body, and the word index (titles are
    # searchable: "picture" is a new word).
    assert all(re.fullmatch(r"data/(items|titles)/\d+\.json|data/(collection|facets)\.json"
                            r"|data/search/t/\d+\.bin", path) for path in changed), changed
    titles = json.loads((work / "site" / "data" / "titles" / "0.json").read_text())
    assert titles[0].startswith("Picture ")
    # Negative control: the site's tiles and neighbour lists were not touched.
    assert not any(path.startswith(("data/tiles/", "data/knn/", "data/thumbs/"))
                   for path in changed)


def test_a_bundle_without_stored_lists_publishes_the_same_neighbours(work):
    """Bundles made before ``embeddings[].top`` have the lists computed at publish, by
    the same code: the two sites' knn files are byte for byte the same."""
    old = work / "older" / "pics"
    shutil.copytree(work / "output" / "pics", old)
    manifest = json.loads((old / "manifest.json").read_text())
    for entry in manifest["embeddings"]:
        for part in ("ids", "distances"):
            (old / entry["top"][part]).unlink()
        del entry["top"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    run_cli(work, "publish", "--out", "older", "--id", "pics", "--to", "site-older")
    new_knn = sorted((work / "site" / "data" / "knn").rglob("*.bin"))
    assert new_knn
    for path in new_knn:
        twin = work / "site-older" / path.relative_to(work / "site")
        assert twin.read_bytes() == path.read_bytes(), path
