"""Read-only access to the bundles under the output folder (see docs/bundle.md).

A ``Bundle`` is opened once per worker process and cached by the app; its
arrays are memory-mapped and its annoy indexes are loaded on first use. A
bundle is reopened when its ``manifest.json`` changes (a rebuild).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from mosaic.bundle import (
    COLLECTION_ID,
    MANIFEST,
    PackedCells,
    layout_entries,
    open_cells,
    open_manifest,
    read_layout_positions,
    removed_ids,
)
from mosaic.errors import BundleError, BundleNotFound
from server.neighbors import NeighborIndex

log = logging.getLogger(__name__)

@dataclass
class Bundle:
    """One complete bundle folder and its parsed manifest."""

    cid: str
    path: Path
    manifest: dict
    version: str
    exact_max: int

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._indexes: dict[str, NeighborIndex] = {}
        self._positions: dict[str, np.ndarray] = {}

    @property
    def n_items(self) -> int:
        return int(self.manifest["counts"]["items"])

    @property
    def title(self) -> str:
        return self.manifest.get("title") or self.cid

    @property
    def grid(self) -> dict:
        return self.manifest["grid"]

    @property
    def columns(self) -> list[dict]:
        return self.manifest.get("columns", [])

    @property
    def embedding_names(self) -> list[str]:
        return [e["name"] for e in self.manifest.get("embeddings", [])]

    @property
    def layouts(self) -> list[dict]:
        """The manifest's layouts, similarity first (``mosaic.bundle.layout_entries``)."""
        return layout_entries(self.manifest)

    def layout_by_slug(self, slug: str) -> dict | None:
        return next((e for e in self.layouts if e["slug"] == slug), None)

    def layout_positions(self, entry: dict) -> np.ndarray:
        """A layout's (N, 2) positions, memory-mapped once per worker."""
        with self._lock:
            positions = self._positions.get(entry["name"])
            if positions is None:
                positions = read_layout_positions(self.path, entry, mmap=True)
                self._positions[entry["name"]] = positions
            return positions

    @cached_property
    def removed(self) -> np.ndarray:
        """The ids ``run.py remove`` took out (``mosaic.bundle.removed_ids``), sorted."""
        return removed_ids(self.path, self.manifest)

    def is_removed(self, item_id: int) -> bool:
        index = int(np.searchsorted(self.removed, item_id))
        return index < len(self.removed) and int(self.removed[index]) == item_id

    def file(self, key: str) -> Path:
        """A path named in ``manifest["files"]``."""
        return self.path / self.manifest["files"][key]

    @cached_property
    def cells(self) -> PackedCells:
        """uint8 ``(N, cell_size, cell_size, 3)``, read a cell at a time (nothing resident);
        ``read_encoded(id)`` gives a cell's stored JPEG bytes."""
        return open_cells(self.path, self.manifest)

    def connect(self) -> sqlite3.Connection:
        """A new read-only connection to ``metadata.sqlite`` (one per request)."""
        uri = self.file("metadata").resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True)
        conn.row_factory = sqlite3.Row
        return conn

    def embedding(self, name: str) -> dict | None:
        for spec in self.manifest.get("embeddings", []):
            if spec["name"] == name:
                return spec
        return None

    def neighbor_index(self, name: str) -> NeighborIndex:
        """The index of one embedding, opened once and shared by this worker's threads."""
        with self._lock:
            index = self._indexes.get(name)
            if index is None:
                spec = self.embedding(name)
                if spec is None:
                    raise KeyError(name)
                exact = self.n_items * int(spec["dim"]) <= self.exact_max
                index = NeighborIndex(self.path, spec, exact=exact, removed=self.removed)
                self._indexes[name] = index
            return index


class BundleRegistry:
    """The bundles under one output folder, each opened once per process."""

    def __init__(self, out_dir: str | Path, exact_max: int = 5_000_000) -> None:
        self.out_dir = Path(out_dir).resolve()  # send_from_directory needs absolute folders
        self.exact_max = exact_max
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, Bundle]] = {}

    def list(self) -> list[Bundle]:
        """Every complete bundle, sorted by id; broken ones are logged and skipped."""
        if not self.out_dir.is_dir():
            return []
        bundles = []
        for child in sorted(self.out_dir.iterdir()):
            if (child / MANIFEST).is_file():
                try:
                    bundles.append(self.get(child.name))
                except BundleError as error:
                    log.warning("skipping %s: %s", child, error)
        return bundles

    def get(self, cid: str) -> Bundle:
        """The bundle ``cid``: BundleNotFound for an unknown id, BundleError if unreadable."""
        if not COLLECTION_ID.match(cid):
            raise BundleNotFound(f"no collection {cid!r}")
        path = self.out_dir / cid
        manifest_path = path / MANIFEST
        try:
            stamp = manifest_path.stat().st_mtime_ns
        except OSError:
            raise BundleNotFound(f"no collection {cid!r}") from None
        with self._lock:
            cached = self._cache.get(cid)
            if cached and cached[0] == stamp:
                return cached[1]
        manifest, version = open_manifest(path)
        log.info("opened bundle %s (%s items) in process %d", cid,
                 manifest.get("counts", {}).get("items"), os.getpid())
        bundle = Bundle(cid=cid, path=path, manifest=manifest, version=version,
                        exact_max=self.exact_max)
        with self._lock:
            self._cache[cid] = (stamp, bundle)
        return bundle

