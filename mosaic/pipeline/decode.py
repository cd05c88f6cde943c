"""The resumable decode pass: every input decoded once, cells and pixel vectors kept.

Work files live in ``<bundle>/cache/decode-work/`` and are indexed by input
position. Cells are never stored uncompressed: each chunk's cells are encoded
(``mosaic.bundle.encode_cell``, JPEG) in the decode threads and written as one
segment file, ``cells-<n>.seg``, atomically (temp file, fsync, rename) before
the chunk's checkpoint (vectors flushed, then the status array replaced
atomically). A killed run therefore redoes at most one chunk; a segment that is
torn or was never checkpointed is dropped and its inputs are decoded again.
At the end ``compact`` writes the survivors in dense item order: the bundle's
``cells.pack`` and ``cells.idx`` from the segments, and one ``.npy`` per pixel
embedding from the vector work files.

The vector work files (``<name>.f32``, raw float32 ``(n_inputs, dim)``) are
still uncompressed and N-sized: 3 KB per input for ``raw``, 16 KB for
``vgg16``; the bundle keeps the same vectors as ``embeddings/<name>.npy``.

A segment is ``count`` (uint64), the ``count`` input indices (int64), ``count
+ 1`` offsets (uint64, from the start of the data), then the encoded cells;
all little-endian.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvips

from mosaic.bundle import RowFile, encode_cell
from mosaic.errors import ImageError, MosaicError
from mosaic.pipeline.embed import RAW_SIDE, EmbeddingSpec, Vgg16Embedder
from mosaic.pipeline.store import save_npy_atomic, write_json_atomic
from mosaic.pipeline.thumbnail import decode_many, raw_vector

CHUNK = 256
VGG_BATCH = 32
TODO, DONE, FAILED = 0, 1, 2
_SEGMENT = re.compile(r"^cells-(\d{6})\.seg$")
_COPY_BYTES = 8 << 20  # compaction copies at most this much per pread


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
    Encoded cells and vectors stay in ``work`` until ``compact`` copies them out.
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
                batch, encoding = [], []
                for index, result in decode_many(paths, chunk, executor, **decode_options):
                    if state.record(index, result):
                        # encoded on the pool's threads (PIL releases the GIL), in input order
                        encoding.append((index, executor.submit(encode_cell, result.cell)))
                        if vgg is not None:
                            batch.append((index, result.model_input))
                    if vgg is not None and (len(batch) == VGG_BATCH or index == chunk[-1]):
                        state.record_vgg(batch, vgg)
                        batch = []
                state.checkpoint([(index, future.result()) for index, future in encoding])
                if progress:
                    progress(len(chunk))
    finally:
        pyvips.concurrency_set(vips_threads)
        state.close()
    return state.status, state.sizes, state.failures


class _WorkFiles:
    """The decode pass's resumable state in ``work``: cell segments, vector row files
    and progress arrays."""

    def __init__(self, work: Path, key: str, n: int, cell_size: int, dims: dict[str, int]):
        shapes = {f"{name}.f32": ((n, dim), np.float32) for name, dim in dims.items()}
        self.work = work
        if not self._resumable(key, shapes, n):
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            (work / "key").write_text(key)
        self.vectors = {name: RowFile(work / f"{name}.f32", *shapes[f"{name}.f32"],
                                      writable=True) for name in dims}
        self.status = _load(work / "status.npy", np.zeros(n, dtype=np.int8))
        self.sizes = _load(work / "sizes.npy", np.zeros((n, 2), dtype=np.int64))
        stored = json.loads(_read_text(work / "failures.json") or "{}")
        self.failures = {int(k): v for k, v in stored.items()}
        self.segments = _Segments(work, n)
        self.segments.reconcile(self.status)

    def _resumable(self, key: str, shapes: dict, n: int) -> bool:
        """True if ``work`` holds this key's progress intact; anything torn starts over.

        (A torn cell segment only redoes its own chunk: see ``_Segments.reconcile``.)
        """
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
        """Store one decode result (its cell is encoded and kept by ``checkpoint``);
        True if it succeeded."""
        if isinstance(result, ImageError):
            self.status[index], self.failures[index] = FAILED, str(result)
            return False
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

    def checkpoint(self, encoded: list[tuple[int, bytes]]) -> None:
        """Write the chunk's cells and flush its vectors, then mark it done: a crash
        before the status is replaced redoes the chunk."""
        self.segments.write(encoded)
        for array in self.vectors.values():
            array.flush()
        write_json_atomic(self.work / "failures.json",
                          {str(k): v for k, v in self.failures.items()})
        save_npy_atomic(self.work / "sizes.npy", self.sizes)
        save_npy_atomic(self.work / "status.npy", self.status)  # last: marks the chunk done

    def close(self) -> None:
        for array in self.vectors.values():
            array.close()


class _Segments:
    """Where each input's encoded cell is: (segment, byte offset, length), by input index.

    Three small arrays of n entries (16 bytes per input); the cells stay on disk.
    """

    def __init__(self, work: Path, n: int):
        self.work = work
        self.paths: dict[int, Path] = {}
        self.segment = np.full(n, -1, dtype=np.int32)
        self.start = np.zeros(n, dtype=np.int64)
        self.length = np.zeros(n, dtype=np.int32)
        for path in sorted(work.glob("cells-*.seg")):
            match = _SEGMENT.match(path.name)
            parsed = _read_segment(path, n) if match else None
            if parsed is None:  # torn or foreign: its inputs are decoded again
                path.unlink(missing_ok=True)
                continue
            number, (indices, starts, lengths) = int(match.group(1)), parsed
            self.paths[number] = path
            # a later segment wins: it redid inputs an unfinished checkpoint left behind
            self.segment[indices], self.start[indices] = number, starts
            self.length[indices] = lengths

    def reconcile(self, status: np.ndarray) -> None:
        """Make the status and the segments agree: an input marked done without a stored
        cell is decoded again, and segments that no done input points to are deleted."""
        status[(status == DONE) & (self.segment < 0)] = TODO
        self.segment[status != DONE] = -1
        used = set(np.unique(self.segment[self.segment >= 0]).tolist())
        for number in [k for k in self.paths if k not in used]:
            self.paths.pop(number).unlink(missing_ok=True)

    def write(self, encoded: list[tuple[int, bytes]]) -> None:
        """One segment for one chunk's cells, written atomically."""
        if not encoded:
            return
        number = max(self.paths, default=-1) + 1
        path = self.work / f"cells-{number:06d}.seg"
        indices = np.array([index for index, _ in encoded], dtype="<i8")
        lengths = np.array([len(data) for _, data in encoded], dtype=np.int64)
        offsets = np.zeros(len(encoded) + 1, dtype="<u8")
        offsets[1:] = np.cumsum(lengths)
        header = np.array([len(encoded)], dtype="<u8").tobytes() + indices.tobytes() \
            + offsets.tobytes()
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(header)
            for _, data in encoded:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        self.paths[number] = path
        self.segment[indices] = number
        self.start[indices] = len(header) + offsets[:-1].astype(np.int64)
        self.length[indices] = lengths


