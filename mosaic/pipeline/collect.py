"""Collect stage: find the input images, read the metadata CSV and match the two.

Input order is the sorted list of paths; item ids are assigned from it after
decoding, skipping failures without gaps.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mosaic.errors import MetadataError, UsageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".tif", ".tiff",
    ".heic", ".heif", ".avif", ".bmp", ".jp2", ".svg", ".v", ".vips",
}
LIST_SUFFIXES = {".txt", ".lst", ".list"}
YEAR_RANGE = (1000, 2200)
FACET_MAX_INTEGERS = 20


@dataclass
class Inputs:
    """The candidate image paths, sorted, and what was left out on purpose."""

    paths: list[str]
    root: str | None = None  # folder that relative CSV filenames are resolved against
    ignored: list[str] = field(default_factory=list)  # non-image files in a folder
    urls: list[str] = field(default_factory=list)  # a list of IIIF URLs (pipeline/iiif_in.py)


@dataclass
class Metadata:
    """A parsed metadata CSV: its columns (in file order) and rows."""

    columns: list[str]
    rows: list[dict[str, str]]
    filename_column: str
    encoding: str


def collect_inputs(spec: str) -> Inputs:
    """Resolve ``--images``: a folder (recursive), a glob (``**`` allowed) or a list file."""
    if not spec:
        raise UsageError("--images is required: a folder, a glob or a text file of paths")
    path = Path(spec)
    if path.is_dir():
        return _collect_folder(path)
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return _collect_list(path)
    matches = sorted(glob.glob(spec, recursive=True))
    if not matches:
        raise UsageError(f"--images {spec!r} matches no file (folder, glob or .txt list)")
    files = [m for m in matches if not os.path.isdir(m)]
    return Inputs(paths=sorted(files), root=_common_root(files))


def _collect_folder(folder: Path) -> Inputs:
    paths, ignored = [], []
    for directory, subdirs, names in os.walk(folder):
        subdirs.sort()
        for name in names:
            full = os.path.join(directory, name)
            is_image = Path(name).suffix.lower() in IMAGE_SUFFIXES
            (paths if is_image else ignored).append(full)
    if not paths:
        raise UsageError(f"--images folder {folder} holds no image files")
    return Inputs(paths=sorted(paths), root=str(folder), ignored=sorted(ignored))


def _collect_list(list_file: Path) -> Inputs:
    base = list_file.parent
    paths, urls = [], []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith(("http://", "https://")):  # IIIF manifests or image services
            urls.append(line)
        elif line and not line.startswith("#"):
            paths.append(str(base / line) if not os.path.isabs(line) else line)
    if urls and paths:
        raise UsageError(f"--images list {list_file} mixes URLs and paths: a list is either "
                         f"IIIF manifest/image service URLs or image files")
    if urls:
        return Inputs(paths=[], urls=list(dict.fromkeys(urls)))
    if not paths:
        raise UsageError(f"--images list {list_file} names no files")
    return Inputs(paths=sorted(set(paths)), root=_common_root(paths))


def display_path(path: str) -> str:
    """``path`` as valid Unicode text: undecodable bytes in a name become \\xNN escapes.

    Python keeps such bytes as lone surrogates, which neither JSON nor SQLite
    can store; this is for the manifest and the metadata store, not for opening.
    """
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def _common_root(paths: list[str]) -> str | None:
    """The deepest folder holding every path; "." for relative paths with no folder in
    common (``images/a.jpg`` and ``copies/b.jpg``), so a CSV can still name them."""
    try:
        return os.path.commonpath([os.path.dirname(p) or "." for p in paths]) or "."
    except ValueError:
        return None


def read_metadata(path: str | Path, filename_column: str = "filename") -> Metadata:
    """Read a metadata CSV: UTF-8 (with or without BOM), else Windows-1252/latin-1."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise MetadataError(f"--metadata {path}: {error.strerror}") from None
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if encoding != "utf-8-sig":
        logger.warning("%s is not UTF-8; read it as %s", path, encoding)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else ""
                 for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as error:
        raise MetadataError(f"--metadata {path}: not a valid CSV ({error})") from None
    if not columns:
        raise MetadataError(f"--metadata {path} is empty (no header row)")
    if len(set(columns)) != len(columns) or "" in columns:
        raise MetadataError(f"--metadata {path}: column names must be unique and non-empty")
    if filename_column not in columns:
        raise MetadataError(
            f"--metadata {path} has no {filename_column!r} column (columns: "
            f"{', '.join(columns)}); set --filename-column"
        )
    return Metadata(columns=columns, rows=rows, filename_column=filename_column,
                    encoding=encoding)


@dataclass
class Match:
    """Which CSV row (index) belongs to each input path, and what did not match."""

    row_of_input: list[int | None]
    images_without_row: list[str]
    rows_without_image: list[str]


