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

from mosaic.bundle import RowFile, save_npy_atomic, write_json_atomic
from mosaic.embed import RAW_SIDE, EmbeddingSpec, Vgg16Embedder
from mosaic.errors import ImageError
from mosaic.thumbnail import decode_many, raw_vector

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
    if _read_text(work / "key") != key:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "key").write_text(key)
    n = len(paths)
    c = options.cell_size
    cells = RowFile(work / "cells.u8", (n, c, c, 3), np.uint8, writable=True)
    dims = pixel_dims(specs)
    vectors = {name: RowFile(work / f"{name}.f32", (n, dim), np.float32, writable=True)
               for name, dim in dims.items()}
    status = _load(work / "status.npy", np.zeros(n, dtype=np.int8))
    sizes = _load(work / "sizes.npy", np.zeros((n, 2), dtype=np.int64))
    stored_failures = json.loads(_read_text(work / "failures.json") or "{}")
    failures = {int(k): v for k, v in stored_failures.items()}
    vgg = Vgg16Embedder(options.weights) if any(s.kind == "vgg16" for s in specs) else None
    if vgg is not None and (status == TODO).any():
        vgg.load()
    if progress:
        progress(int((status != TODO).sum()))
    todo = np.flatnonzero(status == TODO)
    decode_options = dict(cell_size=c, fit=options.fit, background=options.background,
                          max_pixels=options.max_pixels,
                          model_size=vgg.input_size if vgg else None)
    with ThreadPoolExecutor(max_workers=options.jobs) as executor:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK].tolist()
            batch_ids, batch_inputs = [], []
            for index, result in decode_many(paths, chunk, executor, **decode_options):
                if isinstance(result, ImageError):
                    status[index], failures[index] = FAILED, str(result)
                    continue
                cells.write_row(index, result.cell)
                sizes[index] = (result.width, result.height)
                if "raw" in vectors:
                    vectors["raw"].write_row(index, raw_vector(result.cell))
                if vgg is not None:
                    batch_ids.append(index)
                    batch_inputs.append(result.model_input)
                    if len(batch_ids) == VGG_BATCH:
                        _write_rows(vectors["vgg16"], batch_ids, vgg.embed(np.stack(batch_inputs)))
                        batch_ids, batch_inputs = [], []
                status[index] = DONE
            if batch_ids:
                _write_rows(vectors["vgg16"], batch_ids, vgg.embed(np.stack(batch_inputs)))
            _checkpoint(work, cells, vectors, status, sizes, failures)
            if progress:
                progress(len(chunk))
    for array in (cells, *vectors.values()):
        array.close()
    return status, sizes, failures


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
        for start in range(0, len(rows), 1024):
            handle.write(source.read_rows(rows[start:start + 1024]).tobytes())
        handle.flush()
        os.fsync(handle.fileno())
    source.close()
    tmp.replace(path)


def _write_rows(target: RowFile, rows: list[int], values: np.ndarray) -> None:
    for row, value in zip(rows, values):
        target.write_row(row, value)


def _checkpoint(work, cells, vectors, status, sizes, failures) -> None:
    cells.flush()
    for array in vectors.values():
        array.flush()
    write_json_atomic(work / "failures.json", {str(k): v for k, v in failures.items()})
    save_npy_atomic(work / "sizes.npy", sizes)
    save_npy_atomic(work / "status.npy", status)  # last: it marks the chunk done


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