def _read_segment(path: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(input indices, absolute starts, lengths) of a segment, or None if it is not whole."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            count = int(np.frombuffer(handle.read(8), dtype="<u8")[0])
            header = 8 + 8 * count + 8 * (count + 1)
            if count < 1 or size < header:
                return None
            indices = np.frombuffer(handle.read(8 * count), dtype="<i8").astype(np.int64)
            offsets = np.frombuffer(handle.read(8 * (count + 1)), dtype="<u8").astype(np.int64)
    except (OSError, IndexError, ValueError):
        return None
    lengths = np.diff(offsets)
    if (offsets[0] != 0 or header + offsets[-1] != size or (lengths <= 0).any()
            or indices.min() < 0 or indices.max() >= n):
        return None
    return indices, header + offsets[:-1], lengths


def compact(work: Path, kept: np.ndarray, pack_path: Path, index_path: Path,
            vector_paths: dict[str, Path], n_inputs: int, dims: dict[str, int]) -> None:
    """Write the kept inputs' cells and vectors, in order (item id i = ``kept[i]``), into
    the bundle: ``pack_path`` + ``index_path`` (docs/bundle.md) and one .npy per vector."""
    segments = _Segments(work, n_inputs)
    if (segments.segment[kept] < 0).any():
        raise MosaicError(f"decode work in {work} has no cell for some decoded inputs")
    _write_pack(segments, np.asarray(kept, dtype=np.int64), pack_path, index_path)
    for name, path in vector_paths.items():
        source = RowFile(work / f"{name}.f32", (n_inputs, dims[name]), np.float32)
        _copy_rows(source, kept, path)


def _write_pack(segments: _Segments, kept: np.ndarray, pack_path: Path,
                index_path: Path) -> None:
    """Copy the cells of ``kept`` from the segments, as they are, into a new pack + index.

    Cells that lie back to back in one segment (a chunk's inputs, the usual case)
    are copied with one pread of up to 8 MB.
    """
    segment, start = segments.segment[kept], segments.start[kept]
    length = segments.length[kept].astype(np.int64)
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])
    follows = (segment[1:] == segment[:-1]) & (start[1:] == start[:-1] + length[:-1])
    breaks = np.flatnonzero(~follows) + 1
    runs = np.split(np.arange(len(kept)), breaks) if len(kept) else []
    descriptors: dict[int, int] = {}
    pack_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pack_path.with_name(f".{pack_path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            for run in runs:
                number = int(segment[run[0]])
                if number not in descriptors:
                    descriptors[number] = os.open(segments.paths[number], os.O_RDONLY)
                position, stop = int(start[run[0]]), int(start[run[-1]] + length[run[-1]])
                while position < stop:
                    data = os.pread(descriptors[number], min(_COPY_BYTES, stop - position),
                                    position)
                    if not data:
                        raise MosaicError(f"{segments.paths[number]} is shorter than it says")
                    handle.write(data)
                    position += len(data)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        for descriptor in descriptors.values():
            os.close(descriptor)
    index_tmp = index_path.with_name(f".{index_path.name}.tmp")
    with open(index_tmp, "wb") as handle:
        handle.write(offsets.astype("<u8").tobytes())
        handle.flush()
        os.fsync(handle.fileno())
    index_tmp.replace(index_path)
    tmp.replace(pack_path)


def write_cells(cells, pack_path: Path, index_path: Path) -> None:
    """Encode uint8 (c, c, 3) ``cells`` (any iterable, in id order) into a new pack + index.

    For bundles made without the decode pass (bench/synth_bundle.py, tests).
    """
    lengths = []
    tmp = pack_path.with_name(f".{pack_path.name}.tmp")
    with open(tmp, "wb") as handle:
        for cell in cells:
            data = encode_cell(cell)
            handle.write(data)
            lengths.append(len(data))
        handle.flush()
        os.fsync(handle.fileno())
    offsets = np.zeros(len(lengths) + 1, dtype="<u8")
    offsets[1:] = np.cumsum(lengths)
    offsets.tofile(index_path)
    tmp.replace(pack_path)


def _copy_rows(source: RowFile, rows: np.ndarray, path: Path) -> None:
    """Write ``source``'s ``rows`` to ``path`` as .npy, via a temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
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
