"""Page geometry, lengths and the pure rendering stages of the poster (no bundle)."""

import numpy as np
import pytest
import pyvips

from mosaic.colour import parse_colour
from mosaic.errors import UsageError
from mosaic.poster.compose import output_format
from mosaic.poster.paper import PosterError, paper_size, parse_length, parse_pixels, resolve_page
from mosaic.poster.render import (
    iter_montage_strips,
    plan_layout,
    resample_matrix,
    resize_cells,
    text_colour_for,
)
from mosaic.strips import write_tiff


def test_a_series_sizes_and_landscape():
    assert paper_size("A4") == (210.0, 297.0)
    assert paper_size("a0") == (841.0, 1189.0)
    assert paper_size("A3", landscape=True) == (420.0, 297.0)
    assert paper_size("letter") == (215.9, 279.4)


@pytest.mark.parametrize("text, mm", [("10", 10.0), ("12mm", 12.0), ("1.5cm", 15.0),
                                      ("2in", 50.8), (" 3 MM ", 3.0)])
def test_lengths_take_mm_cm_in(text, mm):
    assert parse_length(text, "--width").to_mm(300) == pytest.approx(mm)


@pytest.mark.parametrize("text", ["", "ten", "-3mm", "5ft", "4px"])
def test_bad_lengths_name_the_parameter(text):
    with pytest.raises(PosterError, match="--margin"):
        parse_length(text, "--margin")


def test_px_lengths_only_where_allowed():
    assert parse_length("4px", "--gutter", allow_px=True).to_px(300) == 4
    assert parse_length("1in", "--gutter", allow_px=True).to_px(300) == 300


def test_page_pixels_follow_dpi():
    page = resolve_page(paper="A4", dpi=300)
    assert page.trim_px == (2480, 3508)
    assert page.px_per_mm == pytest.approx(300 / 25.4)


def test_width_height_in_any_unit():
    page = resolve_page(width="60cm", height="24in", dpi=100)
    assert (page.width_mm, page.height_mm) == (600.0, pytest.approx(609.6))


def test_pixels_with_a_paper_give_the_dpi():
    page = resolve_page(paper="A4", pixels="2480x3508")
    assert page.dpi == pytest.approx(300, abs=0.1)
    with pytest.raises(PosterError, match="--pixels"):
        resolve_page(paper="A4", pixels="3000x3000")


def test_pixels_alone_are_at_300_dpi():
    page = resolve_page(pixels="600x300")
    assert page.trim_px == (600, 300)
    assert page.width_mm == pytest.approx(50.8)


def test_bleed_grows_the_output_not_the_trim():
    page = resolve_page(paper="A5", dpi=100, bleed="3mm", margin="5mm")
    width, height = page.trim_px
    assert page.size_px == (width + 2 * page.bleed_px, height + 2 * page.bleed_px)
    assert page.size_mm == pytest.approx((154.0, 216.0))
    assert page.content_box[0] == page.bleed_px + page.margin_px


@pytest.mark.parametrize("kwargs, flag", [
    ({"dpi": 0}, "--dpi"), ({"dpi": -2}, "--dpi"), ({"dpi": 1e9}, "--dpi"),
    ({"paper": "B5"}, "--paper"), ({"width": "10cm"}, "--height"),
    ({"pixels": "12x"}, "--pixels"), ({"margin": "200mm", "paper": "A4"}, "--margin"),
    ({"dpi": 300, "pixels": "10x10"}, "--pixels"),
])
def test_bad_page_parameters(kwargs, flag):
    with pytest.raises(PosterError, match=flag):
        resolve_page(**kwargs)


def test_parse_pixels():
    assert parse_pixels("1200x900") == (1200, 900)
    with pytest.raises(PosterError):
        parse_pixels("0x10")


def test_colours():
    assert parse_colour("#ff8000") == (255, 128, 0)
    assert parse_colour("#fff") == (255, 255, 255)
    assert parse_colour("10, 20, 30") == (10, 20, 30)
    assert parse_colour("black") == (0, 0, 0)
    with pytest.raises(UsageError, match="--background"):
        parse_colour("#12345")
    assert text_colour_for((0, 0, 0))[0] > 200 and text_colour_for((255, 255, 255))[0] < 50


def test_output_formats():
    assert output_format("a/b.PDF") == "pdf" and output_format("x.tiff") == "tiff"
    with pytest.raises(PosterError, match="-o/--output"):
        output_format("poster.gif")


def test_resample_matrix_rows_sum_to_one():
    for src, dst in [(128, 30), (128, 300), (7, 7), (2, 1)]:
        weights = resample_matrix(src, dst)
        assert weights.shape == (dst, src)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)


def test_resize_cells_keeps_flat_cells_flat_and_does_not_bleed():
    cells = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    cells[1] = 200
    out = resize_cells(cells, 20)
    assert out.shape == (2, 20, 20, 3)
    assert out[0].max() == 0 and out[1].min() == 200 == out[1].max()
    assert resize_cells(cells, 100)[1].min() == 200


def test_layout_fills_the_content_box_and_centres_it():
    page = resolve_page(pixels="1000x600", margin="0mm")
    layout = plan_layout(page, (3, 4), gutter_px=10)
    assert layout.cell_px == 193  # min((1000 - 30) // 4, (600 - 20) // 3)
    width, height = layout.montage_size
    assert width <= 1000 and height <= 600
    assert layout.montage_x == (1000 - width) // 2
    assert layout.cell_origin(1, 2) == (layout.montage_x + 2 * 203, layout.montage_y + 203)


def test_layout_refuses_when_cells_do_not_fit():
    page = resolve_page(pixels="100x100", margin="0mm")
    with pytest.raises(PosterError, match="do not fit"):
        plan_layout(page, (200, 200), gutter_px=0)


def test_montage_strips_place_cells_and_gutters():
    grid = np.array([[0, -1], [1, 2]])
    colours = {0: 10, 1: 20, 2: 30}

    def fetch(ids):
        return np.stack([np.full((4, 4, 3), colours[int(i)], np.uint8) for i in ids])

    strips = [s.copy() for s in iter_montage_strips(grid, fetch, 4, 2, (255, 255, 255))]
    montage = np.concatenate(strips)
    assert montage.shape == (10, 10, 3)
    assert montage[0, 0, 0] == 10 and montage[0, 6, 0] == 255   # empty cell
    assert montage[4, 0, 0] == 255                               # gutter row
    assert montage[6, 0, 0] == 20 and montage[6, 6, 0] == 30


@pytest.mark.parametrize("heights", [[3], [5, 2, 5, 2, 5], [70, 1, 70]])
def test_write_tiff_reads_back_as_written(tmp_path, heights):
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 256, size=(h, 7, 3), dtype=np.uint8) for h in heights]
    path = tmp_path / "m.tif"
    write_tiff(path, iter(blocks), 7, sum(heights))
    image = pyvips.Image.new_from_file(str(path), access="sequential")
    np.testing.assert_array_equal(image.numpy(), np.concatenate(blocks))


def test_write_tiff_checks_the_height(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        write_tiff(tmp_path / "m.tif", [np.zeros((2, 4, 3), np.uint8)], 4, 3)
