"""The resumable decode pass: every input decoded once, cells and pixel vectors kept.

Work files live in ``<bundle>/cache/decode-work/`` and are indexed by input
position. Progress is checkpointed after each chunk (data flushed first, then
the status array replaced atomically), so a killed run redoes at most one chunk.
At the end the survivors are compacted into dense item order.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvips

from mosaic.bundle import RowFile
from mosaic.errors import ImageError
from mosaic.pipeline.embed import RAW_SIDE, EmbeddingSpec, Vgg16Embedder
from mosaic.pipeline.store import save_npy_atomic, write_json_atomic
from mosaic.pipeline.thumbnail import decode_many, raw_vector

CHUNK = 256
VGG_BATCH = 32
TODO, DONE, FAILED = 0, 1, 2


@dataclass
class DecodeOptions:
    cell_size: int
    fit: str
    background: tuple[int, int, int]
    max_pixels: int
    jobs: int
    weights: str


def pixel_dims(specs: list[EmbeddingSpec]) -> dict[str, int]:
    """Vector length of each pixel-based embedding."""
    return {s.name: (Vgg16Embedder.dim if s.kind == "vgg16" else RAW_SIDE * RAW_SIDE * 3)
            for s in specs if s.from_pixels}


def run_decode(
    paths: list[str],
    specs: list[EmbeddingSpec],
    options: DecodeOptions,
    work: Path,
    key: str,
    progress=None,
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Decode all inputs (resuming from ``work`` if its key matches).

    Returns (status int8 per input, sizes int64 (n, 2), failure reasons by input).
    Cells and vectors stay in ``work`` until ``compact`` copies them out.
    """
    state = _WorkFiles(work, key, len(paths), options.cell_size, pixel_dims(specs))
    vgg = Vgg16Embedder(options.weights) if any(s.kind == "vgg16" for s in specs) else None
    todo = np.flatnonzero(state.status == TODO)
    if vgg is not None and len(todo):
        vgg.load()
    if progress:
        progress(len(paths) - len(todo))
    decode_options = dict(cell_size=options.cell_size, fit=options.fit,
                          background=options.background, max_pixels=options.max_pixels,
                          model_size=vgg.input_size if vgg else None)
    # Parallelism comes from decoding several images at once; libvips's own
    # per-operation threads only add start-up cost on small images.
    vips_threads = pyvips.concurrency_get()
    pyvips.concurrency_set(1)
    try:
        with ThreadPoolExecutor(max_workers=options.jobs) as executor:
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start:start + CHUNK].tolist()
                batch = []
                for index, result in decode_many(paths, chunk, executor, **decode_options):
                    if state.record(index, result) and vgg is not None:
                        batch.append((index, result.model_input))
                    if vgg is not None and (len(batch) == VGG_BATCH or index == chunk[-1]):
                        state.record_vgg(batch, vgg)
                        batch = []
                state.checkpoint()
                if progress:
                    progress(len(chunk))
    finally:
        pyvips.concurrency_set(vips_threads)
        state.close()
    return state.status, state.sizes, state.failures


class _WorkFiles:
    """The decode pass's resumable state in ``work``: row files plus progress arrays."""

    def __init__(self, work: Path, key: str, n: int, cell_size: int, dims: dict[str, int]):
        c = cell_size
        shapes = {"cells.u8": ((n, c, c, 3), np.uint8),
                  **{f"{name}.f32": ((n, dim), np.float32) for name, dim in dims.items()}}
        self.work = work
        if not self._resumable(key, shapes, n):
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            (work / "key").write_text(key)
        self.cells = RowFile(work / "cells.u8", *shapes["cells.u8"], writable=True)
        self.vectors = {name: RowFile(work / f"{name}.f32", *shapes[f"{name}.f32"],
                                      writable=True) for name in dims}
        self.status = _load(work / "status.npy", np.zeros(n, dtype=np.int8))
        self.sizes = _load(work / "sizes.npy", np.zeros((n, 2), dtype=np.int64))
        stored = json.loads(_read_text(work / "failures.json") or "{}")
        self.failures = {int(k): v for k, v in stored.items()}

    def _resumable(self, key: str, shapes: dict, n: int) -> bool:
        """True if ``work`` holds this key's progress intact; anything torn starts over."""
        if _read_text(self.work / "key") != key:
            return False
        for name, (shape, dtype) in shapes.items():
            expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            path = self.work / name
            if path.exists() and path.stat().st_size != expected:
                return False
            if not path.exists() and (self.work / "status.npy").exists():
                return False
        try:
            json.loads(_read_text(self.work / "failures.json") or "{}")
            np.load(self.work / "status.npy") if (self.work / "status.npy").exists() else None
        except (ValueError, OSError, EOFError):
            return False
        return True

    def record(self, index: int, result) -> bool:
        """Store one decode result; True if it succeeded."""
        if isinstance(result, ImageError):
            self.status[index], self.failures[index] = FAILED, str(result)
            return False
        self.cells.write_row(index, result.cell)
        self.sizes[index] = (result.width, result.height)
        if "raw" in self.vectors:
            self.vectors["raw"].write_row(index, raw_vector(result.cell))
        self.status[index] = DONE
        return True

    def record_vgg(self, batch: list[tuple[int, np.ndarray]], vgg: Vgg16Embedder) -> None:
        if batch:
            embedded = vgg.embed(np.stack([model_input for _, model_input in batch]))
            for (index, _), vector in zip(batch, embedded):
                self.vectors["vgg16"].write_row(index, vector)

    def checkpoint(self) -> None:
        """Flush the data, then mark it done: a crash before this redoes the chunk."""
        self.cells.flush()
        for array in self.vectors.values():
            array.flush()
        write_json_atomic(self.work / "failures.json",
                          {str(k): v for k, v in self.failures.items()})
        save_npy_atomic(self.work / "sizes.npy", self.sizes)
        save_npy_atomic(self.work / "status.npy", self.status)  # last: marks the chunk done

    def close(self) -> None:
        for array in (self.cells, *self.vectors.values()):
            array.close()


def compact(work: Path, kept: np.ndarray, cells_path: Path, vector_paths: dict[str, Path],
            n_inputs: int, cell_size: int, dims: dict[str, int]) -> None:
    """Copy the kept inputs' cells and vectors, in order, into the bundle files."""
    c = cell_size
    _copy_rows(RowFile(work / "cells.u8", (n_inputs, c, c, 3), np.uint8), kept, cells_path,
               raw=True)
    for name, path in vector_paths.items():
        source = RowFile(work / f"{name}.f32", (n_inputs, dims[name]), np.float32)
        _copy_rows(source, kept, path, raw=False)


def _copy_rows(source: RowFile, rows: np.ndarray, path: Path, raw: bool) -> None:
    """Write ``source``'s ``rows`` to ``path`` (raw bytes or .npy), via a temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        if not raw:
            header = {"descr": np.lib.format.dtype_to_descr(source.dtype),
                      "fortran_order": False, "shape": (len(rows), *source.row_shape)}
            np.lib.format.write_array_header_1_0(handle, header)
        for start in range(0, len(rows), 256):
            handle.write(source.read_rows(rows[start:start + 256]).data)
        handle.flush()
        os.fsync(handle.fileno())
    source.close()
    tmp.replace(path)


def _load(path: Path, default: np.ndarray) -> np.ndarray:
    try:
        array = np.load(path)
    except (OSError, ValueError):
        return default
    return array if array.shape == default.shape else default


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
