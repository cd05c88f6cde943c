"""Query by example: ``run.py similar`` and ``POST /api/collections/<id>/similar``.

The central property: a query goes through the pipeline's own decode and vector code
(``mosaic.pipeline.decode.embed_query``), so an image that is in the bundle gets its
stored vector back, bit for bit, and finds itself first at distance 0; a resized,
re-encoded copy still finds it, and random noise does not come that close. The CLI runs
as a user runs it (a subprocess, relative paths, default flags) on a bundle built by
``run.py pipeline`` from distinct generated pictures (bench/distinct_images.py: JPEG,
PNG, WebP and TIFF, grey, RGB and RGBA, EXIF orientations).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mosaic.bundle import Bundle, read_manifest
from mosaic.cli.similar import FIELDS
from mosaic.errors import UsageError
from mosaic.pipeline import decode, thumbnail
from mosaic.pipeline.decode import ChunkTask, DecodeOptions, decode_chunk, embed_query
from server import create_app

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import distinct_images  # noqa: E402

N = 150
CID = "pics"
URL = f"/api/collections/{CID}/similar"
QUERIED = (0, 1, 37, 74, 111, 149)  # a spread of ids, whatever their format or mode


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with ``pictures/``, ``vectors.npy`` and ``output/pics``: the pixels
    embedding first (the default), raw, and the user's own vectors (file:)."""
    work = tmp_path_factory.mktemp("similar")
    distinct_images.generate(work / "pictures", N, seed=11, classes=10, jobs=1, quiet=True)
    np.save(work / "vectors.npy", np.random.default_rng(0).random((N, 8), dtype=np.float32))
    result = run_cli(work, "pipeline", "--images", "pictures/images", "--id", CID,
                     "--embedding", "pixels", "--embedding", "raw",
                     "--embedding", "file:vectors.npy")
    assert result.returncode == 0, result.stderr
    return work


@pytest.fixture(scope="module")
def sources(work) -> dict[int, str]:
    """Every item's source as the bundle stores it (an absolute path)."""
    with sqlite3.connect(work / "output" / CID / "metadata.sqlite") as conn:
        return dict(conn.execute("SELECT id, source FROM items"))


def relative(work: Path, source: str) -> str:
    return str(Path(source).relative_to(work))


