"""What ``run.py add`` and ``run.py remove`` both write into a bundle's next generation
(``mosaic.pipeline.generation``): arrays, the metadata columns read back, and the
labelled regions described again over the items on the map."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from mosaic.bundle import Bundle
from mosaic.pipeline import generation, regions
from mosaic.pipeline.store import write_json_atomic
from mosaic.store import sql_names


def save_npy(path: Path, array: np.ndarray) -> None:
    """``array`` as the ``.npy`` at ``path`` of the next generation (``generation.replace``)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
    generation.replace(path, write)


def column_values(new: Path, bundle: Bundle, names: list[str], n_items: int
                  ) -> dict[str, list[str | None]]:
    """Each named metadata column's values for every item, as text the way the CSV had
    them, from the next generation's ``metadata.sqlite``; None where an item has no row
    (a removed one)."""
    stored = sql_names(bundle.columns)
    values: dict[str, list] = {name: [None] * n_items for name in names}
    if not names:
        return values
    path = (new / bundle.metadata).resolve()
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        selected = ", ".join(stored[name] for name in names)
        for row in conn.execute(f"SELECT id, {selected} FROM metadata"):
            for name, value in zip(names, row[1:]):
                values[name][row[0]] = None if value is None else _as_text(value)
    finally:
        conn.close()
    return values


def _as_text(value) -> str:
    """A stored value as the CSV had it (a whole number stored as REAL without ``.0``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def relabel_regions(new: Path, bundle: Bundle, ids: np.ndarray, described: list[dict],
                    gone: np.ndarray, xy: np.ndarray, positions: np.ndarray) -> dict:
    """The labelled regions (``regions.without``) with each item's regions ``ids`` (N,
    levels), the ``gone`` items out: sizes, representatives, anchors and labels from the
    items on the map, terms read from the next generation's metadata (so no removed
    item's words stay in a label). Writes the three region files; returns the manifest's
    ``regions`` entry."""
    entry = bundle.regions
    if entry is None:
        raise ValueError(f"bundle {bundle.id!r} has no labelled regions")
    columns = [c for c in bundle.columns if c["name"] in entry.terms_from]
    values = column_values(new, bundle, [c["name"] for c in columns], len(ids))
    terms, vocabulary = regions.item_terms(values, {c["name"]: c["kind"] for c in columns})
    remaining, order, fresh = regions.without(ids, described, gone, xy, positions, terms,
                                              vocabulary)
    save_npy(new / entry.ids, remaining)
    generation.replace(new / entry.order,
                       lambda tmp: tmp.write_bytes(order.astype("<i4").tobytes()))
    generation.replace(new / entry.path, lambda tmp: write_json_atomic(
        tmp, {"levels": int(remaining.shape[1]), "regions": fresh}))
    return {**bundle.manifest["regions"], "labelled": sum(r["label"] is not None for r in fresh)}
