"""The resumable decode pass: every input decoded once, in worker processes.

The inputs are cut into fixed chunks of ``CHUNK`` consecutive input indices.
Each chunk is one task, ``decode_chunk``, run in a worker process: a local
process pool (``--jobs``), or the workers of a Dask cluster (``--dask``),
through the same ``concurrent.futures`` interface. A task decodes its images,
makes each cell, encodes it (``mosaic.bundle.encode_cell``, JPEG), computes the
pixel embeddings (``pixels`` and ``raw``, vectorised over the chunk; ``vgg16`` in
batches, on the worker's GPU if it has one) and returns everything as a few
arrays. Workers never write: the orchestrator's process is the only writer. It
stores each finished chunk as one file, ``chunk-<k>.npz``, atomically (temp
file, fsync, rename), in any order. A killed run therefore loses only the
chunks in flight; on resume a chunk file that is torn or does not match its
chunk is decoded again.

At the end ``compact`` reads the chunk files in order and writes the survivors
in dense item order: the bundle's ``cells.pack`` and ``cells.idx`` and one
``.npy`` per pixel embedding. Nothing uncompressed and N-sized is ever written:
cells are JPEG, ``pixels`` and ``raw`` vectors are int8 and uint8 (768 B per
item each) and ``vgg16`` vectors float16.

A chunk file holds ``indices`` (int64, the chunk's inputs), ``status`` (int8,
``DONE`` or ``FAILED``), ``sizes`` (int64 (n, 2), width and height),
``reasons`` (UTF-8 JSON list, "" for a decoded input), ``offsets`` (uint64,
``n_done + 1``) and ``cells`` (the encoded cells back to back), and
``vectors-<name>`` (``n_done`` rows) per pixel embedding.

``embed_query`` runs the same decode and vector code on one image outside any
bundle (``run.py similar`` and the server's ``similar`` route): the pipeline's
code in one place, so a query lands where the pipeline would have put it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import os
import shutil
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from zipfile import BadZipFile

import numpy as np
import pyvips

from mosaic.bundle import Bundle, Embedding, encode_cell
from mosaic.errors import ImageError, MosaicError, UsageError
from mosaic.pipeline import thumbnail
from mosaic.pipeline.embed import (
    MODEL_KINDS,
    PIXEL_KINDS,
    PIXELS_SIDE,
    VECTOR_DTYPES,
    VGG_INPUT_SIZE,
    ClipEmbedder,
    Vgg16Embedder,
    pixel_dims,
    pixels_vectors,
)

logger = logging.getLogger(__name__)

CHUNK = 256
VGG_BATCH = 32
TODO, DONE, FAILED = 0, 1, 2
# Chunks submitted ahead of the one being stored, per worker: keeps workers busy
# while bounding what waits in memory (a chunk's result is ~1.5 MB at 128 px).
AHEAD_PER_WORKER = 2
_COPY_ROWS = 256


@dataclass(frozen=True)
class DecodeOptions:
    """What a worker needs to turn one image into its cell and pixel vectors."""

    cell_size: int
    fit: str
    background: tuple[int, int, int]
    max_pixels: int
    weights: str = "none"  # --weights, for vgg16 and clip (embed.clip_weights)
    kinds: tuple[str, ...] = ()  # the pixel embeddings: "pixels", "raw", "vgg16", "clip"


@dataclass(frozen=True)
class ChunkTask:
    number: int
    indices: tuple[int, ...]
    paths: tuple[str, ...]
    options: DecodeOptions


@dataclass
class DecodeSummary:
    """Per input: status (TODO/DONE/FAILED), source size, and the reason of each failure."""

    status: np.ndarray
    sizes: np.ndarray
    failures: dict[int, str] = field(default_factory=dict)


# -- the worker side -----------------------------------------------------------


# One model per process and (kind, weights), built on first use: a worker's VGG16 or
# CLIP image tower, a server worker's CLIP text tower.
_MODELS: dict[tuple[str, str], Vgg16Embedder | ClipEmbedder] = {}
_MODELS_LOCK = threading.Lock()


def decode_chunk(task: ChunkTask) -> dict[str, np.ndarray]:
    """Decode one chunk's images (in a worker); the arrays of its chunk file."""
    _quiet_vips()
    options = task.options
    models = _models(options)
    n = len(task.indices)
    status = np.full(n, FAILED, dtype=np.int8)
    sizes = np.zeros((n, 2), dtype=np.int64)
    reasons = [""] * n
    cells: list[bytes] = []
    inputs: list[dict[str, np.ndarray]] = []
    read_ahead(task.paths)
    for position, path in enumerate(task.paths):
        try:
            image = decode_one(path, options)
        except ImageError as error:
            reasons[position] = str(error)
            continue
        status[position] = DONE
        sizes[position] = (image.width, image.height)
        cells.append(encode_cell(image.cell))
        inputs.append(vector_inputs(image, options.kinds))
    offsets = np.zeros(len(cells) + 1, dtype="<u8")
    offsets[1:] = np.cumsum([len(c) for c in cells])
    arrays = {"indices": np.asarray(task.indices, dtype="<i8"), "status": status,
              "sizes": sizes.astype("<i8"), "reasons": _text_array(json.dumps(reasons)),
              "offsets": offsets, "cells": np.frombuffer(b"".join(cells), dtype=np.uint8)}
    for kind, vectors in image_vectors(inputs, options.kinds, models).items():
        arrays[f"vectors-{kind}"] = vectors
    return arrays


