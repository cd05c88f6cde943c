"""Comparing two bundles: equal contract files, equal metadata rows, equal manifests
apart from when and how they were made."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

# Parameters that say how a run was made, not what it made.
HOW_PARAMETERS = ("out", "jobs", "dask")


def read_table(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def bundle_files(bundle: Path) -> dict[str, bytes]:
    """Every contract file of a bundle (not cache/, not the lock), by relative path."""
    files = {}
    for path in sorted(bundle.rglob("*")):
        relative = path.relative_to(bundle).as_posix()
        if path.is_dir() or relative.startswith("cache/") or relative == ".lock":
            continue
        data = path.read_bytes()
        if path.name == "vips-properties.xml":  # dzsave stamps the date of writing
            data = b"\n".join(line for line in data.splitlines() if b" date=" not in line)
        files[relative] = data
    return files


def comparable_manifest(bundle: Path) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    for key in ("created", "timings"):
        manifest.pop(key)
    for name in HOW_PARAMETERS:
        manifest["parameters"].pop(name, None)
    return manifest


def assert_same_bundle(bundle: Path, clean: Path) -> None:
    assert comparable_manifest(bundle) == comparable_manifest(clean)
    for sql in ("SELECT * FROM items ORDER BY id", "SELECT * FROM metadata ORDER BY id",
                "SELECT * FROM facet_values ORDER BY name, value",
                "SELECT rowid, * FROM items_fts ORDER BY rowid"):
        assert read_table(bundle / "metadata.sqlite", sql) == \
            read_table(clean / "metadata.sqlite", sql), sql
    ours, theirs = bundle_files(bundle), bundle_files(clean)
    ours.pop("metadata.sqlite"), theirs.pop("metadata.sqlite")  # compared by content above
    ours.pop("manifest.json"), theirs.pop("manifest.json")
    assert sorted(ours) == sorted(theirs)
    different = [name for name in ours if ours[name] != theirs[name]]
    assert not different, f"files differ from the clean run: {different[:10]}"
