"""A minimal one-page PDF that holds one RGB raster at a physical size.

The libvips in pyvips-binary has no PDF saver, and a poster only needs one
image on one page, so the file is written here: catalog, pages, page, image
XObject, content stream, info, xref. The image stream is written by libvips
itself through a custom target (``jpegsave_target`` for DCTDecode, or raw
pixels deflated on the fly for FlateDecode), so a 140-megapixel poster never
sits in Python memory. Its length is an indirect object written after it.
"""

from __future__ import annotations

import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import pyvips

from mosaic.poster.paper import MM_PER_INCH, PT_PER_INCH, PosterError

PDF_COMPRESSIONS = ("jpeg", "deflate")
# PDF viewers limit a page side to 14,400 units (200 in) without UserUnit.
MAX_PDF_SIDE_MM = 200 * MM_PER_INCH


def write_pdf(
    image: pyvips.Image,
    target: str | Path | BinaryIO,
    size_mm: tuple[float, float],
    trim_inset_mm: float = 0.0,
    compression: str = "jpeg",
    quality: int = 92,
    title: str | None = None,
    producer: str = "mosaic",
) -> None:
    """Write ``image`` (3-band uchar sRGB) as a one-page PDF of ``size_mm``.

    ``size_mm`` is the whole page (bleed included); ``trim_inset_mm`` is the
    bleed, recorded as the page's TrimBox. ``target`` is a path or a binary
    file object.
    """
    if compression not in PDF_COMPRESSIONS:
        raise PosterError(
            f"--pdf-compression must be one of {', '.join(PDF_COMPRESSIONS)}, not {compression!r}"
        )
    if max(size_mm) > MAX_PDF_SIDE_MM:
        raise PosterError(
            f"a PDF page side can be at most {MAX_PDF_SIDE_MM:g} mm; this page is "
            f"{size_mm[0]:g} x {size_mm[1]:g} mm (write a .tif instead)"
        )
    if isinstance(target, (str, Path)):
        with open(target, "wb") as handle:
            _write(handle, image, size_mm, trim_inset_mm, compression, quality, title, producer)
    else:
        _write(target, image, size_mm, trim_inset_mm, compression, quality, title, producer)


def _write(handle, image, size_mm, trim_mm, compression, quality, title, producer) -> None:
    writer = _PdfWriter(handle)
    width_pt, height_pt = (s / MM_PER_INCH * PT_PER_INCH for s in size_mm)
    trim = trim_mm / MM_PER_INCH * PT_PER_INCH
    writer.obj(1, b"<< /Type /Catalog /Pages 2 0 R >>")
    writer.obj(2, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>")
    media = f"[0 0 {width_pt:.4f} {height_pt:.4f}]"
    trim_box = f"[{trim:.4f} {trim:.4f} {width_pt - trim:.4f} {height_pt - trim:.4f}]"
    writer.obj(3, (
        f"<< /Type /Page /Parent 2 0 R /MediaBox {media} /BleedBox {media} "
        f"/TrimBox {trim_box} /Resources << /XObject << /Im0 4 0 R >> >> "
        f"/Contents 6 0 R >>"
    ).encode())
    filter_name = "DCTDecode" if compression == "jpeg" else "FlateDecode"
    header = (
        f"<< /Type /XObject /Subtype /Image /Width {image.width} /Height {image.height} "
        f"/ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /{filter_name} "
        f"/Length 5 0 R >>"
    ).encode()
    length = writer.stream_obj(4, header, lambda sink: _save_stream(image, sink, compression,
                                                                    quality))
    writer.obj(5, str(length).encode())
    content = f"q {width_pt:.4f} 0 0 {height_pt:.4f} 0 0 cm /Im0 Do Q".encode()
    writer.obj(6, b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    created = datetime.now(timezone.utc).strftime("D:%Y%m%d%H%M%SZ")
    info = f"<< /Producer {_pdf_string(producer)} /CreationDate ({created})"
    if title:
        info += f" /Title {_pdf_string(title)}"
    writer.obj(7, (info + " >>").encode())
    writer.finish(root=1, info=7)


def _save_stream(image: pyvips.Image, sink, compression: str, quality: int) -> None:
    """Let libvips write the encoded image into ``sink(bytes)`` strip by strip."""
    target = pyvips.TargetCustom()
    if compression == "jpeg":
        target.on_write(lambda data: sink(bytes(data)) or len(data))
        # No optimize_coding: its two-pass Huffman keeps every coefficient in memory.
        image.jpegsave_target(target, Q=quality, subsample_mode="off")
        return
    deflate = zlib.compressobj(6)
    target.on_write(lambda data: sink(deflate.compress(bytes(data))) or len(data))
    image.rawsave_target(target)
    sink(deflate.flush())


def _pdf_string(text: str) -> str:
    """A PDF text string: UTF-16BE with BOM, hex-encoded (safe for any text)."""
    return "<FEFF" + text.encode("utf-16-be").hex().upper() + ">"


class _PdfWriter:
    """Writes numbered objects and remembers their offsets for the xref table."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.offsets: dict[int, int] = {}
        self.position = 0
        self._raw(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")

    def _raw(self, data: bytes) -> None:
        self.handle.write(data)
        self.position += len(data)

    def obj(self, number: int, body: bytes) -> None:
        self.offsets[number] = self.position
        self._raw(b"%d 0 obj\n" % number + body + b"\nendobj\n")

    def stream_obj(self, number: int, header: bytes, produce) -> int:
        """Write a stream object whose bytes come from ``produce(sink)``; return its length."""
        self.offsets[number] = self.position
        self._raw(b"%d 0 obj\n" % number + header + b"\nstream\n")
        start = self.position
        produce(self._raw)
        length = self.position - start
        self._raw(b"\nendstream\nendobj\n")
        return length

    def finish(self, root: int, info: int) -> None:
        xref_at = self.position
        count = max(self.offsets) + 1
        lines = [b"xref\n0 %d\n" % count, b"0000000000 65535 f \n"]
        lines += [b"%010d 00000 n \n" % self.offsets[n] for n in range(1, count)]
        self._raw(b"".join(lines))
        self._raw(b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\n" % (count, root, info))
        self._raw(b"startxref\n%d\n%%%%EOF\n" % xref_at)
