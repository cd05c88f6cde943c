"""static/js/jpeg_scaled.js decodes a JPEG at 1/1, 1/2, 1/4 and 1/8 scale to the very
bytes Pillow's draft() + load() gives (mosaic/pipeline/thumbnail.py, _small_jpeg_pixels),
which the browser's query vector needs (static/js/query_vector.js).

JPEGs written by Pillow into tmp_path (gradients, noise and sharp edges; sizes that are
not whole MCUs; 4:4:4, 4:2:2, 4:2:0, grey, RGB kept as RGB; baseline, optimized,
progressive; restart markers; EXIF and XMP orientations), and 4:4:0 and 4:1:1 files made
from them by rewriting the frame header, are decoded by Pillow and, in one node process
(tests/js/jpeg_scaled_check.mjs), by jpeg_scaled.js at 1/1, 1/2, 1/4 and 1/8: every
result is byte-equal, and jpegOrientation reads Pillow's orientation. uprightRGB equals
thumbnail._UPRIGHT for all eight orientations. Negative controls: the comparison sees a
one-level change, a box average of the whole picture is not what the scaled decode
gives, and a truncated file, a file cut by a marker inside its scan, a CMYK file and
files marked arithmetic-coded or 12-bit give null. node is required (the project runs
``npm ci`` in static/): without it the test fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mosaic.pipeline import thumbnail
from mosaic.pipeline.thumbnail import _UPRIGHT

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "js" / "jpeg_scaled_check.mjs"
SHRINKS = (1, 2, 4, 8)
# EXIF written big-endian by hand (Pillow writes little-endian): IFD0 with one SHORT,
# orientation 5
EXIF_BIG_ENDIAN_5 = (b"Exif\0\0MM\0*\0\0\0\x08\0\x01"
                     b"\x01\x12\0\x03\0\0\0\x01\0\x05\0\0\0\0\0\0")
XMP_ORIENTATION_3 = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
                     b'tiff:Orientation="3"/></rdf:RDF></x:xmpmeta>')


def picture(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth colour gradients, noise and hard-edged blocks: uint8 (height, width, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(float)
    a = np.stack([255 * x / width, 255 * y / height,
                  127 + 120 * np.sin(x / 9.0) * np.cos(y / 7.0)], axis=-1)
    a += rng.normal(0, 18, a.shape)
    for _ in range(6):
        top, left = rng.integers(0, height), rng.integers(0, width)
        a[top:top + height // 4 + 1, left:left + width // 5 + 1] = rng.integers(0, 256, 3)
    return np.clip(a, 0, 255).astype(np.uint8)


def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags


# name: (width, height, mode, save options)
VARIANTS = {
    "444-257x131": (257, 131, "RGB", dict(quality=90, subsampling=0)),
    "422-257x131": (257, 131, "RGB", dict(quality=75, subsampling=1)),
    "420-257x131": (257, 131, "RGB", dict(quality=50, subsampling=2)),
    "420-800x601": (800, 601, "RGB", dict(quality=85, subsampling=2)),
    "422-800x601-optimized": (800, 601, "RGB", dict(quality=95, subsampling=1, optimize=True)),
    "444-33x17": (33, 17, "RGB", dict(quality=60, subsampling=0)),
    "422-33x17": (33, 17, "RGB", dict(quality=80, subsampling=1)),
    "420-33x17": (33, 17, "RGB", dict(quality=92, subsampling=2)),
    "420-64x48": (64, 48, "RGB", dict(quality=70, subsampling=2)),
    "420-256x128": (256, 128, "RGB", dict(quality=87, subsampling=2)),
    "420-257x131-progressive": (257, 131, "RGB", dict(quality=80, subsampling=2,
                                                      progressive=True)),
    "444-800x601-progressive": (800, 601, "RGB", dict(quality=70, subsampling=0,
                                                      progressive=True, optimize=True)),
    "422-33x17-progressive": (33, 17, "RGB", dict(quality=95, subsampling=1, progressive=True)),
    "422-257x131-progressive": (257, 131, "RGB", dict(quality=73, subsampling=1,
                                                      progressive=True)),
    "420-601x800-progressive": (601, 800, "RGB", dict(quality=55, subsampling=2,
                                                      progressive=True)),
    "grey-257x131": (257, 131, "L", dict(quality=85)),
    "grey-800x601-progressive": (800, 601, "L", dict(quality=75, progressive=True)),
    "grey-33x17": (33, 17, "L", dict(quality=50)),
    "420-257x131-restart-blocks": (257, 131, "RGB", dict(quality=85, subsampling=2,
                                                         restart_marker_blocks=5)),
    "422-800x601-progressive-restart-rows": (800, 601, "RGB", dict(
        quality=65, subsampling=1, progressive=True, restart_marker_rows=1)),
    "grey-257x131-restart-rows": (257, 131, "L", dict(quality=90, restart_marker_rows=2)),
    "420-257x131-exif6": (257, 131, "RGB", dict(quality=88, subsampling=2, exif=exif(6))),
    "444-131x257-progressive-exif3": (131, 257, "RGB", dict(quality=77, subsampling=0,
                                                            progressive=True, exif=exif(3))),
    "grey-33x17-exif8": (33, 17, "L", dict(quality=66, exif=exif(8))),
    "420-200x96-exif5-big-endian": (200, 96, "RGB", dict(quality=72, subsampling=2,
                                                         exif=EXIF_BIG_ENDIAN_5)),
    "422-257x131-xmp3": (257, 131, "RGB", dict(quality=82, subsampling=1,
                                               xmp=XMP_ORIENTATION_3)),
    "rgb-kept-257x131": (257, 131, "RGB", dict(quality=90, subsampling=0, keep_rgb=True)),
}

# Samplings Pillow does not write (4:4:0, 4:1:1), made from its files by rewriting the
# frame header: the same MCUs, and per component the same number of blocks, read in
# another layout; a valid JPEG whose picture is those blocks rearranged.
# name: (variant, luma sampling (h, v), width, height)
RELAID = {
    "440-131x257": ("422-257x131", (1, 2), 131, 257),
    "440-131x257-progressive": ("422-257x131-progressive", (1, 2), 131, 257),
    "411-512x64": ("420-256x128", (4, 1), 512, 64),
}


def frame_header(data: bytes) -> int:
    """Where a JPEG's SOF0/1/2 marker is, found by walking its marker segments."""
    at = 2
    while data[at + 1] not in (0xC0, 0xC1, 0xC2):
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return at


