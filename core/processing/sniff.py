"""Recognise a file's format from its first bytes, for when neither content type nor name says.

Returns the short format names the registry uses (``pdf``, ``docx``, ``html``, ``text``, ``audio``...).
Zip-based formats are told apart by the archive's ``mimetype`` entry (EPUB) or ``[Content_Types].xml``
(Office). Reads at most a few kilobytes plus a zip's directory. Runs on the calling thread.
"""

from __future__ import annotations

import codecs
import re
import zipfile
from pathlib import Path

__all__ = ["sniff_format"]

_HEAD = 8192
_OFFICE = (
    ("wordprocessingml", "docx"),
    ("presentationml", "pptx"),
    ("spreadsheetml", "xlsx"),
)
_OFFICE_PARTS = (("word/document.xml", "docx"), ("ppt/presentation.xml", "pptx"), ("xl/workbook.xml", "xlsx"))
_CONTROL_RE = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")


def _sniff_zip(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "mimetype" in names and zf.read("mimetype")[:64].strip() == b"application/epub+zip":
                return "epub"
            if "[Content_Types].xml" in names:
                types = zf.read("[Content_Types].xml")[: 1 << 20].decode("utf-8", "replace")
                for marker, fmt in _OFFICE:
                    if marker in types:
                        return fmt
            for part, fmt in _OFFICE_PARTS:
                if part in names:
                    return fmt
    except (zipfile.BadZipFile, OSError, KeyError):
        return None
    return None


def _sniff_media(head: bytes) -> str | None:
    if head.startswith((b"ID3", b"fLaC", b"OggS")) or head[4:8] == b"ftypM4A":
        return "audio"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    if head[4:8] == b"ftyp" or head.startswith(b"\x1aE\xdf\xa3"):
        return "video"
    if (
        len(head) > 1
        and head[0] == 0xFF
        and head[1] & 0xE0 == 0xE0
        and not head.startswith(codecs.BOM_UTF16_LE)
    ):
        return "audio"  # an MPEG audio (MP3) or ADTS (AAC) frame header
    return None


def _sniff_text(head: bytes) -> str | None:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "text"
    head = head.removeprefix(codecs.BOM_UTF8)
    if _CONTROL_RE.search(head):
        return None
    lowered = head[:1024].lstrip().lower()
    if lowered.startswith(b"<!doctype html") or b"<html" in lowered:
        return "html"
    if lowered.startswith(b"<?xml"):
        return "xml"
    return "text"  # no control characters in the first 8 KiB: text in some encoding


def sniff_format(path: Path) -> str | None:
    """The format of the file at ``path`` judged by its content, or None when it is not recognised."""
    with path.open("rb") as f:
        head = f.read(_HEAD)
    if not head:
        return None
    if b"%PDF-" in head[:1024]:
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path)
    return _sniff_media(head) or _sniff_text(head)
