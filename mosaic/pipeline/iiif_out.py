"""IIIF out, write side: the map cut as a static IIIF Image API 3 level-0 pyramid.

A static host cannot translate IIIF tile URLs into the bundle's Deep Zoom tiles
as the server does (``server/iiif.py``), so a published site gets the pyramid
itself: libvips ``dzsave(layout="iiif3")`` over the grid matrix streamed from the
bundle's cells exactly as the render stage streams it (``render.stream_matrix``),
plus ``full/max`` (the bundle's overview) so that ``info.json`` is the one
``mosaic.iiif.map_info`` describes. ``write_iiif`` adds every other IIIF document
(``mosaic.iiif.write_documents``). See docs/iiif.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from mosaic import iiif
from mosaic.bundle import Bundle
from mosaic.pipeline import render


def write_map_image(directory: str | os.PathLike, folder: str | os.PathLike, base: str
                    ) -> dict[str, Any]:
    """Write the map's level-0 IIIF image under ``folder`` (published at ``base``: the
    service id is ``base`` itself) and return its info.json. ``folder`` is replaced."""
    directory, folder = Path(directory), Path(folder)
    bundle = Bundle.open(directory)
    tiles, gridded, overview = bundle.tiles, bundle.grid, bundle.overview
    positions = bundle.read_layout_positions()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with bundle.open_cells() as cells:
        matrix = render.stream_matrix(cells, positions, gridded.n_rows, gridded.n_cols,
                                      bundle.background)
        # dzsave writes <tmp>/image/{info.json, region/size/0/default.jpg}.
        render.dzsave_streamed(matrix, tmp / "image", tile_size=tiles.tile_size, overlap=0,
                               suffix=f".jpg[Q={tiles.quality},strip]", layout="iiif3",
                               id="http://localhost")
    image = tmp / "image"
    (image / "vips-properties.xml").unlink(missing_ok=True)
    written = json.loads((image / "info.json").read_text())
    info = iiif.map_info(dataclasses.replace(tiles, overlap=0, format="jpeg"), overview, base)
    # libvips writes id = <its id>/<basename>; the site's is the published base URL. Its
    # tiles are the same (size, scale factors) as the server's; max and sizes are added.
    assert written["tiles"] == info["tiles"], (written["tiles"], info["tiles"])
    max_image = bundle.file(overview.path).read_bytes()
    for size in iiif.full_sizes(tiles.width, tiles.height, overview.width, overview.height):
        target = image / "full" / size / "0" / "default.jpg"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(max_image)
    iiif.write_json(image / "info.json", info)
    shutil.rmtree(folder, ignore_errors=True)
    image.rename(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    return info


def write_iiif(directory: str | os.PathLike, folder: str | os.PathLike, base: str,
               page_size: int = iiif.PAGE_SIZE) -> dict[str, int]:
    """Every IIIF file of one bundle under ``folder``, to be published at ``base``
    (``<base>/manifest.json``, ``<base>/map/info.json``, ``<base>/items/<id>/...``):
    what ``server/iiif.py`` serves, as static files. Returns bytes written per kind."""
    directory, folder = Path(directory), Path(folder)
    urls = iiif.Urls(base)
    write_map_image(directory, folder / "map", urls.map_service)
    sizes = iiif.write_documents(Bundle.open(directory), folder, base, page_size)
    sizes["map"] = sum(p.stat().st_size for p in (folder / "map").rglob("*") if p.is_file())
    return sizes
