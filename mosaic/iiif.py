"""IIIF out, read side: the bundle described as IIIF Image API 3 and Presentation 3 documents.

Everything here is built from a finished bundle (docs/bundle.md) and a public
base URL (the server's request URL, or the prefix a static site is published
under); nothing is written to the bundle. See docs/iiif.md.

- The map is a level-0 image service (``map_info``): its tiles are the bundle's
  Deep Zoom tiles, one IIIF tile per DZI tile (``dzi_tile``), so a server can
  answer a IIIF tile request by sending the DZI file it names; ``full/max`` is
  ``overview.jpg`` (``maxWidth``/``maxHeight`` say so).
- Each item is a level-0 image service of one size, its cell (``item_info``).
- ``build_manifest`` is one Presentation 3 manifest with one canvas (the map);
  every item is a ``describing`` annotation on its cell's ``xywh`` region, the
  annotations paged into ``AnnotationPage`` documents of ``PAGE_SIZE`` items
  (``build_annotation_page``) referenced by id, so the manifest does not grow
  with N. Each item also has its own manifest (``build_item_manifest``): label =
  title, metadata = its CSV columns, one canvas showing its cell.
- ``write_documents`` writes all of these as files for a static site.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from mosaic.bundle import Bundle, Overview, Tiles
from mosaic.store import read_columns, read_metadata

IMAGE_CONTEXT = "http://iiif.io/api/image/3/context.json"
IMAGE_PROTOCOL = "http://iiif.io/api/image"
# Item annotations per AnnotationPage document: ~0.5 KB each, so a page is ~0.5 MB.
PAGE_SIZE = 1000
# A tile's URL format: the bundle's tile format as an IIIF format.
IIIF_FORMAT = {"jpeg": "jpg", "webp": "webp", "png": "png"}


def _base(url: str) -> str:
    return url.rstrip("/")


# -- Image API -------------------------------------------------------------

def scale_factors(tiles: Tiles) -> list[int]:
    """Powers of two from 1 until the whole map fits one tile (every one a DZI level)."""
    longest, factors = max(tiles.width, tiles.height), [1]
    while math.ceil(longest / factors[-1]) > tiles.tile_size \
            and len(factors) < tiles.levels:
        factors.append(factors[-1] * 2)
    return factors


def map_info(tiles: Tiles, overview: Overview, service_id: str) -> dict[str, Any]:
    """info.json of the map (``tiles``, ``overview``: the similarity layout's): level 0,
    tiles = the DZI tiles, ``max`` = the overview."""
    info: dict[str, Any] = {
        "@context": IMAGE_CONTEXT, "id": _base(service_id), "type": "ImageService3",
        "protocol": IMAGE_PROTOCOL, "profile": "level0",
        "width": tiles.width, "height": tiles.height,
        "maxWidth": overview.width, "maxHeight": overview.height,
        "sizes": [{"width": overview.width, "height": overview.height}],
    }
    if tiles.overlap == 0 and tiles.format == "jpeg":
        # A IIIF tile is exactly one DZI tile only without overlap; level 0 is jpg only.
        info["tiles"] = [{"width": tiles.tile_size, "scaleFactors": scale_factors(tiles)}]
    return info


def item_info(bundle: Bundle, service_id: str) -> dict[str, Any]:
    """info.json of one item's image: level 0, one size, its cell."""
    size = bundle.grid.cell_size
    return {"@context": IMAGE_CONTEXT, "id": _base(service_id), "type": "ImageService3",
            "protocol": IMAGE_PROTOCOL, "profile": "level0", "width": size, "height": size,
            "sizes": [{"width": size, "height": size}]}


def full_sizes(width: int, height: int, max_width: int, max_height: int) -> set[str]:
    """The ``size`` segments of a ``full`` request that name the largest offered size."""
    return {"max", f"{max_width},{max_height}", f"{max_width},"} | (
        {"full"} if (max_width, max_height) == (width, height) else set())


def dzi_tile(tiles: Tiles, region: str, size: str) -> tuple[int, int, int] | None:
    """The DZI tile ``(level, col, row)`` a level-0 IIIF tile request names, or None.

    A tile at scale factor ``s`` (a power of two listed in ``map_info``) covers
    ``region = x,y,w,h`` with ``x, y`` multiples of ``tile_size * s``, ``w, h`` clipped at
    the image's edge, and ``size = ceil(w / s),ceil(h / s)`` (or ``ceil(w / s),``); that
    is DZI tile ``(x / (tile_size * s), y / (tile_size * s))`` of level ``top - log2 s``.
    Anything else is not a tile of this image.
    """
    if tiles.overlap != 0:
        return None
    width, height, tile, top = tiles.width, tiles.height, tiles.tile_size, \
        tiles.levels - 1
    try:
        x, y, w, h = (int(v) for v in region.split(","))
        sw_text, _, sh_text = size.partition(",")
        sw, sh = int(sw_text), int(sh_text) if sh_text else None
    except ValueError:
        return None
    if region != f"{x},{y},{w},{h}":
        return None  # no signs, no padding, no decimals
    for factor in scale_factors(tiles):
        span = tile * factor
        if x % span or y % span or x >= width or y >= height:
            continue
        if w != min(span, width - x) or h != min(span, height - y):
            continue
        if sw != math.ceil(w / factor) or sh not in (None, math.ceil(h / factor)):
            continue
        return top - (factor.bit_length() - 1), x // span, y // span
    # libvips names the one tile that holds the whole image "full" (canonical form).
    return None


def full_tile(tiles: Tiles, size: str) -> tuple[int, int, int] | None:
    """``full/{w},{h}`` at the largest scale factor (one tile holds the image): its DZI tile."""
    factor = scale_factors(tiles)[-1]
    w, h = math.ceil(tiles.width / factor), math.ceil(tiles.height / factor)
    if size in (f"{w},{h}", f"{w},") and max(w, h) <= tiles.tile_size:
        return tiles.levels - 1 - (factor.bit_length() - 1), 0, 0
    return None


# -- Presentation API ------------------------------------------------------

class Urls:
    """Every IIIF URL of one collection under one public base (``.../iiif/<cid>``)."""

    def __init__(self, base: str) -> None:
        self.base = _base(base)

    @property
    def manifest(self) -> str:
        return f"{self.base}/manifest.json"

    @property
    def map_service(self) -> str:
        return f"{self.base}/map"

    @property
    def canvas(self) -> str:
        return f"{self.base}/canvas/map"

    def page(self, k: int) -> str:
        return f"{self.base}/annotations/{k}.json"

    def item_service(self, item: int) -> str:
        return f"{self.base}/items/{item}"

    def item_image(self, item: int) -> str:
        return f"{self.base}/items/{item}/full/max/0/default.jpg"

    def item_manifest(self, item: int) -> str:
        return f"{self.base}/items/{item}/manifest.json"


def _lang(text: str) -> dict[str, list[str]]:
    return {"none": [text]}


def _service(service_id: str):
    from iiif_prezi3 import ServiceV3

    return ServiceV3(id=service_id, type="ImageService3", profile="level0")


def _thumbnail(urls: Urls, item: int, cell: int) -> list[dict[str, Any]]:
    return [{"id": urls.item_image(item), "type": "Image", "format": "image/jpeg",
             "width": cell, "height": cell,
             "service": [{"id": urls.item_service(item), "type": "ImageService3",
                          "profile": "level0"}]}]


def n_pages(n_items: int, page_size: int = PAGE_SIZE) -> int:
    return max(1, math.ceil(n_items / page_size))


def build_manifest(bundle: Bundle, base: str, page_size: int = PAGE_SIZE) -> dict[str, Any]:
    """The collection's Presentation 3 manifest (iiif-prezi3): one canvas, the map.

    Its painting annotation is the map image with its level-0 service; the items'
    annotations are in ``n_pages`` AnnotationPage documents, referenced by id.
    """
    from iiif_prezi3 import AnnotationPageRef, Manifest

    urls = Urls(base)
    tiles, overview = bundle.tiles, bundle.overview
    document = Manifest(id=urls.manifest, label=_lang(bundle.title),
                        summary=_lang(f"{bundle.counts.items} items on a similarity map"
                                      f" of {bundle.grid.n_rows} x {bundle.grid.n_cols} cells"))
    canvas = document.make_canvas(id=urls.canvas, width=tiles.width,
                                  height=tiles.height, label=_lang("map"))
    annotation = canvas.add_image(  # the AnnotationPage holding the painting
        image_url=f"{urls.map_service}/full/max/0/default.jpg",
        anno_page_id=f"{urls.canvas}/page", anno_id=f"{urls.canvas}/image",
        format="image/jpeg", width=overview.width, height=overview.height)
    annotation.items[0].body.service = [_service(urls.map_service)]
    canvas.annotations = [AnnotationPageRef(id=urls.page(k), type="AnnotationPage")
                          for k in range(n_pages(bundle.counts.items, page_size))]
    return json.loads(document.json())


def build_annotation_page(bundle: Bundle, base: str, k: int, page_size: int = PAGE_SIZE
                          ) -> dict[str, Any]:
    """AnnotationPage ``k``: items ``k * page_size ...`` as ``describing`` annotations
    on their cells' ``xywh`` (label = title, thumbnail = the item's image, rendering =
    the item's own manifest, which holds its metadata). IndexError past the last page."""
    from iiif_prezi3 import Annotation, AnnotationPage, TextualBody

    n_items = bundle.counts.items
    pages = n_pages(n_items, page_size)
    if not 0 <= k < pages:
        raise IndexError(k)
    urls, cell = Urls(base), bundle.grid.cell_size
    first, stop = k * page_size, min(n_items, (k + 1) * page_size)
    items = []
    with closing(bundle.connect()) as conn:
        for item, title, row, col in conn.execute(
                "SELECT id, title, row, col FROM items WHERE id >= ? AND id < ? ORDER BY id",
                (first, stop)):
            items.append(Annotation(
                id=f"{urls.base}/annotations/item/{item}", motivation="describing",
                label=_lang(title or str(item)),
                body=TextualBody(value=title or str(item), format="text/plain"),
                target=f"{urls.canvas}#xywh={col * cell},{row * cell},{cell},{cell}",
                thumbnail=_thumbnail(urls, item, cell),
                rendering=[{"id": urls.item_manifest(item), "type": "Text",
                            "label": _lang("IIIF manifest of this item"),
                            "format": "application/ld+json"}]))
    page = AnnotationPage(id=urls.page(k), items=items)
    if k > 0:
        page.prev = urls.page(k - 1)
    if k + 1 < pages:
        page.next = urls.page(k + 1)
    return json.loads(page.json())


def build_item_manifest(bundle: Bundle, base: str, item: int) -> dict[str, Any]:
    """One item's own manifest: label = its title, metadata = its CSV columns (their
    verbatim names, empty values left out), one canvas painted with its cell image."""
    from iiif_prezi3 import KeyValueString, Manifest

    if not 0 <= item < bundle.counts.items:
        raise IndexError(item)
    urls, cell = Urls(base), bundle.grid.cell_size
    with closing(bundle.connect()) as conn:
        row = conn.execute("SELECT title, url FROM items WHERE id = ?", (item,)).fetchone()
        if row is None:  # removed (run.py remove)
            raise IndexError(item)
        title, url = row
        values = read_metadata(conn, read_columns(conn), item)
    metadata = [KeyValueString(label=_lang(name), value=_lang(_text(value)))
                for name, value in values.items() if value is not None and value != ""]
    document = Manifest(id=urls.item_manifest(item), label=_lang(title or str(item)),
                        metadata=metadata or None, thumbnail=_thumbnail(urls, item, cell),
                        partOf=[{"id": urls.manifest, "type": "Manifest"}])
    if url:
        document.homepage = [{"id": url, "type": "Text", "label": _lang(title or str(item)),
                              "format": "text/html"}]
    canvas = document.make_canvas(id=f"{urls.item_service(item)}/canvas", width=cell,
                                  height=cell, label=_lang(title or str(item)))
    annotation = canvas.add_image(  # the AnnotationPage holding the painting
        image_url=urls.item_image(item), anno_page_id=f"{urls.item_service(item)}/page",
        anno_id=f"{urls.item_service(item)}/image", format="image/jpeg",
        width=cell, height=cell)
    annotation.items[0].body.service = [_service(urls.item_service(item))]
    return json.loads(document.json())


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# -- a static copy ---------------------------------------------------------

def write_json(path: Path, document: dict[str, Any]) -> int:
    """Write one document compactly (temp file + rename); returns its size in bytes."""
    data = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return len(data)


def iter_item_files(bundle: Bundle, base: str) -> Iterator[tuple[str, bytes]]:
    """``(relative path, bytes)`` of every item's static IIIF files: info.json, its
    image under both size names (``max`` and ``c,c``) and its manifest."""
    cell = bundle.grid.cell_size
    urls = Urls(base)
    cells = bundle.open_cells()
    removed = set(bundle.removed_ids().tolist())
    try:
        for item in range(bundle.counts.items):
            if item in removed:
                continue
            image = cells.read_encoded(item)
            folder = f"items/{item}"
            yield f"{folder}/info.json", _dump(item_info(bundle, urls.item_service(item)))
            yield f"{folder}/full/max/0/default.jpg", image
            yield f"{folder}/full/{cell},{cell}/0/default.jpg", image
            yield f"{folder}/manifest.json", _dump(
                build_item_manifest(bundle, base, item))
    finally:
        cells.close()


def _dump(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def write_documents(bundle: Bundle, folder: Path, base: str, page_size: int = PAGE_SIZE
                    ) -> dict[str, int]:
    """Write the manifest, its annotation pages and every item's files under ``folder``
    (the folder published at ``base``). Returns bytes written per kind."""
    folder = Path(folder)
    sizes = {"manifest": write_json(folder / "manifest.json", build_manifest(
        bundle, base, page_size)), "annotations": 0, "items": 0}
    for k in range(n_pages(bundle.counts.items, page_size)):
        sizes["annotations"] += write_json(
            folder / "annotations" / f"{k}.json",
            build_annotation_page(bundle, base, k, page_size))
    for relative, data in iter_item_files(bundle, base):
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sizes["items"] += len(data)
    for item in bundle.removed_ids().tolist():  # published before the removal
        shutil.rmtree(folder / "items" / str(item), ignore_errors=True)
    return sizes

