"""Layouts besides the similarity map: date columns, category blocks, a map, the user's xy.

``--layout SPEC`` (repeatable) names them; the similarity layout is always the
first. Every function here is arrays in, arrays out: each ``arrange_*`` takes
the items' values (one per item, missing ones as NaN or ``None``) and their
similarity layout ``xy`` (N, 2), and returns ``(positions, (n_rows, n_cols),
labels)``: int32 (N, 2) ``(row, col)``, a bijection of ALL items onto the grid
(items without a usable value go in one extra block, after the others), and
one label per block ``{"text", "row", "col", "n_rows", "n_cols", "count"}``
(the rectangle it covers, in cells).

Inside a block, items are placed by similarity: their similarity ``xy`` snapped
into the block's rectangle by rasterfairy (``mosaic.pipeline.grid``), so what
is near on the similarity map is near in the block.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mosaic.errors import UsageError
from mosaic.pipeline.grid import _assign_rasterfairy, _scale_to_grid, assign_grid

KINDS = ("similarity", "date", "category", "geo", "xy")
DATE_DEFAULTS = ("year", "date")
CATEGORY_DEFAULTS = ("category",)
LAT_NAMES = ("lat", "latitude")
LNG_NAMES = ("lng", "lon", "long", "longitude")
MAX_DATE_COLUMNS = 60  # more distinct years than this: buckets of years
YEAR_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
GEO_CELLS_PER_ITEM = 3
NO_DATE, NO_VALUE, NO_POSITION = "(no date)", "(no value)", "(no position)"
MISSING = (NO_DATE, NO_VALUE, NO_POSITION)  # the labels of the blocks of items without one
# Bumped when a placement changes, so cached layouts are recomputed.
ARRANGE_VERSION = 1

Labels = list[dict]
Arranged = tuple[np.ndarray, tuple[int, int], Labels]


@dataclass(frozen=True)
class LayoutSpec:
    """One ``--layout`` value; ``columns`` empty until resolved against the CSV."""

    kind: str
    columns: tuple[str, ...] = ()
    path: str | None = None
    text: str = ""  # as the user wrote it, for messages

    @property
    def name(self) -> str:
        """The normalised value, defaults resolved: ``date:year``, ``geo:lat,lng``."""
        if self.kind == "similarity":
            return "similarity"
        if self.kind == "xy":
            return f"xy:{self.path}"
        return f"{self.kind}:{','.join(self.columns)}"

    @property
    def slug(self) -> str:
        """A folder name for the layout's files (``layouts/<slug>/``)."""
        if self.kind == "similarity":
            return "similarity"
        body = Path(self.path).stem if self.kind == "xy" else "-".join(self.columns)
        body = re.sub(r"[^A-Za-z0-9._-]+", "-", body).strip("-.") or "layout"
        return f"{self.kind}-{body}"


def parse_layout_spec(text: str) -> LayoutSpec:
    """``similarity``, ``date[:COL]``, ``category[:COL]``, ``geo[:LAT,LNG]`` or ``xy:PATH``.

    >>> parse_layout_spec("geo:Lat,Lon").columns
    ('Lat', 'Lon')
    """
    kind, sep, rest = text.strip().partition(":")
    rest = rest.strip()
    usage = (f"--layout {text!r} is not a layout: use similarity, date[:COLUMN], "
             f"category[:COLUMN], geo[:LATCOL,LNGCOL] or xy:PATH")
    if kind not in KINDS or (sep and not rest):
        raise UsageError(usage)
    if kind == "similarity":
        if sep:
            raise UsageError(usage)
        return LayoutSpec("similarity", text=text)
    if kind == "xy":
        if not rest:
            raise UsageError("--layout xy needs a file: xy:PATH (a CSV of filename, x, y)")
        return LayoutSpec("xy", path=rest, text=text)
    if kind == "geo":
        if not rest:
            return LayoutSpec("geo", text=text)
        parts = [p.strip() for p in rest.split(",")]
        if len(parts) != 2 or not all(parts):
            raise UsageError(f"--layout {text!r}: geo takes two columns, geo:LATCOL,LNGCOL")
        return LayoutSpec("geo", tuple(parts), text=text)
    if "," in rest:
        raise UsageError(f"--layout {text!r}: {kind} takes one column, {kind}:COLUMN")
    return LayoutSpec(kind, (rest,) if rest else (), text=text)


