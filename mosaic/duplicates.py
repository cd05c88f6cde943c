"""Groups of exact and near duplicates in a bundle (read side: reads only the bundle).

The same picture comes into a collection resized, re-encoded, lightly cropped or as a
small screenshot-like copy. Comparing every pair is O(N²); the bundle already holds
each item's 50 nearest neighbours in the ``pixels`` embedding (``embeddings[].top``,
docs/bundle.md), which finds the same picture at other sizes, aspects and crops among
the first few. So, with every stage taking and returning arrays:

1. ``candidate_pairs``: each item and its first ``MAX_RANK`` stored neighbours within
   ``MAX_DISTANCE`` (99.3 % of same-picture pairs are within the first 10 either way),
   of aspects that a crop can join (``similar_aspects``);
2. ``screen_differences``: the test of step 4 at the ``pixels`` vectors' own 16 x 16,
   with a loose threshold (``SCREEN_DIFFERENCE``): no decoding, and it drops most
   candidates that are other pictures before their cells are decoded;
3. ``read_pictures``: each remaining candidate's picture at 32 x 32 RGB from its stored
   cell,
   with the letterbox bars cut off (``picture_boxes``), decoded once;
4. ``pair_differences``: the two pictures aligned (the crop of one that best matches
   the other, found on their row and column profiles: up to ``MAX_CUT`` off each
   side) and the largest colour difference left after a Gaussian blur, less what a
   misalignment of ``SHIFT`` pixel explains at that point (the local slope). A signed
   difference blurred cancels what resampling and JPEG leave (small, both signs,
   along edges) and keeps what makes another picture (a region of another colour:
   another skin tone, a flag's other stripe);
5. ``group_labels``: union-find over the pairs within ``MAX_DIFFERENCE``;
   ``groups_from_labels`` numbers the groups of two or more from 0, in order of their
   smallest id.

A 64-bit perceptual hash (pHash, dHash, PDQ) was the first design and was measured
out: on emoji it cannot tell a picture from its other skin tone or a near-equal flag,
nor survive a 10 % crop (docs/benchmarks.md, "Duplicate groups (issue 19)").

The pipeline runs this search once, at the default threshold, after the index stage
and stores the groups in the bundle (``duplicates.json``, ``STORED``; docs/bundle.md,
"Duplicates"): ``groups_document`` makes it, ``read_stored`` reads it back without the
items ``run.py remove`` took out since; ``mosaic.bundle.collection_document`` says where
it is to the viewer's "Duplicates" filter (the server's and a published site's).

Memory: the neighbour lists are read ``CHUNK`` items at a time; the screened pairs and
the candidates' pictures (3 KB each) are kept in temporary files and read back, so the
process holds O(N) small integers (labels, row numbers) whatever N is.
"""

from __future__ import annotations

import functools
import io
import json
import multiprocessing
import os
import sqlite3
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

from mosaic.bundle import Bundle, Embedding, RowFile
from mosaic.errors import BundleError

