"""Shared fixtures: small generated image collections and a session-scoped bundle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sample_collection import build_bundle, make_collection

# As mosaic.cli.main.main does: idle OpenMP threads must not spin (set before sklearn loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def collection(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, metadata CSV) of 36 images in 3 colour clusters."""
    root = tmp_path_factory.mktemp("collection")
    csv_path = make_collection(root / "images")
    return root / "images", csv_path


@pytest.fixture(scope="session")
def bundle(collection, tmp_path_factory) -> Path:
    """A finished bundle built from ``collection`` through the CLI."""
    images, csv_path = collection
    out = tmp_path_factory.mktemp("out")
    assert build_bundle(images, out, "test", metadata=csv_path) == 0
    return out / "test"


@pytest.fixture(scope="session")
def clip_work(tmp_path_factory) -> Path:
    """A working folder for search by meaning (tests/test_clip.py and the browser's
    tests/browser/test_meaning_browser.py; trained once a session, about a minute):
    ``models/trained`` and ``models/random`` (KerasHub presets of tests/tiny_clip.py's
    CLIP), ``pictures/`` (12 per caption, not the training pictures) and two bundles
    built from them by the CLI, with relative paths: ``output/shapes`` with the trained
    model, ``output/control`` with the random one."""
    import subprocess
    import sys

    import tiny_clip
    from PIL import Image

    work = tmp_path_factory.mktemp("clip")
    backbone, preprocessor = tiny_clip.build(seed=0)
    tiny_clip.save(backbone, preprocessor, work / "models" / "random")
    tiny_clip.train(backbone, preprocessor)
    tiny_clip.save(backbone, preprocessor, work / "models" / "trained")
    images, captions = tiny_clip.pictures(12, seed=99)
    (work / "pictures").mkdir()
    for number, (image, caption) in enumerate(zip(images, captions, strict=True)):
        name = f"{number:03d}-{caption[2:].replace(' ', '-')}.png"
        Image.fromarray(image).save(work / "pictures" / name)
    run = Path(__file__).resolve().parents[1] / "run.py"
    for cid, model in (("shapes", "trained"), ("control", "random")):
        result = subprocess.run(
            [sys.executable, str(run), "pipeline", "--images", "pictures", "--id", cid,
             "--jobs", "1", "--cell-size", "32", "--embedding", "clip", "--embedding",
             "pixels", "--weights", f"models/{model}"],
            cwd=work, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    return work