def resolve_layout_specs(texts: Sequence[str], csv_columns: Sequence[str] | None
                         ) -> list[LayoutSpec]:
    """Parse ``--layout`` values and resolve their default columns against the CSV's.

    ``similarity`` is always first (added when not listed). ``csv_columns`` is
    None without ``--metadata``. One UsageError naming the layout and the
    column for a bad spec, a missing column or the same layout twice.
    """
    specs = [LayoutSpec("similarity", text="similarity")]
    seen = {"similarity"}
    slugs = {"similarity"}
    for text in texts:
        spec = parse_layout_spec(text)
        if spec.kind == "similarity":
            if sum(t.strip() == "similarity" for t in texts) > 1:
                raise UsageError("--layout similarity is given twice")
            continue
        if spec.kind != "xy":
            spec = _resolve_columns(spec, csv_columns)
        if spec.name in seen:
            raise UsageError(f"--layout {spec.name} is given twice")
        if spec.slug in slugs:
            raise UsageError(f"--layout {spec.name}: its folder name {spec.slug!r} is "
                             f"already another layout's")
        seen.add(spec.name)
        slugs.add(spec.slug)
        specs.append(spec)
    return specs


def _resolve_columns(spec: LayoutSpec, csv_columns: Sequence[str] | None) -> LayoutSpec:
    if spec.columns:
        wanted = list(spec.columns)
    elif spec.kind == "date":
        wanted = [_first_named(csv_columns, DATE_DEFAULTS) or "year"]
    elif spec.kind == "category":
        wanted = [_first_named(csv_columns, CATEGORY_DEFAULTS) or "category"]
    else:
        wanted = [_first_named(csv_columns, LAT_NAMES) or "lat",
                  _first_named(csv_columns, LNG_NAMES) or "lng"]
    name = f"{spec.kind}:{','.join(wanted)}"
    if csv_columns is None:
        raise UsageError(f"--layout {name} needs --metadata (a CSV with column "
                         f"{' and '.join(repr(c) for c in wanted)})")
    for column in wanted:
        if column not in csv_columns:
            raise UsageError(f"--layout {name}: the CSV has no column {column!r} "
                             f"(columns: {', '.join(csv_columns)})")
    return LayoutSpec(spec.kind, tuple(wanted), text=spec.text)


def _first_named(columns: Sequence[str] | None, names: Sequence[str]) -> str | None:
    """The first CSV column whose name (any case) is in ``names``, in ``names``' order."""
    for name in names:
        for column in columns or []:
            if column.lower() == name:
                return column
    return None


# -- values -------------------------------------------------------------------

_ISO_DATE = re.compile(r"^([+-]?\d{1,5})(?:-\d{1,2}(?:-\d{1,2})?(?:[T ][0-9:.+\-Z ]*)?)?$")


def parse_years(values: Sequence[str | None]) -> np.ndarray:
    """float64 (N,) years from numbers or ISO dates/datetimes; NaN where unusable.

    >>> parse_years(["1990", "1990.7", "2001-05-03", "2001-05-03T10:00:00", "", None, "x"])
    array([1990., 1990., 2001., 2001.,   nan,   nan,   nan])
    """
    years = np.full(len(values), np.nan)
    for i, value in enumerate(values):
        text = (value or "").strip()
        if not text:
            continue
        try:
            number = float(text)
        except ValueError:
            match = _ISO_DATE.match(text)
            if match:
                years[i] = float(int(match.group(1)))
            continue
        if math.isfinite(number):
            years[i] = float(math.floor(number))
    return years


def parse_coordinates(lat: Sequence[str | None], lng: Sequence[str | None]) -> np.ndarray:
    """float64 (N, 2) ``(lat, lng)``; NaN rows where either is missing or out of range."""
    out = np.full((len(lat), 2), np.nan)
    for i, (a, b) in enumerate(zip(lat, lng, strict=True)):
        try:
            la, lo = float((a or "").strip()), float((b or "").strip())
        except ValueError:
            continue
        if -90 <= la <= 90 and -180 <= lo <= 180:
            out[i] = la, lo
    return out


