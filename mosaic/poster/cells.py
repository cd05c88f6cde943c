"""Cells at print size: the bundle's stored thumbnails, or the source images.

When a print cell is no larger than the stored ``cell_size``, stored cells are
shrunk (Lanczos-3, each on its own). When it is larger, each source image is
decoded again at the print size (``items.source`` in ``metadata.sqlite``), so
a 12 x 12 montage on A2 is sharp rather than a 128-px thumbnail blown up; a
source that is missing or no longer decodes falls back to the stored cell,
upscaled, with a warning.

Stored cells are read from the bundle's cell pack with ``os.pread`` and decoded
(``mosaic.bundle.PackedCells``) rather than memory-mapped, so a poster of a
100k-item bundle never has its cells resident.
:meth:`CellFetcher.prepare` reads them in id order (runs of neighbours in one
call: a sequential scan, several times faster than a grid row's scattered
reads), resizes them, and writes them to a small work file that the montage
rows then pick from (with ``preadv`` too).
"""

from __future__ import annotations

import logging
import os
from contextlib import closing
from pathlib import Path

import numpy as np

from mosaic.bundle import Bundle, PackedCells, RowFile
from mosaic.errors import ImageError
from mosaic.poster.render import resize_cells

log = logging.getLogger(__name__)
_PREPARE_BATCH = 256


class CellFetcher:
    """``fetch(ids) -> uint8 (k, cell_px, cell_px, 3)`` for a bundle; use as a context manager."""

    def __init__(self, bundle: Bundle, cell_px: int, sources: bool = True,
                 background: tuple[int, int, int] | None = None):
        self.bundle = bundle
        self.n_items, self.stored_px = bundle.counts.items, bundle.grid.cell_size
        self.cell_px = int(cell_px)
        self.use_sources = bool(sources) and self.cell_px > self.stored_px
        self.fit = bundle.fit
        # Sources decoded afresh are letterboxed on the poster's own background.
        self.background = background or bundle.background
        self.counts = {"stored": 0, "from_source": 0, "missing_source": 0}
        self.missing: list[str] = []
        self._cells: PackedCells | None = None
        self._sources: dict[int, str] | None = None
        self._order: np.ndarray | None = None
        self._resized: Path | None = None
        self._resized_cells: RowFile | None = None

    def __enter__(self) -> CellFetcher:
        self._cells = self.bundle.open_cells()
        return self

    def __exit__(self, *exc) -> None:
        for cells in (self._cells, self._resized_cells):
            if cells is not None:
                cells.close()
        self._cells = self._resized_cells = None

    def prepare(self, ids: np.ndarray, work_dir: Path) -> None:
        """Resize the stored cells of ``ids`` in one id-ordered pass into ``work_dir``.

        Does nothing when source images will be decoded or no resizing is needed.
        """
        if self.use_sources or self.cell_px == self.stored_px:
            return
        order = np.unique(np.asarray(ids, dtype=np.int64))
        path = Path(work_dir) / "cells.resized"
        os.posix_fadvise(self._cells.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        with open(path, "wb") as handle:
            for start in range(0, len(order), _PREPARE_BATCH):
                stored = self.read_stored(order[start:start + _PREPARE_BATCH])
                handle.write(resize_cells(stored, self.cell_px).data)
        self._order = order
        self._resized = path
        self._resized_cells = RowFile(path, (len(order), self.cell_px, self.cell_px, 3),
                                      np.uint8)

    def read_stored(self, ids: np.ndarray) -> np.ndarray:
        """The stored cells of ``ids`` as uint8 (k, c, c, 3)."""
        return self._cells.read_rows(ids)

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """Cells of ``ids`` at ``cell_px``."""
        if not self.use_sources:
            self.counts["stored"] += len(ids)
            if self._resized_cells is not None:
                return self._resized_cells.read_rows(np.searchsorted(self._order, ids))
            return resize_cells(self.read_stored(ids), self.cell_px)
        # Decoding the sources again is the pipeline's decoder: only the CLI's posters ask.
        from mosaic.pipeline.thumbnail import decode_image

        sources = self._source_paths()
        out = np.empty((len(ids), self.cell_px, self.cell_px, 3), dtype=np.uint8)
        for k, item in enumerate(ids):
            try:
                out[k] = decode_image(sources[int(item)], self.cell_px, fit=self.fit,
                                      background=self.background).cell
                self.counts["from_source"] += 1
            except (ImageError, OSError, KeyError) as error:
                self.counts["missing_source"] += 1
                self.missing.append(f"{sources.get(int(item), item)}: {error}")
                out[k] = resize_cells(self.read_stored([item]), self.cell_px)[0]
        return out

    def _source_paths(self) -> dict[int, str]:
        if self._sources is None:
            with closing(self.bundle.connect()) as conn:
                self._sources = dict(conn.execute("SELECT id, source FROM items"))
        return self._sources

    def summary(self) -> dict:
        """Where the cells came from: counts, sizes and the first missing sources."""
        return {"stored_px": self.stored_px, "print_px": self.cell_px, **self.counts,
                "missing_examples": self.missing[:5]}

    def warnings(self) -> list[str]:
        """One line per problem, for the log and the items record."""
        if not self.counts["missing_source"]:
            return []
        message = (
            f"{self.counts['missing_source']} source image(s) could not be read again; "
            f"their stored {self.stored_px}-px cells were upscaled to {self.cell_px} px "
            f"(first: {self.missing[0]})"
        )
        log.warning(message)
        return [message]
