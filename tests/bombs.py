"""Decompression bombs for tests, built in milliseconds without ever holding what they expand to.

After a full flush a deflate compressor starts afresh, so every 1 MiB block of zeros compresses to
the same ~1 KiB; repeating that block makes a valid stream of any length. Converter bombs expand in
the parser instead: a PDF whose pages all share one content stream (issue 10: a 34 KB file gave
210 MB of text), and a CSV of empty cells (about 30 bytes of memory per byte of input).
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

__all__ = [
    "csv_of_empty_cells",
    "docx_with_member",
    "gzip_bomb",
    "pdf_shared_stream",
    "zero_crc",
    "zero_deflate",
]

MIB = 1024 * 1024


def zero_deflate(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zero bytes (about 1 KiB per MiB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * mib + compressor.flush()


def zero_crc(mib: int) -> int:
    """The CRC-32 of ``mib`` MiB of zero bytes."""
    crc, block = 0, bytes(MIB)
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    return crc


def gzip_bomb(gib: int) -> bytes:
    """A gzip member holding ``gib`` GiB of zeros (about 1 MiB per GiB)."""
    mib = gib * 1024
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + zero_deflate(mib) + struct.pack("<II", zero_crc(mib), (mib * MIB) & 0xFFFFFFFF)


def docx_with_member(
    template: Path,
    name: str,
    deflated: bytes,
    declared_size: int,
    crc: int,
    method: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """``template`` (a zip) with member ``name`` replaced by pre-compressed data and the sizes given.

    The zip is written by hand, so the declared size and CRC may lie about the data.
    """
    entries: list[tuple[str, bytes, int, int, int]] = []
    with zipfile.ZipFile(template) as source:
        for info in source.infolist():
            if info.filename == name:
                entries.append((name, deflated, declared_size, crc, method))
            else:
                data = source.read(info.filename)
                entries.append((info.filename, data, len(data), zlib.crc32(data), zipfile.ZIP_STORED))
    out, central = bytearray(), bytearray()
    for member, payload, size, crc32, compression in entries:
        offset, encoded = len(out), member.encode()
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, compression, 0, 0, crc32, len(payload), size,
                           len(encoded), 0) + encoded + payload  # fmt: skip
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, compression, 0, 0, crc32,
                               len(payload), size, len(encoded), 0, 0, 0, 0, 0, offset) + encoded  # fmt: skip
    start = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), start, 0)
    return bytes(out)


def pdf_shared_stream(
    pages: int, lines: int, text: bytes = b"All work and no play makes Jack a dull boy"
) -> bytes:
    """A PDF of ``pages`` pages that all draw the same content stream of ``lines`` lines of ``text``.

    The file holds the stream once, so it stays small while its text grows with ``pages * lines``.
    Each line has a baseline of its own (``14 TL``): lines drawn on top of one another would be read
    once by PDFium, which drops text that overprints itself.
    """
    content = b"BT /F1 12 Tf 14 TL 72 720 Td " + (b"(" + text + b") Tj T* ") * lines + b"ET"
    font = 4 + pages
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (b" ".join(b"%d 0 R" % (4 + i) for i in range(pages)), pages),
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
    ]
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R "
    page += b"/Resources << /Font << /F1 %d 0 R >> >> >>" % font
    objects += [page] * pages
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def csv_of_empty_cells(mib: int, width: int = 20) -> bytes:
    """About ``mib`` MiB of CSV rows of ``width + 1`` empty cells (parsed, about 30 times as much memory)."""
    row = b"," * width + b"\n"
    return b"a,b\n" + row * (mib * MIB // len(row))