def layout_values(kind: str, values: Sequence[Sequence[str | None]]):
    """A column layout's per-item values from its columns' raw strings: years (date),
    (lat, lng) rows (geo) or category texts."""
    if kind == "date":
        return parse_years(values[0])
    if kind == "geo":
        return parse_coordinates(values[0], values[1])
    return category_values(values[0])


def category_values(values: Sequence[str | None]) -> list[str | None]:
    """Stripped category strings; None for an empty one."""
    return [(v or "").strip() or None for v in values]


# -- placement inside a rectangle ---------------------------------------------

def fill_rect(xy: np.ndarray, n_rows: int, n_cols: int, partial: str = "bottom") -> np.ndarray:
    """Place k = len(xy) items in an ``n_rows x n_cols`` rectangle by similarity.

    Every row is full except one, the ``partial`` ("top" or "bottom") row,
    which is filled from the left. Returns int64 (k, 2) (row, col) in the
    rectangle. Needs ``(n_rows - 1) * n_cols < k <= n_rows * n_cols``.
    """
    xy = np.asarray(xy, dtype=np.float64)
    k = len(xy)
    positions = np.zeros((k, 2), dtype=np.int64)
    if k == 0:
        return positions
    assert (n_rows - 1) * n_cols < k <= n_rows * n_cols, (k, n_rows, n_cols)
    in_last = k - (n_rows - 1) * n_cols
    by_y = np.argsort(xy[:, 1], kind="stable")
    # The partial row takes the items at that end of the similarity layout's y.
    if partial == "top":
        edge, rest = by_y[:in_last], by_y[in_last:]
        edge_row, rest_row0 = 0, 1
    else:
        edge, rest = by_y[k - in_last:], by_y[:k - in_last]
        edge_row, rest_row0 = n_rows - 1, 0
    edge = edge[np.argsort(xy[edge, 0], kind="stable")]
    positions[edge, 0] = edge_row
    positions[edge, 1] = np.arange(len(edge))
    if len(rest):
        scaled = _scale_to_grid(xy[rest], n_rows - 1, n_cols)
        inner = _assign_rasterfairy(scaled, n_rows - 1, n_cols)
        positions[rest, 0] = inner[:, 0] + rest_row0
        positions[rest, 1] = inner[:, 1]
    return positions


def _block_shape(k: int) -> tuple[int, int]:
    """Near-square (n_rows, n_cols) for a block of k items."""
    n_cols = max(1, math.ceil(math.sqrt(k)))
    return max(1, math.ceil(k / n_cols)), n_cols


def _label(text: str, row: int, col: int, n_rows: int, n_cols: int, count: int) -> dict:
    return {"text": text, "row": int(row), "col": int(col), "n_rows": int(n_rows),
            "n_cols": int(n_cols), "count": int(count)}


# -- date ---------------------------------------------------------------------

def year_bucket(years: np.ndarray) -> int:
    """Years per column: 1, or the smallest of 5, 10, 25, ... giving <= 60 columns."""
    finite = years[np.isfinite(years)]
    if len(finite) == 0:
        return 1
    low, high = int(finite.min()), int(finite.max())
    for size in YEAR_BUCKETS:
        if high // size - low // size + 1 <= MAX_DATE_COLUMNS:
            return size
    return YEAR_BUCKETS[-1]


