"""Regions: a hierarchy of areas of the map, each labelled from its members' metadata.

Level 1 splits the 2-D layout into about ``top`` regions (k-means of ``layout.npy``'s
x, y, so a region is a compact piece of the map); every region of a level is split
again by k-means into at most ``branching`` children of about ``region_size`` items,
until no region holds twice ``region_size``. Children nest in their parent by
construction. A region too small to split stays as it is at the next levels (its
``levels`` span them).

Each region is labelled by c-TF-IDF over its members' terms (facet and tags values,
words of text columns) against the other regions of its level: a term's share of
the region's items times ``log(1 + A / f)``, ``A`` the mean region size at that level
and ``f`` the number of items that carry it in the whole collection. The label is
the best term, if enough of the region carries it and more than the collection does
(``MIN_SHARE``, ``MIN_LIFT``); otherwise, and always without metadata, it is
``None``: no word is made up.

    >>> import numpy as np
    >>> xy = np.array([[0, 0], [0, 0.1], [1, 1], [1, 0.9]], dtype=np.float32)
    >>> ids, parents, spans = build_hierarchy(xy, region_size=1, top=2, branching=2)
    >>> ids[:, 0].tolist(), parents.tolist()
    ([0, 0, 1, 1], [-1, -1, 0, 0, 1, 1])
"""

from __future__ import annotations

import re

import numpy as np
from scipy import sparse

TOP_REGIONS = 12
BRANCHING = 4
REGION_SIZE = 50
MAX_TERMS = 5  # terms kept per region (the label is the first)
MIN_SHARE = 0.25  # a label's term is carried by at least this share of the region
MIN_LIFT = 1.25  # ... and by this many times the share of the whole collection
MIN_COUNT = 2  # ... and by at least this many of its items
LABEL_KINDS = ("facet", "tags", "text")  # the columns terms come from
NUMPY_TOP_ITEMS = 5_000  # up to this many items level 1 is split by the NumPy k-means
# Hierarchy and labelling rules: part of the stage's cache key.
# 2: level 1 of up to NUMPY_TOP_ITEMS items split by the NumPy k-means (was scikit-learn's).
REGIONS_VERSION = 2

_WORD = re.compile(r"[^\W\d_]{3,}")
STOPWORDS = frozenset(
    "the and for with from that this are was were has have had not but its his her their "
    "they them you your our who whom which what when where why how all any can may one two "
    "into onto over under about after before than then there here also more most some such "
    "only very of to in on at by an or as is it be".split())


def top_count(n_items: int, region_size: int = REGION_SIZE, top: int = TOP_REGIONS) -> int:
    """Regions at level 1: about one per ``region_size`` items, between 2 and ``top``
    (1 for a single item)."""
    return max(1, min(top, max(2, round(n_items / region_size)), n_items))


def build_hierarchy(xy: np.ndarray, region_size: int = REGION_SIZE, top: int = TOP_REGIONS,
                    branching: int = BRANCHING, random_state: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The regions of ``xy`` (N, 2) at every level.

    Returns ``ids`` int32 (N, L): each item's region at each level (global region
    ids, numbered level by level, in each level by parent then size, largest
    first); ``parents`` int32 (R,): each region's parent (-1 at level 1);
    ``spans`` int32 (R, 2): the first and last level (1-based) a region is shown at.
    """
    xy = np.asarray(xy, dtype=np.float64)
    n_items = len(xy)
    parents: list[int] = []
    spans: list[list[int]] = []
    local = _top_kmeans(xy, top_count(n_items, region_size, top), random_state)
    column = _number(local, -1, parents, spans, level=1)
    columns = [column]
    whole: set[int] = set()  # regions k-means cannot split (all their points alike)
    while True:
        level = len(columns) + 1
        previous = columns[-1]
        sizes = np.bincount(previous, minlength=len(parents))
        splits = {int(r): min(branching, round(sizes[r] / region_size))
                  for r in np.unique(previous)
                  if sizes[r] >= 2 * region_size and int(r) not in whole}
        if not splits:
            break
        column = previous.copy()
        order = np.argsort(previous, kind="stable")
        bounds = np.searchsorted(previous[order], list(splits))
        ends = np.searchsorted(previous[order], list(splits), side="right")
        split = set()
        for (region, k), start, end in zip(splits.items(), bounds, ends):
            members = order[start:end]
            labels = _kmeans(xy[members], k, random_state, n_init=1)
            if labels.max() == 0:
                whole.add(region)
                continue
            column[members] = _number(labels, region, parents, spans, level)
            split.add(region)
        if not split:
            continue
        for region in np.unique(previous):
            if int(region) not in split:
                spans[region][1] = level
        columns.append(column)
    return (np.stack(columns, axis=1).astype(np.int32), np.array(parents, dtype=np.int32),
            np.array(spans, dtype=np.int32).reshape(-1, 2))


def _number(labels: np.ndarray, parent: int, parents: list[int], spans: list[list[int]],
            level: int) -> np.ndarray:
    """Global ids for one split's local ``labels``, largest first (ties: the one with
    the lowest item first); records each new region's parent and level span."""
    counts = np.bincount(labels)
    _, first = np.unique(labels, return_index=True)
    order = np.lexsort((first, -counts))
    ids = np.empty(len(counts), dtype=np.int64)
    for local in order:
        ids[local] = len(parents)
        parents.append(parent)
        spans.append([level, level])
    return ids[labels]


