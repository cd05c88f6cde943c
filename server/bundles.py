"""Read-only access to the bundles under the output folder (see docs/bundle.md).

A bundle's read model (``mosaic.bundle.Bundle``) is opened once per worker process
and cached by the app as a ``ServedBundle``; its arrays are memory-mapped and its
annoy indexes are loaded on first use. A bundle is reopened when its
``manifest.json`` changes (a rebuild or a new generation).
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

from mosaic.bundle import COLLECTION_ID, MANIFEST, Bundle, Embedding, Layout, PackedCells
from mosaic.errors import BundleError, BundleNotFound
from server.neighbors import NeighborIndex

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ServedBundle:
    """One bundle as a server worker holds it: its read model (``mosaic.bundle.Bundle``)
    and what the worker opens once and shares between its threads (positions, cells,
    neighbour indexes)."""

    cid: str
    model: Bundle
    exact_max: int

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._indexes: dict[str, NeighborIndex] = {}
        self._positions: dict[str, np.ndarray] = {}

    @property
    def path(self) -> Path:
        return self.model.path

    @property
    def version(self) -> str:
        """The manifest's digest: it changes with every build and generation."""
        return self.model.digest

    @property
    def n_items(self) -> int:
        return self.model.counts.items

    @property
    def title(self) -> str:
        return self.model.title

    @property
    def columns(self) -> list[dict]:
        return self.model.columns

    @property
    def embedding_names(self) -> list[str]:
        return self.model.embedding_names

    @property
    def layouts(self) -> tuple[Layout, ...]:
        """The layouts, similarity first."""
        return self.model.layouts

    def layout_by_slug(self, slug: str) -> Layout | None:
        return self.model.layout_by_slug(slug)

    def embedding(self, name: str | None) -> Embedding | None:
        return self.model.embedding(name)

    def layout_positions(self, layout: Layout) -> np.ndarray:
        """A layout's (N, 2) positions, memory-mapped once per worker."""
        with self._lock:
            positions = self._positions.get(layout.name)
            if positions is None:
                positions = layout.read_positions(self.path, mmap=True)
                self._positions[layout.name] = positions
            return positions

    @cached_property
    def removed(self) -> np.ndarray:
        """The ids ``run.py remove`` took out (``Bundle.removed_ids``), sorted."""
        return self.model.removed_ids()

    def is_removed(self, item_id: int) -> bool:
        index = int(np.searchsorted(self.removed, item_id))
        return index < len(self.removed) and int(self.removed[index]) == item_id

    @cached_property
    def cells(self) -> PackedCells:
        """uint8 ``(N, cell_size, cell_size, 3)``, read a cell at a time (nothing resident);
        ``read_encoded(id)`` gives a cell's stored JPEG bytes."""
        return self.model.open_cells()

    def connect(self) -> sqlite3.Connection:
        """A new read-only connection to ``metadata.sqlite`` (one per request)."""
        conn = self.model.connect()
        conn.row_factory = sqlite3.Row
        return conn

    def neighbor_index(self, name: str) -> NeighborIndex:
        """The index of one embedding, opened once and shared by this worker's threads."""
        with self._lock:
            index = self._indexes.get(name)
            if index is None:
                spec = self.embedding(name)
                if spec is None:
                    raise KeyError(name)
                exact = self.n_items * spec.dim <= self.exact_max
                index = NeighborIndex(self.path, spec, exact=exact, removed=self.removed)
                self._indexes[name] = index
            return index


class BundleRegistry:
    """The bundles under one output folder, each opened once per process."""

    def __init__(self, out_dir: str | Path, exact_max: int = 5_000_000) -> None:
        self.out_dir = Path(out_dir).resolve()  # send_from_directory needs absolute folders
        self.exact_max = exact_max
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, ServedBundle]] = {}

    def list(self) -> list[ServedBundle]:
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

    def get(self, cid: str) -> ServedBundle:
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
        model = Bundle.open(path)
        log.info("opened bundle %s (%s items) in process %d", cid, model.counts.items,
                 os.getpid())
        bundle = ServedBundle(cid=cid, model=model, exact_max=self.exact_max)
        with self._lock:
            self._cache[cid] = (stamp, bundle)
        return bundle