def arrange_date(years: np.ndarray, xy: np.ndarray) -> Arranged:
    """One column per year (or bucket of years), left to right by date, bottom-up.

    ``years`` float (N,), NaN = no date. Every column is ``w`` cells wide and the
    items of a bucket are stacked from the bottom row up (a histogram bar),
    placed by similarity inside it; empty buckets between the first and the
    last keep their (empty) column; items without a date get a last column
    labelled "(no date)". ``w`` makes the whole grid near-square.
    """
    years = np.asarray(years, dtype=np.float64)
    n = len(years)
    present = np.isfinite(years)
    size = year_bucket(years)
    if present.any():
        low = int(years[present].min()) // size
        high = int(years[present].max()) // size
        bucket = np.full(n, -1, dtype=np.int64)
        bucket[present] = years[present].astype(np.int64) // size - low
        n_buckets = high - low + 1
    else:
        low, n_buckets, bucket = 0, 0, np.full(n, -1, dtype=np.int64)
    missing = ~present
    texts = [_bucket_text((low + b) * size, size) for b in range(n_buckets)]
    if missing.any():
        bucket[missing] = n_buckets
        texts.append(NO_DATE)
        n_buckets += 1
    counts = np.bincount(bucket, minlength=n_buckets)
    width = _column_width(counts)
    n_rows = max(1, int(max(math.ceil(c / width) for c in counts)))
    n_cols = n_buckets * width
    positions = np.zeros((n, 2), dtype=np.int64)
    labels = []
    order = np.argsort(bucket, kind="stable")
    starts = np.searchsorted(bucket[order], np.arange(n_buckets + 1))
    for b in range(n_buckets):
        ids = order[starts[b]:starts[b + 1]]
        height = math.ceil(len(ids) / width)
        if len(ids):
            inner = fill_rect(xy[ids], height, width, partial="top")
            positions[ids, 0] = inner[:, 0] + n_rows - height
            positions[ids, 1] = inner[:, 1] + b * width
        labels.append(_label(texts[b], n_rows - height, b * width, height, width, len(ids)))
    return positions.astype(np.int32), (n_rows, n_cols), labels


def _bucket_text(start: int, size: int) -> str:
    return str(start) if size == 1 else f"{start}-{start + size - 1}"


def _column_width(counts: np.ndarray) -> int:
    """The column width w that makes ``len(counts)`` columns of w near-square overall."""
    n_buckets, top = len(counts), int(max(counts.max(), 1))
    best, best_score = 1, None
    for width in range(1, top + 1):
        n_rows = math.ceil(top / width)
        n_cols = n_buckets * width
        score = (abs(math.log(n_rows / n_cols)), n_rows * n_cols)
        if best_score is None or score < best_score:
            best, best_score = width, score
        if n_cols > n_rows:  # wider only gets less square
            break
    return best


# -- category -----------------------------------------------------------------

def arrange_category(values: Sequence[str | None], xy: np.ndarray) -> Arranged:
    """One near-square block per value, largest first, shelf-packed near-square.

    One empty cell of gutter between blocks; items without a value go in a last
    block labelled "(no value)". Inside a block, items are placed by similarity.
    """
    values = list(values)
    n = len(values)
    groups: dict[str, list[int]] = {}
    missing = []
    for i, value in enumerate(values):
        if value is None or value == "":
            missing.append(i)
        else:
            groups.setdefault(value, []).append(i)
    blocks = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    if missing:
        blocks.append((NO_VALUE, missing))
    shapes = [_block_shape(len(ids)) for _, ids in blocks]
    origins, (n_rows, n_cols) = _pack_shelves(shapes)
    positions = np.zeros((n, 2), dtype=np.int64)
    labels = []
    for (text, ids), (h, w), (r0, c0) in zip(blocks, shapes, origins, strict=True):
        ids = np.asarray(ids, dtype=np.int64)
        inner = fill_rect(xy[ids], h, w, partial="bottom")
        positions[ids] = inner + (r0, c0)
        labels.append(_label(text, r0, c0, h, w, len(ids)))
    return positions.astype(np.int32), (n_rows, n_cols), labels


