"""The demo is honest: its images carry no hint of their label, and the map
groups the digits by shape alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mosaic.cli.demo import write_digits

ROOT = Path(__file__).resolve().parents[1]


def test_demo_images_carry_no_label(tmp_path):
    images, metadata = write_digits(tmp_path)
    labels = {}
    with open(metadata, encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            name, label = line.split(",")[:2]
            labels[name] = int(label)
    colours = {}
    for path in sorted(images.glob("*.png"))[:400]:
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        dark = pixels[pixels.sum(axis=2) < 200]
        colours.setdefault(labels[path.name], set()).update(map(tuple, np.unique(dark, axis=0)))
    inks = {label: min(values) for label, values in colours.items()}
    assert len(set(inks.values())) == 1, inks  # the same darkest ink for every label


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    """``run.py demo`` as a user runs it, with relative paths, in a fresh folder."""
    work = tmp_path_factory.mktemp("demo")
    subprocess.run([sys.executable, str(ROOT / "run.py"), "-q", "demo", "--out", "out",
                    "--data", "data"], cwd=work, check=True, timeout=600)
    return work / "out" / "digits"


def _nearest_label_agreement(xy: np.ndarray, labels: np.ndarray) -> float:
    distances = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(distances, np.inf)
    return float((labels[distances.argmin(axis=1)] == labels).mean())


def test_the_demo_map_groups_digits_by_shape(demo_bundle):
    manifest = json.loads((demo_bundle / "manifest.json").read_text())
    xy = np.load(demo_bundle / manifest["files"]["layout"])
    labels = np.array([int(float(v)) for v in _label_values(demo_bundle, manifest)])
    agreement = _nearest_label_agreement(xy, labels)
    shuffled = _nearest_label_agreement(xy, np.random.default_rng(0).permutation(labels))
    assert agreement > 0.8, agreement       # measured: 0.98
    assert shuffled < 0.2, shuffled         # chance is 0.1


def _label_values(bundle: Path, manifest: dict) -> list:
    """The label of every item, in id order, through the API's own reader."""
    from server import create_app

    client = create_app({"TESTING": True}, out_dir=bundle.parent).test_client()
    values = []
    for item in range(manifest["counts"]["items"]):
        body = client.get(f"/api/collections/digits/items/{item}").get_json()
        values.append(body["metadata"]["label"])
    return values


def test_the_demo_has_a_block_per_digit(demo_bundle):
    manifest = json.loads((demo_bundle / "manifest.json").read_text())
    assert [entry["name"] for entry in manifest["layouts"]] == ["similarity", "category:label"]
    entry = manifest["layouts"][1]
    positions = np.load(demo_bundle / entry["positions"])
    labels = [str(int(float(v))) for v in _label_values(demo_bundle, manifest)]
    assert sorted(label["text"] for label in entry["labels"]) == [str(d) for d in range(10)]
    for label in entry["labels"]:  # every block holds exactly the digits of its label
        inside = ((positions[:, 0] >= label["row"])
                  & (positions[:, 0] < label["row"] + label["n_rows"])
                  & (positions[:, 1] >= label["col"])
                  & (positions[:, 1] < label["col"] + label["n_cols"]))
        assert {labels[i] for i in np.flatnonzero(inside)} == {label["text"]}
        assert inside.sum() == label["count"]