# The thresholds, set once here and measured together by bench/duplicates_bench.py on
# 10,600 real pictures: the Google emoji set, 757 of them copied 4 ways (resized, JPEG,
# cropped, screenshot), Twitter's drawings of the same code points as distractors, and
# the sets' own skin-tone variants, which are other pictures too (docs/benchmarks.md,
# "Duplicate groups (issue 19)"): pair precision 0.960 and recall 0.954 at these values;
# MAX_DIFFERENCE 10: 0.976 and 0.927; 13: 0.949 and 0.961; 16: 0.910 and 0.974.
MAX_DIFFERENCE = 12.0  # largest blurred colour difference (0-255) of aligned pictures
MAX_DISTANCE = 6.0     # ``pixels`` distance (L2 of 768 values in [0, 1]) of a candidate
MAX_RANK = 10          # candidates among each item's first stored neighbours
MAX_CUT = 0.12         # crops looked for: up to 12 % off each side, in steps of 1 %
CUT_STEP = 0.01
# Pairs whose grey row and column profiles, at their best crop, differ by more than
# this (mean absolute, 0-255, the two axes added) are not compared in 2-D: 99.8 % of the
# bench's same-picture pairs are within it and half of the others are not.
MAX_PROFILE = 20.0
BLUR = 1.5             # Gaussian sigma, in pixels of the 32-px picture
SHIFT = 0.5            # misalignment forgiven, in pixels: difference less local slope
SIDE = 32              # pictures compared at 32 x 32 RGB
EMBEDDING = "pixels"   # the distances above are this embedding's
CHUNK = 65_536         # items whose neighbour lists are read (and paired) at a time
_BATCH = 512           # pairs compared, or cells decoded, per task of the thread pool
# The screen (step 2): the same test on the stored ``pixels`` vectors (16 px: the
# blur and the crop step scaled with it), passing a pair up to SCREEN_DIFFERENCE. On the
# emoji bench it kept 0.28 of the candidates and lost 1 of the 6,983 same-picture pairs
# that the 32-px test accepts (docs/benchmarks.md, "The pipeline's duplicates stage").
SCREEN_DIFFERENCE = 40.0
SCREEN_BLUR = 1.0
SCREEN_CUT_STEP = 0.02
SCREEN_PROFILE = 30.0
_PROCESS_MIN = 20_000  # cells to decode from which read_pictures starts processes
_COMPARE = 64          # 32-px pairs compared at once inside a task: ~1 MB arrays, in cache
_TOP = 2              # alignments tried in 2-D per axis and direction: the best by profile
STORED = "duplicates.json"  # the groups the pipeline stores in the bundle, at MAX_DIFFERENCE
# What decides the stored groups besides the bundle's own files: the pipeline stage's
# cache key holds it, so a change of any of these makes the pipeline search again.
SETTINGS = {"version": 2, "max_difference": MAX_DIFFERENCE, "max_distance": MAX_DISTANCE,
            "max_rank": MAX_RANK, "max_cut": MAX_CUT, "cut_step": CUT_STEP,
            "max_profile": MAX_PROFILE, "blur": BLUR, "shift": SHIFT, "side": SIDE,
            "top": _TOP, "embedding": EMBEDDING, "screen": SCREEN_DIFFERENCE,
            "screen_blur": SCREEN_BLUR, "screen_cut_step": SCREEN_CUT_STEP,
            "screen_profile": SCREEN_PROFILE}


def pixels_embedding(bundle: Bundle) -> Embedding:
    """The bundle's ``pixels`` embedding with stored neighbour lists.

    BundleError when the bundle has none: the thresholds are distances of that
    embedding, and its lists are what makes the search O(N)."""
    embedding = bundle.embedding(EMBEDDING)
    if embedding is not None and embedding.top is not None:
        return embedding
    raise BundleError(
        f"bundle {bundle.id!r} has no stored neighbour lists of the {EMBEDDING!r} "
        f"embedding, which duplicates are found with; build it again with "
        f"`run.py pipeline --embedding {EMBEDDING}` (the default)")