def _pack_shelves(shapes: list[tuple[int, int]], gutter: int = 1
                  ) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Shelf packing of (h, w) blocks in order, the shelf width chosen near-square."""
    widest = max(w for _, w in shapes)
    total = sum(w for _, w in shapes) + gutter * (len(shapes) - 1)
    area = sum((h + gutter) * (w + gutter) for h, w in shapes)
    guesses = {widest, total, max(widest, int(math.sqrt(area)))}
    guesses.update(int(x) for x in np.geomspace(widest, max(total, widest), 64))
    best = None
    for limit in sorted(guesses):
        origins, size = _shelves(shapes, limit, gutter)
        score = (abs(math.log(size[0] / size[1])), size[0] * size[1])
        if best is None or score < best[0]:
            best = (score, origins, size)
    return best[1], best[2]


def _shelves(shapes, limit, gutter):
    origins, row, col, shelf_h, width = [], 0, 0, 0, 0
    for h, w in shapes:
        if col and col + w > limit:
            row, col, shelf_h = row + shelf_h + gutter, 0, 0
        origins.append((row, col))
        width = max(width, col + w)
        col += w + gutter
        shelf_h = max(shelf_h, h)
    return origins, (row + shelf_h, width)


# -- geo ----------------------------------------------------------------------

def arrange_geo(latlng: np.ndarray, xy: np.ndarray) -> Arranged:
    """An equirectangular map: lng -> col (west left), lat -> row (north up).

    ``latlng`` float (N, 2), NaN rows = no position. The map has about 3 cells
    per placed item, in the aspect of the points' bounding box; each item
    takes the free cell nearest its position (those sharing a cell are placed
    by a spiral search around it; nothing is quadratic in N). Items without a
    position go in a block under the map labelled "(no position)".
    """
    latlng = np.asarray(latlng, dtype=np.float64)
    n = len(latlng)
    present = np.flatnonzero(np.isfinite(latlng).all(axis=1))
    missing = np.setdiff1d(np.arange(n), present)
    positions = np.zeros((n, 2), dtype=np.int64)
    labels: Labels = []
    n_rows = n_cols = 0
    if len(present):
        lat, lng = latlng[present, 0], latlng[present, 1]
        lat_span, lng_span = np.ptp(lat), np.ptp(lng)
        aspect = lng_span / lat_span if lat_span > 0 and lng_span > 0 else 1.0
        aspect = min(max(aspect, 0.25), 4.0)
        cells = GEO_CELLS_PER_ITEM * len(present)
        n_cols = max(1, math.ceil(math.sqrt(cells * aspect)))
        n_rows = max(1, math.ceil(cells / n_cols))
        col = (lng - lng.min()) / (lng_span or 1.0) * (n_cols - 1) + 0.5
        row = (lat.max() - lat) / (lat_span or 1.0) * (n_rows - 1) + 0.5
        if lng_span == 0:
            col = np.full(len(present), n_cols / 2)
        if lat_span == 0:
            row = np.full(len(present), n_rows / 2)
        positions[present] = place_nearest_free(np.column_stack([row, col]), n_rows, n_cols)
    if len(missing):
        width = max(n_cols, 1) if len(present) else _block_shape(len(missing))[1]
        width = min(width, len(missing))
        height = math.ceil(len(missing) / width)
        top = n_rows + 1 if len(present) else 0
        inner = fill_rect(xy[missing], height, width, partial="bottom")
        positions[missing] = inner + (top, 0)
        labels.append(_label(NO_POSITION, top, 0, height, width, len(missing)))
        n_rows, n_cols = top + height, max(n_cols, width)
    return positions.astype(np.int32), (n_rows, n_cols), labels


def place_nearest_free(points: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Each point (row, col in continuous cell units) in a distinct cell near it.

    Points alone in their cell keep it (all at once). Then the cells shared by
    several points are resolved, least crowded first: each group takes the free
    cells nearest its cell, found on a precomputed spiral of offsets (widened
    when it runs out), and its points are matched to them by position. Work is
    about the number of cells each group looks at, not N^2.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    if n > n_rows * n_cols:
        raise ValueError("more points than cells")
    target = np.column_stack([np.clip(np.floor(points[:, 0]), 0, n_rows - 1),
                              np.clip(np.floor(points[:, 1]), 0, n_cols - 1)]).astype(np.int64)
    flat = target[:, 0] * n_cols + target[:, 1]
    order = np.argsort(flat, kind="stable")
    cells, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
    taken = np.zeros(n_rows * n_cols, dtype=bool)
    out = np.empty((n, 2), dtype=np.int64)
    alone = counts == 1
    single = order[starts[alone]]
    out[single] = target[single]
    taken[cells[alone]] = True
    spiral = Spiral()
    for g in np.argsort(counts, kind="stable")[int(alone.sum()):]:
        ids = order[starts[g]:starts[g] + counts[g]]
        r0, c0 = divmod(int(cells[g]), n_cols)
        free = spiral.free_cells(r0, c0, len(ids), taken, n_rows, n_cols)
        taken[free[:, 0] * n_cols + free[:, 1]] = True
        out[ids] = _match(points[ids], free)
    return out


class Spiral:
    """Cell offsets sorted by distance from (0, 0), grown on demand."""

    def __init__(self) -> None:
        self.radius = 0
        self.offsets = np.zeros((1, 2), dtype=np.int64)

    def grow(self, radius: int) -> None:
        span = np.arange(-radius, radius + 1)
        dr, dc = np.meshgrid(span, span, indexing="ij")
        offsets = np.column_stack([dr.ravel(), dc.ravel()])
        distance = (offsets.astype(np.float64) ** 2).sum(axis=1)
        self.offsets = offsets[np.argsort(distance, kind="stable")]
        self.radius = radius

    def free_cells(self, r0: int, c0: int, k: int, taken: np.ndarray, n_rows: int,
                   n_cols: int) -> np.ndarray:
        """The ``k`` free cells nearest (r0, c0), nearest first."""
        radius = max(1, math.ceil(math.sqrt(k)))
        while True:
            if radius > self.radius:
                self.grow(radius)
            # offsets within ``radius`` (Euclidean) are exact; beyond, the square's corners
            inside = self.offsets[(self.offsets ** 2).sum(axis=1) <= radius * radius]
            cand = inside + (r0, c0)
            ok = ((cand[:, 0] >= 0) & (cand[:, 0] < n_rows) & (cand[:, 1] >= 0)
                  & (cand[:, 1] < n_cols))
            cand = cand[ok]
            cand = cand[~taken[cand[:, 0] * n_cols + cand[:, 1]]]
            if len(cand) >= k:
                return cand[:k]
            if radius > n_rows + n_cols:
                raise ValueError("no free cells left")
            radius *= 2


def _match(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Give each point one of ``cells`` (as many), keeping their relative positions."""
    if len(points) == 1:
        return cells
    centres = cells + 0.5
    if len(points) <= 300:
        from scipy.optimize import linear_sum_assignment

        cost = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        rows, cols = linear_sum_assignment(cost)
        out = np.empty_like(cells)
        out[rows] = cells[cols]
        return out
    # Many points in one cell: their order hardly matters; keep them west-east.
    out = np.empty_like(cells)
    out[np.argsort(points[:, 1], kind="stable")] = cells[np.argsort(cells[:, 1], kind="stable")]
    return out


