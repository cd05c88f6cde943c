"""``--label-column``: a supervised layout (UMAP's ``fit(X, y=codes)``).

The property, with its control: on noise images whose pixels say nothing about a
random label, the supervised layout puts items next to items of their label far
more often than the unsupervised layout of the same images does.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pyvips

from mosaic.errors import UsageError
from mosaic.pipeline import reduce

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(900)
N_IMAGES = 90
N_UNLABELLED = 10  # rows with an empty label: unlabelled (-1), still laid out
LABELS = ["cat", "dog", "eel"]
TSNE_REFUSAL = "Error: --label-column needs --reducer umap: t-SNE has no supervised mode"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def label_agreement(xy: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean share of each labelled item's k nearest labelled items that share its label."""
    keep = labels >= 0
    xy, labels = xy[keep], labels[keep]
    distances = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Noise images and a CSV whose ``label`` is random: the pixels cannot separate it."""
    work = tmp_path_factory.mktemp("labels")
    (work / "noise").mkdir()
    rng = np.random.default_rng(3)
    rows = []
    for index in range(N_IMAGES):
        pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        name = f"n{index:03d}.png"
        pyvips.Image.new_from_memory(pixels.tobytes(), 16, 16, 3, "uchar").pngsave(
            str(work / "noise" / name))
        label = "" if index < N_UNLABELLED else LABELS[rng.integers(len(LABELS))]
        rows.append({"filename": name, "label": label, "empty": ""})
    with open(work / "meta.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["filename", "label", "empty"])
        writer.writeheader()
        writer.writerows(rows)
    return work


def build(project: Path, cid: str, *flags: str) -> tuple[dict, np.ndarray]:
    result = run_cli("-q", "pipeline", "--images", "noise", "--metadata", "meta.csv",
                     "--id", cid, "--out", "out", "--embedding", "raw", "--cell-size", "16",
                     "--reducer", "umap", "--pca", "0", "--jobs", "1", *flags, cwd=project)
    assert result.returncode == 0, result.stderr
    bundle = project / "out" / cid
    return json.loads((bundle / "manifest.json").read_text()), np.load(bundle / "layout.npy")


def item_labels(project: Path) -> np.ndarray:
    with open(project / "meta.csv", encoding="utf-8") as handle:
        by_name = {row["filename"]: row["label"] for row in csv.DictReader(handle)}
    # Ids follow the sorted paths; the names sort as they were written.
    return reduce.encode_labels([by_name[f"n{i:03d}.png"] for i in range(N_IMAGES)])


def test_supervised_umap_groups_labels_the_pixels_do_not(project):
    labels = item_labels(project)
    assert (labels == -1).sum() == N_UNLABELLED and set(labels[labels >= 0]) == {0, 1, 2}
    manifest, supervised = build(project, "supervised", "--label-column", "label")
    _, plain = build(project, "plain")
    assert manifest["layout"]["label_column"] == "label"
    assert manifest["layout"]["reducer"] == "umap"
    chance = float(np.mean([(labels[labels >= 0] == c).mean() for c in range(3)]))
    unsupervised_agreement = label_agreement(plain, labels)
    supervised_agreement = label_agreement(supervised, labels)
    # The control: without labels, neighbours agree about as often as chance.
    assert unsupervised_agreement < chance + 0.15, (unsupervised_agreement, chance)
    assert supervised_agreement > unsupervised_agreement + 0.3, \
        (supervised_agreement, unsupervised_agreement)


def test_the_label_column_is_part_of_the_layout_cache_key(project):
    manifest, _ = build(project, "cached", "--label-column", "label")
    again = run_cli("pipeline", "--images", "noise", "--metadata", "meta.csv", "--id", "cached",
                    "--out", "out", "--embedding", "raw", "--cell-size", "16", "--reducer",
                    "umap", "--pca", "0", "--jobs", "1", "--label-column", "label",
                    cwd=project)
    assert again.returncode == 0, again.stderr
    cache = json.loads((project / "out/cached/cache/layout.json").read_text())
    unsupervised, _ = build(project, "cached")
    assert unsupervised["layout"]["label_column"] is None
    assert json.loads((project / "out/cached/cache/layout.json").read_text())["key"] \
        != cache["key"]


@pytest.mark.parametrize("flags, message", [
    (["--label-column", "label"], TSNE_REFUSAL),
    (["--label-column", "label", "--reducer", "tsne"], TSNE_REFUSAL),
    (["--label-column", "nope", "--reducer", "umap"], "Error: --label-column 'nope' is not a "
                                                      "column of the metadata CSV"),
    (["--label-column", "empty", "--reducer", "umap"], "Error: --label-column 'empty' has "
                                                       "no values"),
    (["--label-column", "label", "--reducer", "umap", "--no-metadata"],
     "Error: --label-column 'label' needs --metadata"),
])
def test_label_column_errors_are_one_line_exit_2(project, flags, message):
    metadata = [] if "--no-metadata" in flags else ["--metadata", "meta.csv"]
    flags = [f for f in flags if f != "--no-metadata"]
    result = run_cli("pipeline", "--images", "noise", *metadata, "--id", "refused",
                     "--out", "out", *flags, cwd=project)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(message), lines[0]
    assert not (project / "out" / "refused").exists()  # refused before any work


def test_encode_labels_codes_missing_values_as_unlabelled():
    assert reduce.encode_labels(["b", "a", None, "b", ""]).tolist() == [1, 0, -1, 1, -1]
    assert reduce.encode_labels([]).dtype == np.int64


def test_layout_2d_takes_labels_only_with_umap():
    vectors = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    with pytest.raises(UsageError, match="needs --reducer umap"):
        reduce.layout_2d(vectors, "tsne", labels=np.zeros(30, dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        reduce.layout_2d(vectors, "umap", labels=np.zeros(29, dtype=np.int64))
