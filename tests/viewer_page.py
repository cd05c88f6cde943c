"""Reading the viewer's state in a browser page: the view in the URL hash, where an
item's cell is on screen, and the dimming overlay's alpha there. Shared by the
server viewer's and the published site's browser tests."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit


def watch(page, problems: list[str], site: str | None = None, deny_api: bool = False) -> None:
    """Record in ``problems`` every console error and page error of ``page``, and, with
    ``site``, every request that leaves it (``blob:`` and ``data:`` URLs aside) or, with
    ``deny_api``, asks a server's ``/api``: a test asserts ``problems == []`` at the end."""
    def request(r) -> None:
        if site is not None and not r.url.startswith((site, "blob:", "data:")) or \
                deny_api and "/api/" in urlsplit(r.url).path + "/":
            problems.append(f"request: {r.url}")

    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", request)


def view_of(page) -> tuple[float, float, float]:
    params = parse_qs(urlsplit(page.url).fragment)
    x, y, zoom = (float(v) for v in params["view"][0].split(","))
    return x, y, zoom


def cell_centre(page, layout, item_id: int) -> tuple[float, float]:
    """Where an item's cell is on screen, from the view the page wrote to its hash."""
    cx, cy, zoom = view_of(page)
    box = page.locator("#viewer").bounding_box()
    scale = box["width"] * zoom  # screen pixels per viewport unit (image width = 1)
    row, col = layout["positions"][item_id]
    size = layout["grid"]["cell_size"] / layout["tiles"]["width"]
    vx, vy = (col + 0.5) * size, (row + 0.5) * size
    return (box["x"] + box["width"] / 2 + (vx - cx) * scale,
            box["y"] + box["height"] / 2 + (vy - cy) * scale)


def overlay_alpha(page, x: float, y: float) -> int:
    """Alpha of the dimming overlay at page point (x, y)."""
    return page.evaluate("""([x, y]) => {
        const canvas = document.querySelector("canvas.mosaic-overlay");
        const box = canvas.getBoundingClientRect();
        const r = canvas.width / box.width;
        const data = canvas.getContext("2d")
            .getImageData(Math.floor((x - box.left) * r), Math.floor((y - box.top) * r), 1, 1).data;
        return data[3];
    }""", [x, y])