def read_ahead(paths: Iterable[str]) -> None:
    """Ask the kernel to start reading these files now (``POSIX_FADV_WILLNEED``), so that
    while one picture decodes the next ones are already on their way from the disk: a
    worker reading files one at a time waits for each. No effect where the call is
    missing, for anything but a regular file, and where a path cannot be opened (its
    decode then says why). Opened without blocking: a FIFO among the inputs would
    otherwise wait here for a writer."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def decode_one(source: str | bytes, options: DecodeOptions) -> thumbnail.DecodedImage:
    """One image's cell, and the model input and picture its pixel embeddings need.

    The decode asks for what every one of ``options.kinds`` needs (``vgg16``'s and
    ``clip``'s input size widens the box the picture is shrunk into), so the cell and
    vectors depend on the bundle's whole set of kinds: a query must pass the same set
    as the pipeline did. ImageError for any failure: one file's failure is recorded, never fatal.
    """
    try:
        return thumbnail.decode_image(
            source, cell_size=options.cell_size, fit=options.fit,
            background=options.background, max_pixels=options.max_pixels,
            model_size=VGG_INPUT_SIZE if set(MODEL_KINDS) & set(options.kinds) else None,
            picture_side=PIXELS_SIDE if "pixels" in options.kinds else None)
    except ImageError:
        raise
    except Exception as error:
        raise ImageError(f"{type(error).__name__}: {error}"[:300]) from None


def vector_inputs(image: thumbnail.DecodedImage, kinds: tuple[str, ...]
                  ) -> dict[str, np.ndarray]:
    """What each pixel embedding among ``kinds`` needs of one decoded image: ``raw``'s
    vector itself (a chunk then keeps no cell, only its JPEG), ``pixels``' picture,
    ``vgg16``'s and ``clip``'s model input; ``image_vectors`` turns a list of them into
    vectors."""
    inputs = {}
    if "raw" in kinds:
        inputs["raw"] = thumbnail.raw_vector(image.cell)
    if "pixels" in kinds:
        inputs["pixels"] = image.picture
    for kind in MODEL_KINDS:
        if kind in kinds:
            inputs[kind] = image.model_input
    return inputs


def image_vectors(inputs: list[dict[str, np.ndarray]], kinds: tuple[str, ...],
                  models: dict | None = None) -> dict[str, np.ndarray]:
    """``{kind: (len(inputs), dim)}`` in the bundle's stored dtype (``VECTOR_DTYPES``)
    for each pixel embedding among ``kinds``, from ``vector_inputs``: ``pixels``
    vectorised over the images, ``vgg16`` and ``clip`` (their embedder in ``models``,
    ``_models``) in batches of ``VGG_BATCH``."""
    models = models or {}
    dims = pixel_dims([kind for kind in kinds if kind != "clip"])
    if "clip" in kinds:
        dims["clip"] = models["clip"].dim
    arrays = {kind: np.empty((len(inputs), dims[kind]), VECTOR_DTYPES[kind])
              for kind in kinds if kind in dims}
    if not inputs:
        return arrays
    if "raw" in arrays:
        arrays["raw"][:] = np.stack([one["raw"] for one in inputs])
    if "pixels" in arrays:
        arrays["pixels"][:] = pixels_vectors(np.stack([one["pixels"] for one in inputs]))
    for kind in MODEL_KINDS:
        if kind not in arrays:
            continue
        for start in range(0, len(inputs), VGG_BATCH):
            batch = np.stack([one[kind] for one in inputs[start:start + VGG_BATCH]])
            arrays[kind][start:start + len(batch)] = models[kind].embed(batch)
    return arrays


def _models(options: DecodeOptions) -> dict[str, Vgg16Embedder | ClipEmbedder]:
    """The process's embedder for each model kind among ``options.kinds``."""
    return {kind: _model(kind, options.weights) for kind in MODEL_KINDS
            if kind in options.kinds}


def _model(kind: str, weights: str) -> Vgg16Embedder | ClipEmbedder:
    """The process's VGG16 or CLIP for ``weights``, built on first use and kept (one
    per process: a server's threads share it)."""
    with _MODELS_LOCK:
        model = _MODELS.get((kind, weights))
        if model is None:
            model = Vgg16Embedder(weights) if kind == "vgg16" else ClipEmbedder(weights)
            model.load()
            _MODELS[(kind, weights)] = model
    return model


def embed_text_query(text: str, bundle: Bundle, embedding: Embedding) -> np.ndarray:
    """A text's vector in one of a bundle's ``clip`` embeddings: float32 (dim,), unit
    length, from the text tower of the model that embedded the images (the embedding's
    ``weights``, loaded once per process). A search by meaning ranks the items by their
    cosine with it (the embedding's angular index).

    UsageError for an empty text or an embedding that has no text tower."""
    if embedding.kind != "clip":
        usable = [e.name for e in bundle.embeddings if e.kind == "clip"]
        raise UsageError(
            f"embedding {embedding.name!r} ({embedding.kind}) has no text tower: a search by "
            f"meaning needs a clip embedding ({', '.join(usable) or 'this bundle has none'})")
    if not text.strip():
        raise UsageError("the text to search for is empty")
    weights = embedding.weights or query_options(bundle).weights
    return _model("clip", weights).embed_text([text])[0]


def embed_query(source: str | os.PathLike | bytes, bundle: Bundle,
                embedding: Embedding) -> np.ndarray:
    """A new image's vector in one of a bundle's embeddings, as the bundle reads its own:
    float32 (dim,), times the embedding's ``scale`` (``Embedding.open_vectors``).

    The query goes through the pipeline's own decode (``decode_one`` with the bundle's
    cell size, fit, background, pixel limit and set of pixel embeddings) and vector
    code (``image_vectors``, rounded to the stored dtype): an image that is in the
    bundle gets its stored vector back and lies at distance 0 from itself, and any
    other image lands where the pipeline would have put it. ``source`` is a path or
    the file's bytes (an upload; the same pixels either way).

    UsageError, not ImageError: the query is the user's input, not a collection's
    image to skip. Also for an embedding that cannot embed a new image: the user's
    own vectors (``file:``, ``xy:``) or VGG16 with random weights (``--weights none``).
    """
    name, kind = embedding.name, embedding.kind
    if kind not in PIXEL_KINDS:
        usable = [e.name for e in bundle.embeddings if e.kind in PIXEL_KINDS]
        raise UsageError(
            f"embedding {name!r} holds vectors given to the pipeline ({kind}:PATH), so a "
            f"new image cannot be embedded in it; use an embedding computed from pixels "
            f"({', '.join(usable) or 'this bundle has none'})")
    options = query_options(bundle)
    made_by = bundle.cells.decoder
    if made_by != thumbnail.DECODER:
        logger.warning("the bundle's images were decoded by decoder %s, this program's is "
                       "%s: an image of the collection may not find itself at distance 0",
                       made_by or "1 or 2", thumbnail.DECODER)
    if kind in MODEL_KINDS:
        if kind == "vgg16" and options.weights == "none":
            raise UsageError(
                f"embedding {name!r} was built with random VGG16 weights (--weights none), "
                "which cannot be rebuilt: a new image cannot be embedded the same way")
        if kind == "vgg16" and options.weights != "imagenet" \
                and not os.path.isfile(options.weights):
            raise UsageError(
                f"embedding {name!r} needs the VGG16 weights it was built with "
                f"(--weights {options.weights}), and that is not a file here")
    label = "query image" if isinstance(source, bytes) else os.fspath(source)
    try:
        image = decode_one(source if isinstance(source, bytes) else os.fspath(source),
                           options)
    except ImageError as error:
        raise UsageError(f"{label}: {error}") from None
    models = {kind: _model(kind, options.weights)} if kind in MODEL_KINDS else None
    stored = image_vectors([vector_inputs(image, (kind,))], (kind,), models)[kind][0]
    vector = stored.astype(np.float32)
    if embedding.scale is not None:
        vector *= np.float32(embedding.scale)
    return vector


def query_options(bundle: Bundle) -> DecodeOptions:
    """The decode the pipeline ran for a bundle: the grid's cell size and fit, the run's
    background, pixel limit and weights, and its pixel embeddings."""
    parameters = bundle.parameters
    kinds = tuple(e.kind for e in bundle.embeddings if e.kind in PIXEL_KINDS)
    background = parameters.get("background") or (255, 255, 255)
    return DecodeOptions(
        cell_size=bundle.grid.cell_size, fit=bundle.fit,
        background=tuple(int(c) for c in background),
        max_pixels=int(parameters.get("max_pixels") or thumbnail.DEFAULT_MAX_PIXELS),
        weights=_query_weights(bundle, kinds), kinds=kinds)


def _query_weights(bundle: Bundle, kinds: tuple[str, ...]) -> str:
    """The run's ``--weights``; for clip alone, the preset its embedding records (an
    absolute path: the run's own may have been relative to another folder)."""
    if "clip" in kinds and "vgg16" not in kinds:
        clip = next(e for e in bundle.embeddings if e.kind == "clip")
        if clip.weights:
            return str(clip.weights)
    if set(MODEL_KINDS) & set(kinds):
        return str(bundle.parameters.get("weights") or "imagenet")
    return "none"


def _quiet_vips() -> None:
    """One libvips thread per image (the parallelism is the worker processes) and no
    operation cache (every image is seen once)."""
    if pyvips.concurrency_get() != 1:
        pyvips.concurrency_set(1)
        pyvips.cache_set_max(0)


def _local_worker_init(orchestrator: int) -> None:
    """A local worker dies with the orchestrator (a killed run leaves no orphans)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != orchestrator:  # it died while this worker was starting
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the orchestrator's to handle


# -- the orchestrator side -----------------------------------------------------


@contextmanager
def open_executor(jobs: int, dask: str | None = None) -> Iterator[tuple[Executor, int]]:
    """(executor, number of workers): a local process pool of ``jobs`` workers, or the
    Dask cluster whose scheduler is at ``dask`` (``tcp://host:8786``)."""
    if dask:
        try:
            from distributed import Client
        except ImportError:
            raise ImportError("--dask needs the distributed package: pip install "
                              "distributed") from None
        try:
            client = Client(dask, set_as_default=False, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise UsageError(f"--dask {dask}: cannot reach the scheduler ({error})") from None
        try:
            workers = max(1, sum(client.nthreads().values()))
            yield client.get_executor(), workers
        finally:
            client.close()
        return
    # spawn: a fresh interpreter per worker (no libvips threads forked mid-flight), and
    # the orchestrator is each worker's parent, so a killed run takes its workers along.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context,
                             initializer=_local_worker_init,
                             initargs=(os.getpid(),)) as executor:
        yield executor, jobs


def run_decode(paths: list[str], options: DecodeOptions, work: Path, key: str,
               executor: Executor, workers: int,
               progress: Callable[[int], None] | None = None) -> DecodeSummary:
    """Decode every input whose chunk is not yet in ``work`` (resuming if its key
    matches), storing one chunk file per chunk as its task finishes."""
    chunks = _ChunkFiles(work, len(paths))
    chunks.start(key)
    todo = [k for k in range(chunks.count) if not chunks.has(k)]
    if progress:
        progress(len(paths) - sum(len(chunks.indices(k)) for k in todo))
    pending: dict = {}
    queue = iter(todo)
    try:
        while True:
            while len(pending) < workers * AHEAD_PER_WORKER:
                number = next(queue, None)
                if number is None:
                    break
                indices = chunks.indices(number)
                # absolute: a Dask worker's working directory is not ours
                task = ChunkTask(number, tuple(indices.tolist()),
                                 tuple(os.path.abspath(paths[i]) for i in indices), options)
                pending[executor.submit(decode_chunk, task)] = number
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                number = pending.pop(future)
                chunks.write(number, future.result())
                if progress:
                    progress(len(chunks.indices(number)))
    finally:
        for future in pending:
            future.cancel()
    return chunks.summary()


class _ChunkFiles:
    """The decode pass's resumable state: ``work/key`` and one file per finished chunk."""

    def __init__(self, work: Path, n: int):
        self.work, self.n = work, n
        self.count = (n + CHUNK - 1) // CHUNK

    def start(self, key: str) -> None:
        """Keep the chunks of a run with this key (and chunk size); else start empty."""
        key = f"{key}:{CHUNK}"
        if _read_text(self.work / "key") != key:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work.mkdir(parents=True)
            (self.work / "key").write_text(key)
        for stale in self.work.glob(".*.tmp"):
            stale.unlink(missing_ok=True)

    def indices(self, number: int) -> np.ndarray:
        return np.arange(number * CHUNK, min(self.n, (number + 1) * CHUNK), dtype=np.int64)

    def path(self, number: int) -> Path:
        return self.work / f"chunk-{number:06d}.npz"

    def has(self, number: int) -> bool:
        """True if the chunk's file is whole and is this chunk's; a bad one is removed."""
        path = self.path(number)
        if not path.exists():
            return False
        if self.read(number, ("indices", "status", "offsets")) is None:
            path.unlink(missing_ok=True)
            return False
        return True

    def read(self, number: int, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
        """Those arrays of chunk ``number``'s file, or None if it is torn or foreign."""
        try:
            with np.load(self.path(number), allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in names}
                indices, status, offsets = (stored[k] for k in ("indices", "status", "offsets"))
                n_cells = len(stored["cells"]) if "cells" in names else None
        except (OSError, ValueError, KeyError, EOFError, BadZipFile):
            return None
        expected = self.indices(number)
        done = int((status == DONE).sum())
        if (not np.array_equal(indices, expected) or len(status) != len(expected)
                or len(offsets) != done + 1
                or (n_cells is not None and int(offsets[-1]) != n_cells)):
            return None
        return arrays

    def write(self, number: int, arrays: dict[str, np.ndarray]) -> None:
        path = self.path(number)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)

    def summary(self) -> DecodeSummary:
        result = DecodeSummary(np.zeros(self.n, dtype=np.int8),
                               np.zeros((self.n, 2), dtype=np.int64))
        for number in range(self.count):
            arrays = self.read(number, ("status", "sizes", "reasons"))
            if arrays is None:
                raise MosaicError(f"decode work in {self.work}: chunk {number} is missing "
                                  "or unreadable")
            indices = self.indices(number)
            result.status[indices] = arrays["status"]
            result.sizes[indices] = arrays["sizes"]
            reasons = json.loads(arrays["reasons"].tobytes().decode("utf-8"))
            for index, reason in zip(indices.tolist(), reasons):
                if reason:
                    result.failures[index] = reason
        return result


def compact(work: Path, n_inputs: int, n_kept: int, pack_path: Path, index_path: Path,
            vector_paths: dict[str, Path], dims: dict[str, int]) -> None:
    """Write the decoded inputs' cells and vectors, in input order (item id i = the i-th
    decoded input), from the chunk files into the bundle: ``pack_path`` + ``index_path``
    (docs/bundle.md) and one .npy per pixel embedding. One chunk in memory at a time."""
    chunks = _ChunkFiles(work, n_inputs)
    names = ("cells", *(f"vectors-{name}" for name in vector_paths))
    writers = {name: _NpyWriter(path, (n_kept, dims[name]), VECTOR_DTYPES[name])
               for name, path in vector_paths.items()}
    pack_tmp = pack_path.with_name(f".{pack_path.name}.tmp")
    offsets = np.zeros(n_kept + 1, dtype="<u8")
    written = 0
    with open(pack_tmp, "wb") as pack:
        for number in range(chunks.count):
            arrays = chunks.read(number, names + ("offsets",))
            if arrays is None:
                raise MosaicError(f"decode work in {work}: chunk {number} is unreadable")
            lengths = np.diff(arrays["offsets"].astype(np.int64))
            pack.write(arrays["cells"].tobytes())
            offsets[written + 1:written + 1 + len(lengths)] = \
                offsets[written] + np.cumsum(lengths)
            written += len(lengths)
            for name, writer in writers.items():
                writer.write(arrays[f"vectors-{name}"])
        pack.flush()
        os.fsync(pack.fileno())
    if written != n_kept:
        raise MosaicError(f"decode work in {work} holds {written} cells, not {n_kept}")
    for writer in writers.values():
        writer.close()
    index_tmp = index_path.with_name(f".{index_path.name}.tmp")
    with open(index_tmp, "wb") as handle:
        handle.write(offsets.tobytes())
        handle.flush()
        os.fsync(handle.fileno())
    index_tmp.replace(index_path)
    pack_tmp.replace(pack_path)


class _NpyWriter:
    """A .npy of a known shape written row block by row block, then renamed into place."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.shape, self.rows = path, shape, 0
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.handle = open(self.tmp, "wb")
        np.lib.format.write_array_header_1_0(self.handle, {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
            "shape": shape})
        self.dtype = np.dtype(dtype)

    def write(self, rows: np.ndarray) -> None:
        self.handle.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        if self.rows != self.shape[0]:
            raise MosaicError(f"{self.path}: wrote {self.rows} rows, not {self.shape[0]}")
        self.tmp.replace(self.path)


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


def _text_array(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
