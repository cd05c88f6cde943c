"""``run.py poster`` end to end on a small bundle built by the real pipeline."""

import csv
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pypdf
import pytest
import pyvips
from bundle_sql import col

from mosaic.bundle import Bundle, open_cells, read_manifest
from mosaic.cli.main import main
from mosaic.poster.cells import CellFetcher
from mosaic.poster.compose import PosterOptions, render_poster_bytes
from mosaic.poster.paper import PosterError, resolve_page
from mosaic.poster.render import render_text

N_ITEMS = 50
CATEGORIES = ("red", "green", "blue")


@pytest.fixture(scope="session")
def poster_bundle(tmp_path_factory):
    """A 50-item bundle: three colour categories, years 2000-2009, three hotspots."""
    root = tmp_path_factory.mktemp("poster")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_ITEMS):
        channel = i % 3
        pixels = rng.integers(0, 50, size=(96, 128, 3)).astype(np.uint8)
        pixels[..., channel] += 180
        pixels[20:40, i * 2:i * 2 + 20] = 255
        pyvips.Image.new_from_array(pixels, interpretation="srgb").pngsave(
            str(images / f"img{i:03d}.png"))
        rows.append({"filename": f"img{i:03d}.png", "category": CATEGORIES[channel],
                     "year": 2000 + i % 10, "caption": f"picture number {i}"})
    with open(root / "meta.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = root / "out"
    rc = main(["pipeline", "--images", str(images), "--metadata", str(root / "meta.csv"),
               "--out", str(out), "--id", "colours", "--embedding", "raw", "--clusters", "3",
               "-q"])
    assert rc == 0
    return out / "colours"


def poster(bundle: Path, output: Path, *args: str) -> int:
    return main(["poster", "--bundle", str(bundle), "-o", str(output), "-q", *args])


def placed(output: Path) -> dict:
    return json.loads(output.with_name(output.stem + ".items.json").read_text())


def matching_ids(bundle: Path, sql: str) -> set[int]:
    with sqlite3.connect(bundle / "metadata.sqlite") as conn:
        sql = sql.format(**{name: col(conn, name) for name in ("category", "year")})
        return {row[0] for row in conn.execute(f"SELECT id FROM metadata WHERE {sql}")}


def test_pdf_page_is_the_physical_size_and_holds_the_raster_at_the_dpi(poster_bundle, tmp_path):
    output = tmp_path / "poster.pdf"
    assert poster(poster_bundle, output, "--paper", "A5", "--landscape", "--dpi", "120",
                  "--bleed", "3mm") == 0
    page = pypdf.PdfReader(output).pages[0]
    mm = 25.4 / 72
    assert float(page.mediabox.width) * mm == pytest.approx(210 + 6, abs=0.01)
    assert float(page.mediabox.height) * mm == pytest.approx(148 + 6, abs=0.01)
    assert float(page.trimbox.width) * mm == pytest.approx(210, abs=0.01)
    (image,) = page.images
    width_px, height_px = image.image.size
    assert width_px / (float(page.mediabox.width) / 72) == pytest.approx(120, abs=0.5)
    assert height_px / (float(page.mediabox.height) / 72) == pytest.approx(120, abs=0.5)


def test_lossless_pdf_decodes(poster_bundle, tmp_path):
    output = tmp_path / "poster.pdf"
    assert poster(poster_bundle, output, "--pixels", "400x300", "--pdf-compression", "deflate") == 0
    (image,) = pypdf.PdfReader(output).pages[0].images
    assert image.image.size == (400, 300)


@pytest.mark.parametrize("suffix", [".tif", ".png", ".jpg"])
def test_raster_formats_carry_the_dpi(poster_bundle, tmp_path, suffix):
    output = tmp_path / f"poster{suffix}"
    assert poster(poster_bundle, output, "--paper", "A5", "--dpi", "150") == 0
    image = pyvips.Image.new_from_file(str(output))
    assert (image.width, image.height) == (874, 1240)   # 148 x 210 mm at 150 dpi
    assert image.xres * 25.4 == pytest.approx(150, abs=0.01)
    assert image.yres * 25.4 == pytest.approx(150, abs=0.01)


def test_whole_map_places_every_item_where_the_bundle_has_it(poster_bundle, tmp_path):
    output = tmp_path / "map.png"
    assert poster(poster_bundle, output, "--pixels", "500x500") == 0
    record = placed(output)
    positions = np.load(poster_bundle / "positions.npy")
    assert record["count"] == N_ITEMS == len(record["items"])
    assert {(p["id"], p["row"], p["col"]) for p in record["items"]} == {
        (i, int(r), int(c)) for i, (r, c) in enumerate(positions)}


def test_filtered_poster_holds_only_and_all_matching_items(poster_bundle, tmp_path):
    output = tmp_path / "blue.png"
    assert poster(poster_bundle, output, "--pixels", "400x400", "--where", "category=blue",
                  "--min", "year=2003", "--max", "year=2007") == 0
    record = placed(output)
    expected = matching_ids(poster_bundle, "{category} = 'blue' AND {year} BETWEEN 2003 AND 2007")
    assert 0 < len(expected) < N_ITEMS
    assert {p["id"] for p in record["items"]} == expected
    assert record["count"] == len(expected)
    cells = {(p["row"], p["col"]) for p in record["items"]}
    assert len(cells) == len(expected)
    assert record["grid"]["n_rows"] * record["grid"]["n_cols"] < 2 * len(expected)


def test_keyword_filter(poster_bundle, tmp_path):
    output = tmp_path / "kw.png"
    assert poster(poster_bundle, output, "--pixels", "300x300", "--q", "number 7") == 0
    assert [p["id"] for p in placed(output)["items"]] == [7]


def test_random_sample_has_n_items_and_a_seed_repeats(poster_bundle, tmp_path):
    runs = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        output = tmp_path / f"{name}.png"
        assert poster(poster_bundle, output, "--pixels", "600x400", "--random", "12",
                      "--seed", seed, "--arrange", "random") == 0
        runs[name] = (placed(output)["items"], pyvips.Image.new_from_file(str(output)).numpy())
    assert len(runs["a"][0]) == 12
    assert runs["a"][0] == runs["b"][0]
    np.testing.assert_array_equal(runs["a"][1], runs["b"][1])
    assert runs["a"][0] != runs["c"][0]


def test_big_cells_are_read_from_the_sources(poster_bundle, tmp_path):
    output = tmp_path / "big.png"
    assert poster(poster_bundle, output, "--pixels", "1000x1000", "--random", "4") == 0
    cells = placed(output)["cells"]
    assert cells["print_px"] > cells["stored_px"] and cells["from_source"] == 4


def test_missing_source_falls_back_to_the_stored_cell(poster_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(poster_bundle, copy, ignore=shutil.ignore_patterns("tiles"))
    with sqlite3.connect(copy / "metadata.sqlite") as conn:
        conn.execute("UPDATE items SET source = '/nonexistent/x.png' WHERE id = 0")
    output = tmp_path / "fallback.png"
    assert main(["poster", "--bundle", str(copy), "-o", str(output), "-q",
                 "--pixels", "1200x1200", "--margin", "0", "--where", "category=red"]) == 0
    record = placed(output)
    assert record["cells"]["missing_source"] == 1
    assert any("could not be read again" in w for w in record["warnings"])


def test_title_caption_hotspots_gutter_and_preview(poster_bundle, tmp_path):
    output = tmp_path / "full.png"
    assert poster(poster_bundle, output, "--paper", "A4", "--dpi", "72", "--title", "Colours",
                  "--subtitle", "fifty pictures", "--caption", "made by mosaic",
                  "--hotspots", "--gutter", "1mm", "--background", "#202020",
                  "--preview") == 0
    record = placed(output)
    image = pyvips.Image.new_from_file(str(output)).numpy()
    montage = record["grid"]["montage"]
    if render_text("x", 10, 72, 100, (0, 0, 0), (255, 255, 255)) is not None:
        assert record["warnings"] == []
        title_band = image[: montage["y"]]
        assert (title_band > 100).any()            # light text on the dark background
    preview = pyvips.Image.new_from_file(str(tmp_path / "full.preview.png"))
    assert preview.width <= 1240 and preview.height <= 1754
    assert preview.height > preview.width


@pytest.mark.parametrize("args, message", [
    (["--paper", "A7"], "--paper"),
    (["--dpi", "0"], "--dpi"),
    (["--dpi", "-10"], "--dpi"),
    (["--dpi", "many"], "--dpi"),
    (["--where", "category=purple"], "empty"),
    (["--where", "category"], "--where"),
    (["--random", "500"], "--random"),
    (["--width", "30cm"], "--height"),
])
def test_bad_arguments_give_one_error_line(poster_bundle, tmp_path, capsys, args, message):
    output = tmp_path / "bad.png"
    assert poster(poster_bundle, output, *args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert not output.exists()


def test_unsupported_extension(poster_bundle, tmp_path, capsys):
    assert poster(poster_bundle, tmp_path / "poster.gif") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and ".gif" in lines[0] and ".pdf" in lines[0]


def test_missing_output(poster_bundle, capsys):
    assert main(["poster", "--bundle", str(poster_bundle)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "-o/--output" in lines[0]


def test_unknown_bundle(tmp_path, capsys):
    assert main(["poster", "--out", str(tmp_path), "--id", "nope", "-o",
                 str(tmp_path / "p.png")]) == 2
    assert "no finished bundle" in capsys.readouterr().err


def test_render_poster_bytes_for_the_server(poster_bundle):
    bundle = Bundle.open(poster_bundle)
    options = PosterOptions(page=resolve_page(pixels="300x200", margin="2mm"), title="Sel")
    data = render_poster_bytes(bundle, [1, 4, 7], options, fmt="png")
    image = pyvips.Image.new_from_buffer(data, "")
    assert (image.width, image.height) == (300, 200)
    pdf = render_poster_bytes(bundle, None, options, fmt="pdf")
    assert pdf.startswith(b"%PDF")
    big = PosterOptions(page=resolve_page(paper="A0", dpi=300))
    with pytest.raises(PosterError, match="python run.py poster"):
        render_poster_bytes(bundle, [1], big)
    with pytest.raises(PosterError, match="empty"):
        render_poster_bytes(bundle, [], options)


def test_stored_cells_are_read_in_runs_in_any_order(poster_bundle, tmp_path):
    manifest = read_manifest(poster_bundle)
    ids = np.array([3, 4, 5, 9, 1, 2, 49])
    with CellFetcher(Bundle.open(poster_bundle), cell_px=16) as fetcher:
        np.testing.assert_array_equal(fetcher.read_stored(ids),
                                      open_cells(poster_bundle, manifest)[ids])
        direct = fetcher.fetch(ids)
        fetcher.prepare(np.arange(N_ITEMS), tmp_path)
        np.testing.assert_array_equal(fetcher.fetch(ids), direct)


def test_rendering_leaves_no_temporary_file_open(poster_bundle):
    """libvips's operation cache must not pin the deleted montage file."""
    options = PosterOptions(page=resolve_page(pixels="200x200", margin="1mm"))
    render_poster_bytes(Bundle.open(poster_bundle), [2, 3], options)
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc")
    targets = []
    for fd in fds.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue
    assert not [t for t in targets if "mosaic-poster-" in t]