def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def assert_one_error_line(result: subprocess.CompletedProcess, contains: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert contains.lower() in lines[0].lower(), lines[0]
    assert result.stdout == ""


def write_bomb(path: Path, side: int = 50_000) -> None:
    """A 4 KB PNG whose header says ``side`` x ``side`` RGB: over the default
    --max-pixels (40,000^2), caught from the header before any pixel is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = zlib.compress(b"\0" * (3 * side + 1) * 4, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side,
                                                                      8, 2, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def half_size_jpeg(source: str, target: Path) -> None:
    with Image.open(source) as image:
        image = image.convert("RGB")
        image.resize((max(1, image.width // 2), max(1, image.height // 2)),
                     Image.Resampling.LANCZOS).save(target, "JPEG", quality=80)


def noise_png(target: Path) -> None:
    pixels = np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(target)


# -- the one decode: a bundle's own image gets its stored vector back ----------------


def test_every_items_query_vector_is_its_stored_vector(work, sources):
    """Bit for bit, for every item and both pixel embeddings: the stored vectors are
    exact (uint8), so "within the storage rounding" is equality here."""
    bundle = Bundle.open(work / "output" / CID)
    for embedding in bundle.embeddings[:2]:
        stored = bundle.open_vectors(embedding)[:]
        queried = np.stack([embed_query(sources[i], bundle, embedding) for i in range(N)])
        assert queried.dtype == np.float32 and queried.shape == stored.shape
        np.testing.assert_array_equal(queried, stored, err_msg=embedding.name)


def test_an_uploads_bytes_decode_as_its_file_does(work, sources):
    bundle = Bundle.open(work / "output" / CID)
    for item in QUERIED:
        for embedding in bundle.embeddings[:2]:
            from_path = embed_query(sources[item], bundle, embedding)
            from_bytes = embed_query(Path(sources[item]).read_bytes(), bundle, embedding)
            np.testing.assert_array_equal(from_bytes, from_path)


class _FakeVgg:
    """Stands in for VGG16 (no weights offline): a fixed function of the model input."""

    input_size = 224

    def embed(self, batch: np.ndarray) -> np.ndarray:
        means = batch.reshape(len(batch), -1, 3).astype(np.float32).mean(axis=1)
        return np.tile(means / 7.0, (1, 4096 // 3 + 1))[:, :4096]


def test_a_vgg16_query_takes_the_pipelines_model_input_and_rounding(work, sources,
                                                                    monkeypatch):
    """decode_chunk and embed_query share the decode (224-px model input, which also
    widens the pixels' box) and the float16 storage, through the same model cache."""
    weights = work / "weights.h5"
    weights.write_bytes(b"not read: the fake model is cached under this name")
    monkeypatch.setitem(decode._MODELS, ("vgg16", str(weights)), _FakeVgg())
    manifest = read_manifest(work / "output" / CID)
    manifest = {**manifest, "parameters": {**manifest["parameters"], "weights": str(weights)},
                "embeddings": [{"name": "vgg16", "kind": "vgg16", "dim": 4096,
                                "dtype": "float16"}, *manifest["embeddings"]]}
    bundle = Bundle.from_manifest(manifest, work / "output" / CID)
    options = decode.query_options(bundle)
    assert options.kinds == ("vgg16", "pixels", "raw")
    paths = tuple(sources[i] for i in QUERIED)
    chunk = decode_chunk(ChunkTask(0, QUERIED, paths, options))
    for row, path in enumerate(paths):
        for position, name in enumerate(("vgg16", "pixels")):
            embedding = bundle.embeddings[position]
            stored = chunk[f"vectors-{name}"][row].astype(np.float32)
            if embedding.scale:
                stored *= np.float32(embedding.scale)
            np.testing.assert_array_equal(embed_query(path, bundle, embedding), stored)
    random = Bundle.from_manifest(
        {**manifest, "parameters": {**manifest["parameters"], "weights": "none"}})
    with pytest.raises(UsageError, match="random VGG16 weights"):
        embed_query(paths[0], random, random.embeddings[0])


def test_decode_options_of_a_bundle_are_the_pipelines(work):
    options = decode.query_options(Bundle.open(work / "output" / CID))
    assert options == DecodeOptions(cell_size=128, fit="fit", background=(255, 255, 255),
                                    max_pixels=40_000 * 40_000, weights="none",
                                    kinds=("pixels", "raw"))


# -- the command line -----------------------------------------------------------------


def test_an_items_own_image_is_its_first_neighbour_csv(work, sources):
    queries = [relative(work, sources[i]) for i in QUERIED]
    result = run_cli(work, "similar", "--id", CID, *queries)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "query,rank,id,source,distance"
    rows = read_csv(result.stdout)
    assert len(rows) == 10 * len(QUERIED)  # default k
    for item, query in zip(QUERIED, queries, strict=True):
        mine = [r for r in rows if r["query"] == query]
        assert [int(r["rank"]) for r in mine] == list(range(1, 11))
        assert int(mine[0]["id"]) == item and float(mine[0]["distance"]) < 1e-3
        distances = [float(r["distance"]) for r in mine]
        assert distances == sorted(distances) and distances[1] > 1e-3
        assert all(r["source"] == sources[int(r["id"])] for r in mine)
        assert len({r["id"] for r in mine}) == 10


def test_a_bundle_from_another_decoder_is_warned_about(work, sources):
    """The manifest names the decoder that made the cells (``cells.decoder``); a query
    on a bundle from another one still answers, with a warning, and the same bundle
    from this decoder gets none (the control)."""
    query = relative(work, sources[QUERIED[0]])
    current = run_cli(work, "similar", "--id", CID, query)
    assert current.returncode == 0 and "decoder" not in current.stderr
    older = work / "older"
    shutil.copytree(work / "output" / CID, older / CID)
    manifest = json.loads((older / CID / "manifest.json").read_text())
    assert manifest["cells"].pop("decoder") == thumbnail.DECODER
    (older / CID / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli(work, "similar", "--out", "older", "--id", CID, query)
    assert result.returncode == 0, result.stderr
    assert "decoded by decoder 1 or 2" in result.stderr
    assert result.stdout == current.stdout


def test_an_items_own_image_is_its_first_neighbour_json(work, sources):
    queries = [relative(work, sources[i]) for i in QUERIED]
    result = run_cli(work, "similar", "--id", CID, "--embedding", "raw", "-k", "3",
                     "--format", "json", "-o", "found.json", *queries)
    assert result.returncode == 0 and result.stdout == "", result.stderr
    rows = json.loads((work / "found.json").read_text())
    assert len(rows) == 3 * len(QUERIED)
    assert all(tuple(row) == FIELDS for row in rows)
    for item, query in zip(QUERIED, queries, strict=True):
        first = next(r for r in rows if r["query"] == query)
        assert first["rank"] == 1 and first["id"] == item and first["distance"] < 1e-3
        assert first["source"] == sources[item]


def test_k_beyond_the_collection_lists_every_item_once(work, sources):
    result = run_cli(work, "similar", "--id", CID, "-k", "1000",
                     relative(work, sources[5]))
    assert result.returncode == 0, result.stderr
    assert sorted(int(r["id"]) for r in read_csv(result.stdout)) == list(range(N))


def test_a_smaller_reencoded_copy_finds_its_item_and_noise_does_not(work, sources):
    copies = work / "copies"
    copies.mkdir(exist_ok=True)
    queries = []
    for item in QUERIED:
        half_size_jpeg(sources[item], copies / f"{item}.jpg")
        queries.append(f"copies/{item}.jpg")
    noise_png(copies / "noise.png")
    result = run_cli(work, "similar", "--id", CID, "-k", str(N), *queries, "copies/noise.png")
    assert result.returncode == 0, result.stderr
    rows = read_csv(result.stdout)
    copy_distance = {}
    for item, query in zip(QUERIED, queries, strict=True):
        mine = [r for r in rows if r["query"] == query]
        assert item in [int(r["id"]) for r in mine[:5]], (item, mine[:5])
        copy_distance[item] = next(float(r["distance"]) for r in mine if int(r["id"]) == item)
    noise = {int(r["id"]): float(r["distance"]) for r in rows if r["query"] == "copies/noise.png"}
    assert len(noise) == N
    for item, distance in copy_distance.items():
        assert noise[item] > 2 * distance, (item, noise[item], distance)
    assert min(noise.values()) > max(copy_distance.values())


@pytest.mark.parametrize("case, contains", [
    ("text", "not a known file format"),
    ("missing", "no such file"),
    ("empty", "empty file"),
    ("bomb", "decompression bomb"),
    ("folder", "not a regular file"),
])
def test_a_bad_query_image_is_one_error_line(work, sources, case, contains):
    bad = work / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "notes.jpg").write_text("this is not an image\n")
    (bad / "empty.png").write_bytes(b"")
    write_bomb(bad / "bomb.png")
    name = {"text": "bad/notes.jpg", "missing": "bad/nowhere.jpg", "empty": "bad/empty.png",
            "bomb": "bad/bomb.png", "folder": "bad"}[case]
    # one good query first: nothing is written when a later one fails
    result = run_cli(work, "similar", "--id", CID, relative(work, sources[0]), name)
    assert_one_error_line(result, contains)
    assert name in result.stderr


@pytest.mark.parametrize("flags, contains", [
    (["--embedding", "vgg99"], "pixels, raw, file-vectors"),
    (["--embedding", "file-vectors"], "cannot be embedded"),
    (["-k", "0"], "-k must be at least 1"),
    (["-k", "-3"], "-k must be at least 1"),
    (["-k", "many"], "-k: must be a whole number"),
    (["--format", "xml"], "--format"),
    (["-o", "no/such/folder/out.csv"], "does not exist"),
])
def test_bad_flags_are_one_error_line(work, sources, flags, contains):
    result = run_cli(work, "similar", "--id", CID, *flags, relative(work, sources[0]))
    assert_one_error_line(result, contains)


def test_an_unknown_collection_is_one_error_line(work, sources):
    result = run_cli(work, "similar", "--id", "nothing", relative(work, sources[0]))
    assert_one_error_line(result, "nothing")


# -- the API --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(work):
    return create_app({"TESTING": True}, out_dir=work / "output").test_client()


def upload(client, data: bytes | None, name: str = "query.jpg", **fields):
    form = {key: str(value) for key, value in fields.items()}
    if data is not None:
        form["image"] = (io.BytesIO(data), name)
    return client.post(URL, data=form, content_type="multipart/form-data")


def assert_error(response, status: int, contains: str = "") -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"ok", "error", "status"}
    assert body["ok"] is False and body["status"] == status and body["error"]
    assert contains.lower() in body["error"].lower(), body["error"]


@pytest.mark.parametrize("config", [{}, {"MOSAIC_EXACT_MAX": 0}])
def test_an_uploaded_items_file_finds_itself_first(work, sources, config):
    app = create_app({"TESTING": True, **config}, out_dir=work / "output")
    client = app.test_client()
    for item in QUERIED:
        response = upload(client, Path(sources[item]).read_bytes(), k=5)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["ok"] is True and body["embedding"] == "pixels" and body["k"] == 5
        assert body["method"] == ("annoy" if config else "exact")
        first = body["neighbors"][0]
        assert first["id"] == item and first["distance"] < 1e-3
        assert {"id", "title", "row", "col", "distance", "thumbnail"} <= set(first)
        assert len(body["neighbors"]) == 5


def test_the_api_and_the_cli_give_the_same_neighbours(work, sources, client):
    query = relative(work, sources[37])
    cli = read_csv(run_cli(work, "similar", "--id", CID, "--embedding", "raw", "-k", "8",
                           query).stdout)
    body = upload(client, Path(sources[37]).read_bytes(), embedding="raw", k=8).get_json()
    assert [n["id"] for n in body["neighbors"]] == [int(r["id"]) for r in cli]
    np.testing.assert_allclose([n["distance"] for n in body["neighbors"]],
                               [float(r["distance"]) for r in cli], atol=1e-5)


def test_neighbours_rows_match_the_neighbors_endpoint(work, sources, client):
    """One row formatting: an item's upload lists its stored neighbours' rows after itself."""
    body = upload(client, Path(sources[74]).read_bytes(), k=6).get_json()
    stored = client.get(f"/api/collections/{CID}/items/74/neighbors?k=5").get_json()
    assert body["neighbors"][1:] == [
        {**row, "distance": pytest.approx(row["distance"], abs=1e-5)}
        for row in stored["neighbors"]]


def test_bad_uploads_are_json_errors(work, sources, client):
    bomb = work / "upload-bomb.png"
    write_bomb(bomb)
    good = Path(sources[0]).read_bytes()
    assert_error(upload(client, None), 400, "field 'image'")
    assert_error(upload(client, b""), 400, "empty file")
    assert_error(upload(client, b"hello, not an image"), 400, "not in a known format")
    assert_error(upload(client, good[:200]), 400, "query image")
    assert_error(upload(client, bomb.read_bytes(), "bomb.png"), 400, "decompression bomb")
    assert_error(upload(client, good, embedding="vgg99"), 400, "unknown embedding")
    assert_error(upload(client, good, embedding="file-vectors"), 400, "cannot be embedded")
    assert_error(upload(client, good, k=0), 400, "k must be between 1 and 500")
    assert_error(upload(client, good, k="ten"), 400, "k must be an integer")
    assert_error(client.get(URL), 405)
    assert_error(client.post(URL, data=good, content_type="image/jpeg"), 400, "field 'image'")
    assert_error(client.post("/api/collections/nothing/similar",
                             data={"image": (io.BytesIO(good), "a.jpg")}), 404)


def test_an_upload_over_the_limit_is_413(work, sources):
    client = create_app({"TESTING": True, "MOSAIC_UPLOAD_MAX": 4096},
                        out_dir=work / "output").test_client()
    big = Path(sources[1]).read_bytes()
    assert len(big) > 4096
    assert_error(upload(client, big), 413, "limit of 4096 bytes")
    small = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(small, "PNG")
    assert upload(client, small.getvalue()).status_code == 200


def test_the_server_refuses_vgg16_rather_than_load_the_model(work, sources):
    out = work / "vgg-out"
    shutil.copytree(work / "output" / CID, out / "v")
    manifest = json.loads((out / "v" / "manifest.json").read_text())
    manifest["embeddings"].insert(0, {**manifest["embeddings"][0], "name": "vgg16",
                                      "kind": "vgg16"})
    (out / "v" / "manifest.json").write_text(json.dumps(manifest))
    client = create_app({"TESTING": True}, out_dir=out).test_client()
    response = client.post("/api/collections/v/similar",
                           data={"image": (io.BytesIO(Path(sources[0]).read_bytes()), "a.jpg")})
    assert_error(response, 400, "run.py similar")


REQUEST = """
import io, json, sys
from server import create_app
client = create_app({"TESTING": True}, out_dir=sys.argv[1]).test_client()
data = open(sys.argv[2], "rb").read()
response = client.post("/api/collections/pics/similar",
                       data={"image": (io.BytesIO(data), "q.jpg")})
print(json.dumps({"status": response.status_code, "modules": sorted(sys.modules)}))
"""


def test_a_query_request_loads_no_model_layout_or_cli(work, sources):
    """The route imports the decoder, and nothing else of the write side's weight."""
    result = subprocess.run([sys.executable, "-c", REQUEST, str(work / "output"), sources[3]],
                            capture_output=True, text=True, cwd=ROOT, timeout=300, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == 200
    loaded = report["modules"]
    assert not [m for m in loaded if m.startswith(("mosaic.cli", "mosaic.pipeline.orchestrator",
                                                   "mosaic.pipeline.reduce"))], loaded
    assert not [m for m in loaded if m.split(".")[0] in ("tensorflow", "keras", "openTSNE",
                                                        "umap", "sklearn")]


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(item=st.sampled_from(QUERIED), cut=st.one_of(st.just(0), st.integers(0, 4000)),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
       junk=st.one_of(st.just(b""), st.binary(max_size=64)),
       k=st.sampled_from(["", "1", "7"]), embedding=st.sampled_from(["", "pixels", "raw"]))
def test_fuzzed_uploads_are_answered_never_500(work, sources, client, item, cut, flips, junk,
                                               k, embedding):
    """Truncated, byte-changed and prefixed copies of real pictures: each is a picture
    or a 400 (the bad parameters are test_bad_uploads_are_json_errors')."""
    data = bytearray(Path(sources[item]).read_bytes())
    for offset, value in flips:
        data[offset % len(data)] = value
    data = bytes(junk + data[:len(data) - cut] if cut < len(data) else junk)
    response = upload(client, data, k=k, embedding=embedding)
    assert response.status_code in (200, 400), (response.status_code, response.get_json())
    if response.status_code == 400:
        assert_error(response, 400)
    else:
        assert response.get_json()["neighbors"]