# -- the user's xy ------------------------------------------------------------

def arrange_xy(coords: np.ndarray, xy: np.ndarray, random_state: int = 0) -> Arranged:
    """The user's own coordinates (x right, y down as in ``--embedding xy:``) snapped
    to a grid (``assign_grid``); rows with NaN go in a block under it, "(no position)"."""
    coords = np.asarray(coords, dtype=np.float64)
    n = len(coords)
    present = np.flatnonzero(np.isfinite(coords).all(axis=1))
    missing = np.setdiff1d(np.arange(n), present)
    positions = np.zeros((n, 2), dtype=np.int64)
    labels: Labels = []
    n_rows = n_cols = 0
    if len(present):
        placed, (n_rows, n_cols) = assign_grid(coords[present], "rasterfairy", random_state)
        positions[present] = placed
    if len(missing):
        width = min(n_cols or _block_shape(len(missing))[1], len(missing))
        height = math.ceil(len(missing) / width)
        top = n_rows + 1 if len(present) else 0
        positions[missing] = fill_rect(xy[missing], height, width) + (top, 0)
        labels.append(_label(NO_POSITION, top, 0, height, width, len(missing)))
        n_rows, n_cols = top + height, max(n_cols, width)
    return positions.astype(np.int32), (n_rows, n_cols), labels