def iter_neighbor_blocks(bundle: Bundle, embedding: Embedding, chunk: int = CHUNK
                         ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(start, ids int32 (b, k), distances float32 (b, k))`` of the stored lists of
    ``chunk`` items at a time, from item 0."""
    stored = bundle.open_top_neighbors(embedding)
    if stored is None:
        raise BundleError(f"embedding {embedding.name!r} has no stored neighbour lists")
    ids_rows, distance_rows = stored
    try:
        for start in range(0, len(ids_rows), chunk):
            rows = np.arange(start, min(start + chunk, len(ids_rows)))
            yield start, ids_rows.read_rows(rows), distance_rows.read_rows(rows)
    finally:
        ids_rows.close()
        distance_rows.close()


def candidate_pairs(start: int, ids: np.ndarray, distances: np.ndarray,
                    max_distance: float = MAX_DISTANCE, max_rank: int = MAX_RANK
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` int64, ``a < b``, each pair once: items ``start, start + 1, ...`` and
    those of their first ``max_rank`` stored neighbours (``ids``/``distances`` (b, k))
    within ``max_distance``. A pair listed both ways in another block comes again
    from there; that costs one comparison, never a wrong group."""
    ids, distances = ids[:, :max_rank], distances[:, :max_rank]
    rows, columns = np.nonzero((distances <= max_distance) & (ids >= 0))
    a = rows.astype(np.int64) + start
    b = ids[rows, columns].astype(np.int64)
    low, high = np.minimum(a, b), np.maximum(a, b)
    keep = low != high
    low, high = low[keep], high[keep]
    span = int(high.max()) + 1 if len(high) else 1
    pairs = np.unique(low * span + high)  # in (low, high) order; 8x faster than axis=1
    return pairs // span, pairs % span


def similar_aspects(sizes: np.ndarray, a: np.ndarray, b: np.ndarray,
                    max_cut: float = MAX_CUT) -> np.ndarray:
    """bool, one per pair: whether the source pictures' aspects (``sizes`` (N, 2)
    ``(width, height)``) are close enough for one to be a crop of the other (at most
    ``max_cut`` off each axis, plus a pixel of rounding). Pictures are compared
    squashed to a square, where a wide and a square picture of the same scene can
    look alike; their sizes cannot. An unknown size (0) passes."""
    sizes = np.asarray(sizes, dtype=np.float64)
    width_a, height_a = sizes[a, 0], sizes[a, 1]
    width_b, height_b = sizes[b, 0], sizes[b, 1]
    known = (width_a > 0) & (height_a > 0) & (width_b > 0) & (height_b > 0)
    ratio = (np.maximum(width_a, 1) * np.maximum(height_b, 1)) / \
        (np.maximum(height_a, 1) * np.maximum(width_b, 1))
    slack = 1 / (1 - max_cut) + 2 / np.maximum(np.minimum(sizes[a], sizes[b]).min(axis=1), 1)
    return ~known | ((ratio <= slack) & (1 / ratio <= slack))


def read_sizes(bundle: Bundle) -> np.ndarray:
    """int64 (N, 2) ``(width, height)`` of every item's source picture, as the
    pipeline decoded it (metadata.sqlite ``items``), by id; 0 where unknown (an item
    ``run.py remove`` took out has no row)."""
    database = bundle.file(bundle.metadata)
    conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = np.array(conn.execute("SELECT id, width, height FROM items ORDER BY id")
                        .fetchall(), dtype=np.float64).reshape(-1, 3)
    finally:
        conn.close()
    sizes = np.zeros((bundle.counts.items, 2), dtype=np.int64)
    sizes[rows[:, 0].astype(np.int64)] = np.nan_to_num(rows[:, 1:], nan=0).astype(np.int64)
    return sizes


def picture_boxes(sizes: np.ndarray, cell_size: int, fit: str = "fit") -> np.ndarray:
    """int64 (N, 4) ``(top, left, bottom, right)`` of each picture inside its cell.

    The pipeline letterboxes a picture of ``(width, height)`` into the square cell
    (``thumbnail.square_array``); the bars are background, not picture, and move with
    the aspect, so a copy cut to another aspect would compare badly with its original.
    ``fill`` cells are the picture's centre square: the whole cell. An unknown size
    (0) also gives the whole cell."""
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    boxes = np.tile(np.array([0, 0, cell_size, cell_size], np.int64), (len(sizes), 1))
    known = (sizes > 0).all(axis=1)
    if fit == "fill" or not known.any():
        return boxes
    width, height = sizes[known, 0], sizes[known, 1]
    scale = cell_size / np.maximum(width, height)
    new_height = np.clip(np.round(height * scale), 1, cell_size).astype(np.int64)
    new_width = np.clip(np.round(width * scale), 1, cell_size).astype(np.int64)
    top, left = (cell_size - new_height) // 2, (cell_size - new_width) // 2
    bottom, right = top + new_height, left + new_width
    # One pixel less on a side with a bar: the cell's JPEG bleeds the bar into it.
    inset = [(top > 0) & (new_height > 2), (left > 0) & (new_width > 2)]
    boxes[known] = np.column_stack([top + inset[0], left + inset[1], bottom - inset[0],
                                    right - inset[1]])
    return boxes


def read_pictures(cells, boxes: np.ndarray, items: np.ndarray, cell_size: int,
                  n_jobs: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(items, uint8 (b, 32, 32, 3))`` blocks: each item's picture (its ``boxes`` row,
    in cell pixels) from its stored cell, squashed to 32 x 32 with an area filter.

    A 128-px cell is decoded at 64 px (libjpeg's DCT scaling: a quarter of the work).
    The cells are read here and decoded in ``n_jobs`` processes (Pillow holds the GIL
    for most of a small JPEG's decode: two threads decoded no faster than one), in
    order, a few blocks ahead; in this process below ``_PROCESS_MIN`` items, where
    starting the processes costs more than it saves."""
    items = np.asarray(items, dtype=np.int64)
    jobs = max(1, n_jobs or os.cpu_count() or 1)

    def task(part: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        return [cells.read_encoded(int(item)) for item in part], boxes[part]

    blocks = [items[i:i + _BATCH] for i in range(0, len(items), _BATCH)]
    if jobs == 1 or len(items) < _PROCESS_MIN:
        for part in blocks:
            yield part, _pictures(*task(part), cell_size)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        pending: deque = deque()
        for part in blocks:
            pending.append((part, pool.submit(_pictures, *task(part), cell_size)))
            if len(pending) >= 4 * jobs:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _pictures(encoded: list[bytes], boxes: np.ndarray, cell_size: int) -> np.ndarray:
    out = np.empty((len(encoded), SIDE, SIDE, 3), dtype=np.uint8)
    for row, (data, box) in enumerate(zip(encoded, boxes, strict=True)):
        out[row] = _picture(data, box, cell_size)
    return out


def _picture(encoded: bytes, box: np.ndarray, cell_size: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            image.draft("RGB", (2 * SIDE, 2 * SIDE))
            scale = image.size[0] / cell_size
            top, left, bottom, right = (float(v) * scale for v in box)
            picture = image.convert("RGB").resize(
                (SIDE, SIDE), Image.Resampling.BOX, box=(left, top, right, bottom))
            return np.asarray(picture, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:
        raise BundleError(f"a stored cell does not decode: {error}") from None


def crop_matrices(side: int = SIDE, max_cut: float = MAX_CUT, step: float = CUT_STEP
                  ) -> np.ndarray:
    """float32 (H, side, side): for every crop ``(first, last)`` of one axis, each a
    multiple of ``step`` up to ``max_cut`` (together too), the linear resampling of a
    profile or picture row to that crop stretched back to ``side`` samples. The first
    is the identity (no crop)."""
    cuts = np.arange(0, max_cut + step / 2, step)
    out = []
    for first in cuts:
        for last in cuts:
            if first + last > max_cut + step / 2:
                continue
            centres = first + (np.arange(side) + 0.5) / side * (1 - first - last)
            position = centres * side - 0.5
            low = np.floor(position).astype(np.int64)
            weight = position - low
            matrix = np.zeros((side, side))
            matrix[np.arange(side), np.clip(low, 0, side - 1)] += 1 - weight
            matrix[np.arange(side), np.clip(low + 1, 0, side - 1)] += weight
            out.append(matrix)
    return np.stack(out).astype(np.float32)


def blur_matrix(side: int = SIDE, sigma: float = BLUR) -> np.ndarray:
    """float32 (side, side) ``G`` with ``G @ v`` = ``v`` blurred by a Gaussian of
    ``sigma`` (scipy's ``gaussian_filter1d``, reflected at the ends)."""
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(np.eye(side), sigma, axis=0).astype(np.float32)


def pair_differences(x: np.ndarray, y: np.ndarray, crops: np.ndarray | None = None,
                     blur: np.ndarray | None = None, max_profile: float = MAX_PROFILE
                     ) -> np.ndarray:
    """float32 (P,): for pictures ``x``, ``y`` (P, S, S, 3), the largest blurred colour
    difference (0-255) left after the best alignment of either as a crop of the other;
    inf where even their profiles differ by more than ``max_profile``.

    For each direction, the crop of the first picture is chosen per axis by how well
    its grey row (column) profile, cropped and stretched, matches the other's (the
    ``_TOP`` best each); those crops are tried in 2-D and the smallest difference
    kept. Every step is a matrix product or an elementwise pass over ``_COMPARE``
    pairs at a time, small enough to stay in the CPU's cache."""
    crops = crop_matrices(x.shape[1]) if crops is None else crops
    blur = blur_matrix(x.shape[1]) if blur is None else blur
    blurred_crops = blur @ crops  # (H, S, S): crop, then blur
    best = np.empty(len(x), dtype=np.float32)
    step = _COMPARE * max(1, SIDE // x.shape[1]) ** 2  # the same bytes at a smaller side
    for start in range(0, len(x), step):
        part = slice(start, start + step)
        best[part] = _differences(np.asarray(x[part], np.float32),
                                  np.asarray(y[part], np.float32), crops, blurred_crops, blur,
                                  max_profile)
    return best


def _differences(x: np.ndarray, y: np.ndarray, crops: np.ndarray, blurred_crops: np.ndarray,
                 blur: np.ndarray, max_profile: float) -> np.ndarray:
    """``pair_differences`` of one block of float32 pictures."""
    best = np.full(len(x), np.inf, dtype=np.float32)
    # grey pictures and their row and column profiles, each computed once for both
    # directions (the sum of the three channels, then / 3: the same float32 values as
    # a mean over the channel axis, in a quarter of its time)
    greys = [(p[..., 0] + p[..., 1] + p[..., 2]) / np.float32(3) for p in (x, y)]
    rows = [grey.mean(axis=2) for grey in greys]
    cols = [grey.mean(axis=1) for grey in greys]
    blurred = [_blur2(p, blur) for p in (x, y)]
    for one, other in ((0, 1), (1, 0)):
        row_choices, row_error = _best_crops(crops, rows[one], rows[other])
        col_choices, col_error = _best_crops(crops, cols[one], cols[other])
        live = np.flatnonzero(row_error + col_error <= max_profile)
        if len(live) == 0:
            continue
        first, target = (x, y)[one][live], blurred[other][live]
        slack = SHIFT * _gradient(target)  # what half a pixel's misalignment explains
        flat = first.reshape(len(live), first.shape[1], -1)
        for row_crop in row_choices[live].T:
            cropped_rows = (blurred_crops[row_crop] @ flat).reshape(first.shape)
            channels_first = cropped_rows.transpose(0, 3, 1, 2)  # (P, 3, S, S)
            for col_crop in col_choices[live].T:
                aligned = channels_first @ blurred_crops[col_crop].transpose(0, 2, 1)[:, None]
                # max(|aligned - target| - slack, 0) over the pixels, with the 0 taken
                # once after the max, in place
                aligned -= target
                np.abs(aligned, out=aligned)
                aligned -= slack
                worst = np.maximum(aligned.reshape(len(live), -1).max(axis=1), 0)
                best[live] = np.minimum(best[live], worst)
    return best


def _gradient(pictures: np.ndarray) -> np.ndarray:
    """(P, 3, S, S): the larger of each pixel's differences to its neighbours in rows
    and in columns: how much a shift of one pixel changes it."""
    rows = np.abs(pictures[:, :, 1:] - pictures[:, :, :-1])
    cols = np.abs(pictures[:, :, :, 1:] - pictures[:, :, :, :-1])
    out = np.zeros_like(pictures)
    out[:, :, 1:] = rows
    np.maximum(out[:, :, :-1], rows, out=out[:, :, :-1])
    np.maximum(out[:, :, :, 1:], cols, out=out[:, :, :, 1:])
    np.maximum(out[:, :, :, :-1], cols, out=out[:, :, :, :-1])
    return out


def _blur2(pictures: np.ndarray, blur: np.ndarray) -> np.ndarray:
    """(P, 3, S, S): each channel of (P, S, S, 3) pictures blurred in both axes, as two
    large matrix products (not P x 3 small ones)."""
    n, side = len(pictures), pictures.shape[1]
    # blur the columns of each row: (P, S, S, 3) -> rows of S values along the column axis
    along_cols = pictures.transpose(0, 1, 3, 2).reshape(-1, side) @ blur.T  # (P*S*3, S)
    along_cols = along_cols.reshape(n, side, 3, side).transpose(0, 2, 3, 1)  # (P, 3, Sc, Sr)
    # then the rows: each column's S values
    both = along_cols.reshape(-1, side) @ blur.T  # (P*3*Sc, Sr)
    return np.ascontiguousarray(both.reshape(n, 3, side, side).transpose(0, 1, 3, 2))


def _best_crops(crops: np.ndarray, profile: np.ndarray, target: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(choices int (P, _TOP), error (P,))``: the crops whose resampled ``profile``
    (P, S) best match ``target`` (P, S), by mean absolute difference, and the best
    one's difference."""
    size = crops.shape[1]
    resampled = (profile @ crops.reshape(-1, size).T).reshape(len(profile), -1, size)
    resampled -= target[:, None, :]
    np.abs(resampled, out=resampled)
    error = resampled.mean(axis=2)
    top = min(_TOP, error.shape[1])
    return np.argpartition(error, top - 1, axis=1)[:, :top], error.min(axis=1)


def group_labels(n_items: int, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """int64 (N,): each item's group as its smallest member's id (union-find over
    ``pairs``, an iterable of ``(a, b)`` arrays, consumed one at a time).

    Vectorised union-find: ``labels`` always points at a root that points at itself;
    a batch's roots are joined by connected components, each component's roots
    pointed at its smallest, and one ``labels[labels]`` restores the invariant. Memory
    is the labels plus one batch, whatever the number of pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    labels = np.arange(n_items, dtype=np.int64)
    for a, b in pairs:
        if len(a) == 0:
            continue
        root_a, root_b = labels[np.asarray(a)], labels[np.asarray(b)]
        roots, inverse = np.unique(np.concatenate([root_a, root_b]), return_inverse=True)
        edges = coo_matrix((np.ones(len(root_a), np.int8),
                            (inverse[:len(root_a)], inverse[len(root_a):])),
                           shape=(len(roots), len(roots)))
        count, component = connected_components(edges, directed=False)
        smallest = np.full(count, n_items, dtype=np.int64)
        np.minimum.at(smallest, component, roots)
        labels[roots] = smallest[component]
        labels = labels[labels]
    return labels


def groups_from_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(group, ids)`` int64 arrays, one entry per member of a group of two or more:
    groups numbered from 0 in order of their smallest id, members by id."""
    labels = np.asarray(labels, dtype=np.int64)
    sizes = np.bincount(labels, minlength=len(labels))
    ids = np.flatnonzero(sizes[labels] > 1)
    ids = ids[np.argsort(labels[ids], kind="stable")]
    roots = labels[ids]
    group = np.cumsum(np.concatenate([[0], roots[1:] != roots[:-1]])) if len(ids) \
        else np.empty(0, np.int64)
    return group.astype(np.int64), ids


def largest_members(group: np.ndarray, ids: np.ndarray, pixels, sizes_in_bytes) -> np.ndarray:
    """bool, one per member: the one of its group with the most pixels, ties by the
    most bytes (an unknown size is -1), then by the smallest id: the copy to keep."""
    group, ids = np.asarray(group), np.asarray(ids)
    order = np.lexsort((-ids, np.asarray(sizes_in_bytes), np.asarray(pixels), group))
    last = np.ones(len(order), dtype=bool)
    last[:-1] = group[order][1:] != group[order][:-1]
    out = np.zeros(len(ids), dtype=bool)
    out[order[last]] = True
    return out


def file_sizes(sources: Iterable[str]) -> np.ndarray:
    """int64 bytes of each source file, -1 where it is gone: metadata.sqlite does not
    store sizes, so this is the one thing read outside the bundle."""
    out = []
    for source in sources:
        try:
            out.append(os.stat(source).st_size)
        except (OSError, ValueError):
            out.append(-1)
    return np.array(out, dtype=np.int64)


def screen_differences(vectors, a: np.ndarray, b: np.ndarray, scale: float
                       ) -> np.ndarray:
    """float32 (P,): ``pair_differences`` of pairs ``(a, b)`` at the stored ``pixels``
    vectors' own size (``vectors``: a ``VectorRows`` of uint8 rows side x side x 3,
    read times ``scale``; the blur and the crop step scaled to it). Each item is read
    once per call."""
    side = int(round(np.sqrt(vectors.shape[1] / 3)))
    items, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    pictures = vectors.read_rows(items) * np.float32(1 / scale)
    pictures = pictures.reshape(len(items), side, side, 3)
    return pair_differences(pictures[inverse[:len(a)]], pictures[inverse[len(a):]],
                            *_screen_matrices(side), SCREEN_PROFILE)


@functools.cache
def _screen_matrices(side: int) -> tuple[np.ndarray, np.ndarray]:
    """The screen's crops and blur at ``side`` px, made once (every batch uses them)."""
    return (crop_matrices(side, step=SCREEN_CUT_STEP),
            blur_matrix(side, SCREEN_BLUR * side / SIDE))


def iter_pair_differences(bundle: Bundle,
                          max_distance: float = MAX_DISTANCE, max_rank: int = MAX_RANK,
                          n_jobs: int | None = None, screen: float = SCREEN_DIFFERENCE
                          ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(a, b, difference)`` for every candidate pair that passes the screen (its
    ``screen_differences`` at most ``screen``; ``inf`` screens nothing), a block of
    items at a time.

    Two passes: the first reads the stored lists, screens the candidates on ``n_jobs``
    threads and keeps those that pass in a temporary file, with the items to decode
    (each once, into another); the second compares them at 32 px on ``n_jobs``
    threads."""
    embedding = pixels_embedding(bundle)
    n_items = bundle.counts.items
    sizes = read_sizes(bundle)
    jobs = max(1, n_jobs or os.cpu_count() or 1)

    def batches(a: np.ndarray, b: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(a[i:i + _BATCH], b[i:i + _BATCH]) for i in range(0, len(a), _BATCH)]

    with tempfile.TemporaryDirectory(prefix="mosaic-duplicates-") as scratch, \
            ThreadPoolExecutor(jobs) as pool, threadpool_limits(limits=1, user_api="blas"):
        # the pairs run on our own threads: BLAS's own threads on top of them (OpenBLAS
        # starts one per core for each small product) made the comparison 4x slower on
        # 2 cores (docs/benchmarks.md, "The pipeline's duplicates stage")
        wanted = np.zeros(n_items, dtype=bool)
        screened: list[Path] = []
        vectors = bundle.open_vectors(embedding)
        try:
            for start, ids, distances in iter_neighbor_blocks(bundle, embedding):
                a, b = candidate_pairs(start, ids, distances, max_distance, max_rank)
                keep = similar_aspects(sizes, a, b)
                a, b = a[keep], b[keep]
                if np.isfinite(screen) and len(a):
                    differences = np.concatenate(list(pool.map(
                        lambda pair: screen_differences(vectors, *pair, embedding.scale or 1),
                        batches(a, b))))
                    a, b = a[differences <= screen], b[differences <= screen]
                wanted[a] = wanted[b] = True
                screened.append(Path(scratch) / f"pairs-{len(screened)}.npy")
                np.save(screened[-1], np.stack([a, b]))
        finally:
            vectors.close()
        items = np.flatnonzero(wanted)
        del wanted
        row_of = np.full(n_items, -1, dtype=np.int64)
        row_of[items] = np.arange(len(items))
        cell_size = bundle.grid.cell_size
        boxes = picture_boxes(sizes, cell_size, bundle.fit)
        crops, blur = crop_matrices(), blur_matrix()
        pictures = RowFile(Path(scratch) / "pictures.u8", (max(1, len(items)), SIDE, SIDE, 3),
                           np.uint8, writable=True)
        try:
            with bundle.open_cells() as cells:
                for part, block in read_pictures(cells, boxes, items, cell_size, jobs):
                    pictures.write_rows(int(row_of[part[0]]), block)

            def compare(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
                first, second = pair
                return pair_differences(pictures.read_rows(row_of[first]),
                                        pictures.read_rows(row_of[second]), crops, blur)

            for path in screened:
                a, b = np.load(path)
                differences = list(pool.map(compare, batches(a, b)))
                yield a, b, (np.concatenate(differences) if differences
                             else np.empty(0, np.float32))
        finally:
            pictures.close()


def find_duplicates(bundle: Bundle,
                    max_difference: float = MAX_DIFFERENCE, n_jobs: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(group, ids)`` of a bundle's duplicate groups (``groups_from_labels``)."""
    def confirmed() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for a, b, difference in iter_pair_differences(bundle, n_jobs=n_jobs):
            same = difference <= max_difference
            yield a[same], b[same]

    return groups_from_labels(group_labels(bundle.counts.items, confirmed()))


# -- the stored groups (docs/bundle.md, "Duplicates") ---------------------------------

def groups_document(group: np.ndarray, ids: np.ndarray, largest: np.ndarray,
                    threshold: float = MAX_DIFFERENCE) -> dict[str, Any]:
    """What ``duplicates.json`` holds: ``{"threshold", "groups": [{"ids", "largest"}]}``,
    a group per entry in ``group``'s order (numbered by position, from 0), its members'
    ids ascending and ``largest`` the id ``largest_members`` marks.

    >>> groups_document(np.array([0, 0, 1, 1, 1]), np.array([2, 9, 4, 5, 7]),
    ...                 np.array([False, True, True, False, False]))["groups"]
    [{'ids': [2, 9], 'largest': 9}, {'ids': [4, 5, 7], 'largest': 4}]
    """
    group, ids = np.asarray(group, np.int64), np.asarray(ids, np.int64)
    largest = np.asarray(largest, bool)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(group) \
        else np.empty(0, np.int64)
    groups = []
    for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(group)]):
        members = ids[start:end]
        order = np.argsort(members, kind="stable")
        top = members[largest[start:end]]
        groups.append({"ids": members[order].tolist(),
                       "largest": int(top[0]) if len(top) else None})
    return {"threshold": float(threshold), "groups": groups}


def document_bytes(document: dict[str, Any]) -> bytes:
    """``document`` as compact UTF-8 JSON, one group a line (a million items' groups
    stay a few MB, and a diff of two bundles reads group by group)."""
    head = json.dumps({k: v for k, v in document.items() if k != "groups"},
                      separators=(",", ":"))[:-1]
    lines = ",\n".join(json.dumps(g, separators=(",", ":")) for g in document["groups"])
    return f'{head},"groups":[\n{lines}\n]}}\n'.encode()


def without_items(document: dict[str, Any], gone: np.ndarray) -> dict[str, Any]:
    """A new ``document`` without the items where ``gone`` (bool, by id) is true: they
    leave their groups, a group left with fewer than two members is dropped, the rest
    keep their order (numbered again from 0); a group whose largest member went has
    ``largest`` null (the size of the others is not in the document)."""
    gone = np.asarray(gone, dtype=bool)
    groups = []
    for entry in document["groups"]:
        members = [i for i in entry["ids"] if not (i < len(gone) and gone[i])]
        if len(members) >= 2:
            largest = entry.get("largest")
            groups.append({"ids": members, "largest": largest if largest in members else None})
    return {**document, "groups": groups}


def read_stored(bundle: Bundle) -> dict[str, Any] | None:
    """The groups the pipeline stored (``bundle.duplicates``), without the items
    ``run.py remove`` took out since (``without_items``); None for a bundle without
    them (made before them, ``--no-duplicates``, or no ``pixels`` embedding)."""
    entry = bundle.duplicates
    if entry is None:
        return None
    try:
        with open(bundle.file(entry.path), encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as error:
        raise BundleError(f"cannot read the stored duplicate groups {entry.path!r}: "
                          f"{error}") from None
    removed = bundle.removed_ids()
    if len(removed):
        gone = np.zeros(bundle.counts.items, dtype=bool)
        gone[removed] = True
        document = without_items(document, gone)
    return document


def stored_groups(document: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(group, ids)`` int64 of a stored document, as ``find_duplicates`` returns them."""
    sizes = [len(entry["ids"]) for entry in document["groups"]]
    group = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    ids = np.array([i for entry in document["groups"] for i in entry["ids"]], dtype=np.int64)
    return group, ids
