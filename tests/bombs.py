"""Decompression bombs for tests, built in milliseconds without ever holding what they expand to.

After a full flush a deflate compressor starts afresh, so every 1 MiB block of zeros compresses to
the same ~1 KiB; repeating that block makes a valid stream of any length.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

__all__ = ["docx_with_member", "gzip_bomb", "zero_crc", "zero_deflate"]

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