def relaid(data: bytes, sampling: tuple[int, int], width: int, height: int) -> bytes:
    at = frame_header(data)
    out = bytearray(data)
    out[at + 5:at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    out[at + 11] = sampling[0] << 4 | sampling[1]
    return bytes(out)


def pillow_scaled(path: Path, shrink: int) -> np.ndarray | None:
    """Pillow's decode at 1/shrink as _small_jpeg_pixels asks for it, before its crop:
    uint8 (ceil(h / shrink), ceil(w / shrink), 3); None where thumbnail.py would not
    take that path (libvips decodes it then)."""
    with Image.open(path) as image:
        width, height = image.size
        if min(width, height) < shrink:
            return None
        pixels = thumbnail.jpeg_at_scale(image, shrink)
    if pixels is None:
        return None
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels


def run_node(job: dict, folder: Path) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("needs node on PATH (the project's requirement: npm ci in static/)")
    job_path = folder / "job.json"
    job_path.write_text(json.dumps(job))
    done = subprocess.run([node, str(SCRIPT), str(job_path)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_jpeg_scaled_js_decodes_as_pillow_does(tmp_path):
    paths = []
    for seed, (name, (width, height, mode, options)) in enumerate(VARIANTS.items()):
        paths.append(tmp_path / f"{name}.jpg")
        image = Image.fromarray(picture(width, height, seed))
        (image.convert("L") if mode == "L" else image).save(paths[-1], **options)
        with Image.open(paths[-1]) as opened:
            assert opened.mode == mode
    for name, (variant, sampling, width, height) in RELAID.items():
        paths.append(tmp_path / f"{name}.jpg")
        data = (tmp_path / f"{variant}.jpg").read_bytes()
        paths[-1].write_bytes(relaid(data, sampling, width, height))
        with Image.open(paths[-1]) as opened:
            assert opened.size == (width, height) and opened.layer[0][1:3] == sampling
    decode, expected_orientation = [], {}
    for path in paths:
        with Image.open(path) as opened:
            expected_orientation[str(path)] = opened.getexif().get(0x0112, 1)
        for shrink in SHRINKS:
            pixels = pillow_scaled(path, shrink)
            assert pixels is not None, (path.name, shrink)
            raw = tmp_path / f"{path.stem}-{shrink}.rgb"
            pixels.tofile(raw)
            decode.append(dict(jpeg=str(path), shrink=shrink, expected=str(raw),
                               size=[pixels.shape[1], pixels.shape[0]]))
    assert sorted(set(expected_orientation.values())) == [1, 3, 5, 6, 8]

    # the negative controls: one level off is seen; a box average of the whole picture
    # (the browser's old approximation) is not the scaled decode; these give null
    noisy = tmp_path / "420-800x601.jpg"
    scaled = pillow_scaled(noisy, 8)
    tampered = scaled.copy()
    tampered[5, 7, 1] ^= 1
    tampered.tofile(tmp_path / "tampered.rgb")
    decode.append(dict(jpeg=str(noisy), shrink=8, expected=str(tmp_path / "tampered.rgb"),
                       size=[scaled.shape[1], scaled.shape[0]], control="tampered"))
    whole = pillow_scaled(noisy, 1).astype(float)
    h, w = whole.shape[0] // 8, whole.shape[1] // 8
    box = np.rint(whole[:h * 8, :w * 8].reshape(h, 8, w, 8, 3).mean(axis=(1, 3)))
    assert np.abs(box - scaled[:h, :w]).max() > 2
    data = noisy.read_bytes()
    sos = data.index(b"\xff\xda")
    (tmp_path / "truncated.jpg").write_bytes(data[:sos + (len(data) - sos) // 2])
    (tmp_path / "cut.jpg").write_bytes(data[:sos + 3000] + b"\xff\xd9" + data[sos + 3000:])
    Image.fromarray(picture(120, 90, 99)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    at = frame_header(data)
    (tmp_path / "arithmetic.jpg").write_bytes(data[:at + 1] + b"\xc9" + data[at + 2:])
    (tmp_path / "12-bit.jpg").write_bytes(data[:at + 4] + b"\x0c" + data[at + 5:])
    failing = ("truncated.jpg", "cut.jpg", "cmyk.jpg", "arithmetic.jpg", "12-bit.jpg")
    for name in failing:
        for shrink in SHRINKS:
            decode.append(dict(jpeg=str(tmp_path / name), shrink=shrink, expected=None,
                               control="null"))

    turned = np.random.default_rng(1).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    turned.tofile(tmp_path / "turned.rgb")
    job = dict(decode=decode, orientation=list(expected_orientation),
               upright=dict(raw=str(tmp_path / "turned.rgb"), width=5, height=3))
    found = run_node(job, tmp_path)

    wrong = []
    for asked, result in zip(job["decode"], found["decode"], strict=True):
        label = f"{Path(asked['jpeg']).name} 1/{asked['shrink']}"
        control = asked.get("control")
        if control == "null":
            if not result["null"]:
                wrong.append(f"{label}: decoded, not null")
        elif result["null"]:
            wrong.append(f"{label}: null")
        elif control == "tampered":
            if result["equal"] or result["maxDifference"] != 1 or result["different"] != 1:
                wrong.append(f"{label}: the one-level change is not seen: {result}")
        elif [result["width"], result["height"]] != asked["size"] or not result["equal"]:
            wrong.append(f"{label}: {result}")
    assert not wrong, wrong
    assert found["orientation"] == expected_orientation
    for o in range(1, 9):
        want = _UPRIGHT[o](turned)
        got = found["upright"][str(o)]
        assert (got["height"], got["width"]) == want.shape[:2], o
        assert np.array_equal(np.array(got["pixels"], np.uint8).reshape(want.shape), want), o