def match_metadata(inputs: Inputs, metadata: Metadata) -> Match:
    """Match rows to images by relative path first, then by unique basename."""
    by_relative: dict[str, int] = {}
    by_name: dict[str, list[int]] = {}
    for index, path in enumerate(inputs.paths):
        if inputs.root:
            by_relative[os.path.normpath(os.path.relpath(path, inputs.root))] = index
        by_name.setdefault(os.path.basename(path), []).append(index)
    row_of_input: list[int | None] = [None] * len(inputs.paths)
    rows_without_image = []
    for row_index, row in enumerate(metadata.rows):
        key = row.get(metadata.filename_column, "")
        index = by_relative.get(os.path.normpath(key)) if key else None
        if index is None and key:
            candidates = by_name.get(os.path.basename(key), [])
            index = candidates[0] if len(candidates) == 1 else None
        if index is None or row_of_input[index] is not None:
            rows_without_image.append(key)
        else:
            row_of_input[index] = row_index
    images_without_row = [p for p, r in zip(inputs.paths, row_of_input) if r is None]
    return Match(row_of_input, images_without_row, rows_without_image)


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def check_template(option: str, template: str | None, columns: list[str]) -> None:
    """UsageError if a display template names a column the CSV lacks."""
    if not template:
        return
    try:
        names = template_fields(template)
    except ValueError as error:
        raise UsageError(f"{option} {template!r} is not a valid template: {error}") from None
    known = set(columns) | {"filename", "stem", "id"}
    for name in names:
        if name not in known:
            raise UsageError(
                f"{option} {template!r} names unknown column {name!r}; known: "
                f"{', '.join(sorted(known))}"
            )


def format_template(template: str | None, values: dict[str, str]) -> str | None:
    """Format a display template; missing values become empty strings."""
    if not template:
        return None
    return template.format_map(_Blank(values))


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


TAGS_COLUMN = "tags"  # PixPlot's convention: pipe-delimited tags, any case of this name
TAGS_SEPARATOR = "|"


def split_tags(value: str | None) -> list[str]:
    """A ``tags`` value's tags: split on ``|``, stripped, empties dropped, each once.

    >>> split_tags("red|sky|  sea |sky||")
    ['red', 'sky', 'sea']
    """
    tags = (tag.strip() for tag in (value or "").split(TAGS_SEPARATOR))
    return list(dict.fromkeys(tag for tag in tags if tag))


def tags_columns(metadata: Metadata, named: Iterable[str] = ()) -> list[str]:
    """The CSV's tags columns: one called ``tags`` (any case) and those ``named``
    (``--tags-column``, each of which must exist), in file order."""
    named = list(named)
    check_columns("--tags-column", named, metadata)
    if metadata.filename_column in named:
        raise UsageError(f"--tags-column {metadata.filename_column!r} is the filename column")
    wanted = set(named)
    return [c for c in metadata.columns if c != metadata.filename_column
            and (c in wanted or c.lower() == TAGS_COLUMN)]


def check_columns(option: str, names: Iterable[str], metadata: Metadata | None) -> None:
    """UsageError naming the first of ``names`` that ``metadata`` (the CSV) lacks."""
    for name in names:
        if metadata is None:
            raise UsageError(f"{option} {name!r} needs --metadata (a CSV with that column)")
        if name not in metadata.columns:
            raise UsageError(f"{option} {name!r} is not a column of the metadata CSV "
                             f"(columns: {', '.join(metadata.columns)})")


def infer_column_kinds(metadata: Metadata, tags: Iterable[str] = ()) -> dict[str, str]:
    """Classify each non-filename column as number, year, facet, tags or text.

    ``tags`` (``--tags-column``) names further columns of pipe-delimited tags
    besides one called ``tags``: see ``tags_columns``.
    """
    kinds = {}
    n_rows = max(len(metadata.rows), 1)
    tagged = set(tags_columns(metadata, tags))
    for column in metadata.columns:
        if column == metadata.filename_column:
            continue
        if column in tagged:
            kinds[column] = "tags"  # multi-valued facet: mosaic/pipeline/metadata.py
            continue
        values = [row.get(column, "") for row in metadata.rows]
        filled = [v for v in values if v != ""]
        numbers = [_as_number(v) for v in filled]
        if filled and all(n is not None for n in numbers):
            distinct_numbers = set(numbers)
            if (len(distinct_numbers) <= FACET_MAX_INTEGERS and "year" not in column.lower()
                    and all(float(n).is_integer() for n in distinct_numbers)
                    and len(filled) >= 3 * len(distinct_numbers)):
                kinds[column] = "facet"  # a small set of integer codes, e.g. a class label
                continue
            is_year = all(float(n).is_integer() and YEAR_RANGE[0] <= n <= YEAR_RANGE[1]
                          for n in numbers)
            kinds[column] = "year" if is_year and "year" in column.lower() else "number"
            continue
        distinct = set(filled)
        short = all(len(v) <= 60 for v in distinct)
        few = len(distinct) <= max(2, min(200, n_rows // 2))
        kinds[column] = "facet" if filled and short and few else "text"
    return kinds


def _as_number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def item_values(metadata: Metadata, match: Match, kept: Iterable[int], column: str
                ) -> list[str | None]:
    """``column``'s raw value for each kept input (in item-id order); None where the
    image has no CSV row (an empty cell stays ``""``)."""
    rows = metadata.rows
    return [rows[r].get(column, "") if r is not None else None
            for r in (match.row_of_input[i] for i in kept)]
