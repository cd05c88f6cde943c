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
