"""Poster downloads from the server: page size, filters, limits and errors."""

from __future__ import annotations

import io

import pytest
import pyvips
from pypdf import PdfReader

pytest_plugins = ["server_fixtures"]

CID = "test"  # the id server_fixtures gives its bundle
A4_150_DPI = (1240, 1754)  # 210 x 297 mm at 150 dpi, rounded


def poster(client, fmt="png", **params):
    return client.get(f"/api/collections/{CID}/poster.{fmt}", query_string=params)


def test_whole_map_poster_is_an_a4_png_at_150_dpi(client):
    response = poster(client)
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert "attachment" in response.headers["Content-Disposition"]
    image = pyvips.Image.new_from_buffer(response.data, "")
    assert abs(image.width - A4_150_DPI[0]) <= 1 and abs(image.height - A4_150_DPI[1]) <= 1
    assert round(image.xres * 25.4) == 150  # libvips keeps resolution in pixels per mm


def test_filtered_poster_is_a_pdf_of_the_physical_size(client):
    response = poster(client, "pdf", category="red", paper="A5", landscape="1", dpi="100")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    page = PdfReader(io.BytesIO(response.data)).pages[0]
    width_mm = float(page.mediabox.width) / 72 * 25.4
    height_mm = float(page.mediabox.height) / 72 * 25.4
    assert abs(width_mm - 210) < 1 and abs(height_mm - 148) < 1  # A5 landscape


def test_filters_change_the_poster(client):
    everything = pyvips.Image.new_from_buffer(poster(client, dpi="60").data, "")
    some = pyvips.Image.new_from_buffer(poster(client, dpi="60", category="red").data, "")
    assert (everything.width, everything.height) == (some.width, some.height)
    assert everything.numpy().tobytes() != some.numpy().tobytes()


@pytest.mark.parametrize("params,status,needle", [
    ({"paper": "A9"}, 400, "paper"),
    ({"dpi": "0"}, 400, "dpi"),
    ({"dpi": "many"}, 400, ""),
    ({"dpi": "2400"}, 400, "run.py poster"),  # over the server's size limit
    ({"category": "no-such-colour"}, 400, "empty"),
    ({"bogus": "1"}, 400, "bogus"),
])
def test_bad_poster_requests_are_json_errors(client, params, status, needle):
    response = poster(client, **params)
    body = response.get_json()
    assert response.status_code == status
    assert body["ok"] is False and body["status"] == status and needle in body["error"]


def test_unknown_format_is_404(client):
    response = poster(client, "gif")
    assert response.status_code == 404 and response.get_json()["ok"] is False