def _top_kmeans(points: np.ndarray, k: int, random_state: int) -> np.ndarray:
    """Level 1's split of all the items, labels 0..k-1 each used: scikit-learn's k-means
    (compiled, threaded; one call, so its overhead does not matter) above
    ``NUMPY_TOP_ITEMS`` items, the NumPy one below, where importing scikit-learn (1.2 s,
    when nothing else in the run has) costs more than the split (0.04 s at 3,000)."""
    if len(points) <= max(10 * k, NUMPY_TOP_ITEMS):
        return _kmeans(points, k, random_state)
    from sklearn.cluster import KMeans

    labels = KMeans(n_clusters=k, n_init=3, random_state=random_state).fit_predict(points)
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def _kmeans(points: np.ndarray, k: int, random_state: int, n_init: int = 3,
            max_iter: int = 50) -> np.ndarray:
    """k-means labels (n,) of 2-D ``points``, 0..k-1 each used (k capped by the distinct
    points): Lloyd's iterations from k-means++ seeds, the best of ``n_init`` (least
    inertia). Small and in NumPy: a hierarchy runs thousands of small splits, where a
    library's per-call overhead (sklearn: ~15 ms) would dominate."""
    n = len(points)
    k = max(1, min(k, len(np.unique(points, axis=0)) if n <= 10 * k else k))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(random_state)
    norms = (points ** 2).sum(1)
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        centres = _seeds(points, k, rng)
        for _ in range(max_iter):
            distance = norms[:, None] - 2 * points @ centres.T + (centres ** 2).sum(1)[None]
            labels = distance.argmin(1)
            sizes = np.bincount(labels, minlength=k)
            moved = centres.copy()
            for d in range(points.shape[1]):
                sums = np.bincount(labels, points[:, d], minlength=k)
                moved[sizes > 0, d] = sums[sizes > 0] / sizes[sizes > 0]
            if np.allclose(moved, centres):
                break
            centres = moved
        inertia = float(distance[np.arange(n), labels].sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    _, best = np.unique(best, return_inverse=True)  # dense, should a centre lose all
    return best.astype(np.int64)


def _seeds(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds: each next one drawn in proportion to its squared distance to
    the nearest chosen so far."""
    centres = [points[rng.integers(len(points))]]
    nearest = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:
            break
        centres.append(points[rng.choice(len(points), p=nearest / total)])
        nearest = np.minimum(nearest, ((points - centres[-1]) ** 2).sum(1))
    return np.array(centres, dtype=np.float64)


def item_terms(values: dict[str, list[str | None]], kinds: dict[str, str]
               ) -> tuple[sparse.csr_matrix, list[tuple[str, str]]]:
    """The terms each item carries, once each, from the CSV ``values`` (column -> raw
    value per item): a ``facet`` column's value, each tag of a ``tags`` column, each
    word (3+ letters, lower case, no stop word) of a ``text`` column. Returns the
    items x terms 0/1 matrix and the terms as ``(column, text)``."""
    vocabulary: dict[tuple[str, str], int] = {}
    rows: list[int] = []
    cols: list[int] = []
    n_items = len(next(iter(values.values()))) if values else 0
    for name, column in values.items():
        kind = kinds.get(name)
        if kind not in LABEL_KINDS:
            continue
        for item, raw in enumerate(column):
            if raw is None or str(raw).strip() == "":
                continue
            text = str(raw)
            if kind == "facet":
                found = {text.strip()}
            elif kind == "tags":
                found = {tag.strip() for tag in text.split("|") if tag.strip()}
            else:
                found = {w for w in (m.lower() for m in _WORD.findall(text))
                         if w not in STOPWORDS}
            for term in sorted(found):  # a set's order changes with the hash seed
                rows.append(item)
                cols.append(vocabulary.setdefault((name, term), len(vocabulary)))
    matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)),
                               shape=(n_items, len(vocabulary)))
    return matrix, list(vocabulary)


def label_regions(ids: np.ndarray, spans: np.ndarray, terms: sparse.csr_matrix,
                  vocabulary: list[tuple[str, str]]) -> list[tuple[str | None, list[dict]]]:
    """Per region: ``(label, terms)``, terms its ``MAX_TERMS`` most distinctive (c-TF-IDF
    at its first level; carried by a larger share of the region than of the collection;
    each text once) as ``{"column", "text", "share", "score"}``, best first.
    ``label`` is the first term's text where it passes ``MIN_SHARE``, ``MIN_LIFT`` and
    ``MIN_COUNT``, else ``None``."""
    n_regions = len(spans)
    result: list[tuple[str | None, list[dict]]] = [(None, [])] * n_regions
    n_items = ids.shape[0]
    if not vocabulary or n_items == 0:
        return result
    carried = np.asarray(terms.sum(axis=0)).ravel()  # f: items carrying each term
    overall = carried / n_items
    for level in range(ids.shape[1]):
        column = ids[:, level]
        present = np.unique(column)
        fresh = present[spans[present, 0] == level + 1]
        if len(fresh) == 0:
            continue
        members = sparse.csr_matrix((np.ones(n_items), (column, np.arange(n_items))),
                                    shape=(n_regions, n_items))
        counts = (members @ terms).tocsr()  # regions x terms, sparse
        sizes = np.bincount(column, minlength=n_regions)
        weight = np.log1p((n_items / len(present)) / np.maximum(carried, 1))
        for region in fresh.tolist():
            row = counts.getrow(region)
            held, count = row.indices, row.data
            share = count / sizes[region]
            score = share * weight[held]
            best, seen = [], set()
            for j in np.lexsort((held, -score)):
                t = held[j]
                # distinctive only (more common here than overall), each text once
                if share[j] > overall[t] and vocabulary[t][1] not in seen:
                    seen.add(vocabulary[t][1])
                    best.append(j)
                    if len(best) == MAX_TERMS:
                        break
            kept = [{"column": vocabulary[held[j]][0], "text": vocabulary[held[j]][1],
                     "share": round(float(share[j]), 4), "score": round(float(score[j]), 4)}
                    for j in best]
            label = None
            if best:
                j = best[0]
                if (share[j] >= MIN_SHARE and count[j] >= MIN_COUNT
                        and share[j] >= MIN_LIFT * overall[held[j]]):
                    label = vocabulary[held[j]][1]
            result[region] = (label, kept)
    return result


def describe_regions(ids: np.ndarray, parents: np.ndarray, spans: np.ndarray,
                     xy: np.ndarray, positions: np.ndarray,
                     labels: list[tuple[str | None, list[dict]]]) -> list[dict]:
    """One dict per region, by id: ``id``, ``level`` (its first), ``levels`` ([first,
    last]), ``parent``, ``size``, ``representative`` (the member nearest the region's
    mean in the layout), ``anchor`` and its ``row``/``col`` (the member whose cell is
    nearest the mean of the region's cells: where a label goes), ``bbox`` ([row0, col0,
    row1, col1], inclusive cells),
    ``start``/``end`` (its items are ``order[start:end]``, see ``region_order``),
    ``label`` and ``terms``."""
    n_regions = len(parents)
    regions = [None] * n_regions
    order = region_order(ids)
    xy = np.asarray(xy, dtype=np.float64)
    cells = np.asarray(positions, dtype=np.float64)
    for level in range(ids.shape[1]):
        column = ids[:, level]
        sizes = np.bincount(column, minlength=n_regions)
        fresh = np.flatnonzero((sizes > 0) & (spans[:, 0] == level + 1))
        if len(fresh) == 0:
            continue
        weights = np.maximum(sizes, 1)[:, None]
        mean_xy = np.stack([np.bincount(column, xy[:, d], n_regions) for d in (0, 1)], 1) \
            / weights
        mean_cell = np.stack([np.bincount(column, cells[:, d], n_regions) for d in (0, 1)], 1) \
            / weights
        representative = _nearest(column, ((xy - mean_xy[column]) ** 2).sum(1), n_regions)
        anchor = _nearest(column, ((cells - mean_cell[column]) ** 2).sum(1), n_regions)
        low = np.full((n_regions, 2), np.iinfo(np.int64).max)
        high = np.full((n_regions, 2), -1)
        for d in (0, 1):
            np.minimum.at(low[:, d], column, positions[:, d])
            np.maximum.at(high[:, d], column, positions[:, d])
        starts = np.zeros(n_regions, dtype=np.int64)
        present, first = np.unique(column[order], return_index=True)
        starts[present] = first
        for region in fresh.tolist():
            start = int(starts[region])
            label, terms = labels[region]
            regions[region] = {
                "id": region, "level": level + 1, "levels": [int(v) for v in spans[region]],
                "parent": int(parents[region]), "size": int(sizes[region]),
                "representative": int(representative[region]),
                "anchor": int(anchor[region]),
                "row": int(positions[anchor[region], 0]), "col": int(positions[anchor[region], 1]),
                "bbox": [int(low[region, 0]), int(low[region, 1]),
                         int(high[region, 0]), int(high[region, 1])],
                "start": start, "end": start + int(sizes[region]),
                "label": label, "terms": terms}
    return regions


def without(ids: np.ndarray, described: list[dict], gone: np.ndarray, xy: np.ndarray,
            positions: np.ndarray, terms: sparse.csr_matrix,
            vocabulary: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """The same hierarchy (region ids, parents, levels) over the items not ``gone``
    (bool, N): each item's regions with ``-1`` for the gone, ``region_order`` of the
    rest, and every region described and labelled again from its remaining members
    (``terms``: all N items' rows, the gone ones' ignored). A region left with no
    member keeps its id with ``size`` 0, no label and ``-1`` for its items and cells."""
    parents = np.array([r["parent"] for r in described], dtype=np.int64)
    spans = np.array([r["levels"] for r in described], dtype=np.int64).reshape(-1, 2)
    kept = np.flatnonzero(~gone)
    sub = np.asarray(ids)[kept]
    labels = label_regions(sub, spans, terms[kept] if vocabulary else terms, vocabulary)
    fresh = describe_regions(sub, parents, spans, np.asarray(xy)[kept],
                             np.asarray(positions)[kept], labels)
    for region, entry in enumerate(fresh):
        if entry is None:  # no member left: still a region, empty where it was
            old = described[region]
            fresh[region] = {
                "id": region, "level": old["level"], "levels": old["levels"],
                "parent": old["parent"], "size": 0, "representative": -1, "anchor": -1,
                "row": -1, "col": -1, "bbox": [-1, -1, -1, -1], "start": 0, "end": 0,
                "label": None, "terms": []}
            continue
        entry["representative"] = int(kept[entry["representative"]])
        entry["anchor"] = int(kept[entry["anchor"]])
    remaining = np.array(ids, dtype=np.int32, copy=True)
    remaining[gone] = -1
    return remaining, kept[region_order(sub)].astype(np.int32), fresh


def region_order(ids: np.ndarray) -> np.ndarray:
    """Item ids int32 (N,) sorted by their regions at every level (then by id), so
    each region's items are one run ``order[start:end]`` (regions nest)."""
    keys = [np.arange(len(ids))] + [ids[:, level] for level in range(ids.shape[1] - 1, -1, -1)]
    return np.lexsort(keys).astype(np.int32)


def _nearest(column: np.ndarray, distance: np.ndarray, n_regions: int) -> np.ndarray:
    """Per region, the member with the smallest ``distance`` (ties: lowest id)."""
    order = np.lexsort((np.arange(len(column)), distance, column))
    first = np.ones(len(order), dtype=bool)
    first[1:] = column[order][1:] != column[order][:-1]
    best = np.full(n_regions, -1, dtype=np.int64)
    best[column[order][first]] = order[first]
    return best


def level_counts(spans: np.ndarray, n_levels: int) -> list[int]:
    """How many regions are shown at each level (1..n_levels)."""
    return [int(((spans[:, 0] <= level) & (spans[:, 1] >= level)).sum())
            for level in range(1, n_levels + 1)]


def purity(ids: np.ndarray, truth: list[str | None]) -> float:
    """The share of items (with a value) whose value is their region's majority: the
    regions' purity against a known label, for measuring."""
    column = np.asarray(ids)
    values = np.array([t if t is not None else "" for t in truth], dtype=object)
    keep = values != ""
    total = 0
    for region in np.unique(column[keep]):
        _, counts = np.unique(values[keep & (column == region)], return_counts=True)
        total += int(counts.max())
    return total / max(1, int(keep.sum()))


def majority(values: list[str | None]) -> str | None:
    """The most common non-empty value (ties: the first in sorted order)."""
    present = sorted(v for v in values if v not in (None, ""))
    if not present:
        return None
    unique, counts = np.unique(np.array(present, dtype=object), return_counts=True)
    return str(unique[int(np.argmax(counts))])
