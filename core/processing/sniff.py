"""Recognise a file's format from its content, so that a saved name (``input.bin``) never decides a parser.

:func:`sniff` returns a :class:`Sniffed`: the short format name the registry uses (``pdf``, ``docx``,
``html``, ``text``, ``audio``...) and whether a signature that only that format has decided it (``certain``)
or it is a judgement on text (HTML, XML, JSON, CSV or plain text look alike at their edges).

- PDF: ``%PDF-`` at the start (certain), or within the first KiB as readers allow (likely).
- Zip containers are opened, never guessed from their first bytes: an EPUB or OpenDocument file names its type
  in the ``mimetype`` entry; an Office Open XML file (DOCX, XLSX, PPTX, and their macro and template variants)
  in ``[Content_Types].xml``, for the main part that ``_rels/.rels`` points at. So a Word file that embeds a
  spreadsheet is still a Word file, and a zip that is neither is ``zip``, never a document.
- Audio and video by their container signatures.
- Text: HTML (a doctype or ``<html``), XML (``<?xml``), JSON (parses), CSV (every line has the same number of
  fields, two or more), else plain text. Bytes with control characters are not text.

Reads at most :data:`MAX_TEXT_SNIFF` bytes plus a zip's directory and two small members. Judges a file on disk
or, for a small input kept in memory, its bytes, the same way. Runs on the calling thread.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import posixpath
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DAMAGED_ZIP", "MAX_TEXT_SNIFF", "Sniffed", "describe", "sniff", "sniff_format"]

DAMAGED_ZIP = "damaged-zip"
"""What a file that starts like a zip but cannot be opened as one sniffs as."""

MAX_TEXT_SNIFF = 1 << 20
"""JSON is found by parsing: a file up to this size (1 MiB) is parsed whole; a longer one by its head."""

_HEAD = 8192
_MAX_MANIFEST = 1 << 20
_CONTROL_RE = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")
_JSON_NEXT = b'"{[]}-0123456789tfn'
_CSV_DELIMITERS = ",;\t"  # not "|": a markdown table has the same number of pipes on every line
_OFFICE_MAIN_TYPES = (  # the main part's content type names the application
    ("wordprocessingml", "docx"),
    ("ms-word", "docx"),
    ("presentationml", "pptx"),
    ("ms-powerpoint", "pptx"),
    ("spreadsheetml", "xlsx"),
    ("ms-excel", "xlsx"),
)
_OFFICE_PARTS = (("word/document.xml", "docx"), ("ppt/presentation.xml", "pptx"), ("xl/workbook.xml", "xlsx"))
_OFFICE_DOCUMENT_REL = "/officeDocument"  # ends the type URI of the package's main-part relationship
_OPENDOCUMENT = {
    "application/vnd.oasis.opendocument.text": "odt",
    "application/vnd.oasis.opendocument.spreadsheet": "ods",
    "application/vnd.oasis.opendocument.presentation": "odp",
}
_DESCRIPTIONS = {
    DAMAGED_ZIP: "a damaged zip archive (a download cut short looks like this)",
    "zip": "a zip archive, but not a DOCX, XLSX, PPTX or EPUB document",
    "odt": "an OpenDocument text (ODT); saved as DOCX it would convert",
    "ods": "an OpenDocument spreadsheet (ODS); saved as XLSX it would convert",
    "odp": "an OpenDocument presentation (ODP); saved as PPTX it would convert",
}


@dataclass(frozen=True)
class Sniffed:
    """A format judged from content; ``certain`` when a signature only that format carries decided it."""

    format: str
    certain: bool


def describe(fmt: str) -> str:
    """How to name a sniffed format in a message for a person ("a zip archive, but not ...")."""
    return _DESCRIPTIONS.get(fmt, fmt)


def _member(zf: zipfile.ZipFile, name: str, limit: int = _MAX_MANIFEST) -> bytes:
    """At most ``limit`` bytes of a member: never inflate more, whatever size a (hostile) zip declares."""
    with zf.open(name) as member:
        return member.read(limit)


def _main_part_type(zf: zipfile.ZipFile, names: set[str]) -> str | None:
    """The content type of an OPC package's main part (``_rels/.rels`` → ``[Content_Types].xml``)."""
    from defusedxml import ElementTree

    types = ElementTree.fromstring(_member(zf, "[Content_Types].xml"))
    main = None
    if "_rels/.rels" in names:
        for rel in ElementTree.fromstring(_member(zf, "_rels/.rels")):
            if str(rel.get("Type", "")).endswith(_OFFICE_DOCUMENT_REL):
                main = "/" + posixpath.normpath(str(rel.get("Target", "")).lstrip("/"))
                break
    if main is None:
        return None
    extension = main.rsplit(".", 1)[-1].lower() if "." in main else ""
    default = None
    for entry in types:
        tag = str(entry.tag).rsplit("}", 1)[-1]
        if tag == "Override" and str(entry.get("PartName", "")).lower() == main.lower():
            return str(entry.get("ContentType", ""))
        if tag == "Default" and str(entry.get("Extension", "")).lower() == extension:
            default = str(entry.get("ContentType", ""))
    return default


def _sniff_zip(source: Path | bytes) -> Sniffed | None:
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as zf:
            names = set(zf.namelist())
            if "mimetype" in names:
                mimetype = _member(zf, "mimetype", 100).strip().decode("ascii", "replace")
                if mimetype == "application/epub+zip":
                    return Sniffed("epub", True)
                if mimetype in _OPENDOCUMENT:
                    return Sniffed(_OPENDOCUMENT[mimetype], True)
            if "[Content_Types].xml" in names:
                try:
                    main_type = (_main_part_type(zf, names) or "").lower()
                except Exception:  # an unreadable manifest: fall back to the conventional part names
                    main_type = ""
                for marker, fmt in _OFFICE_MAIN_TYPES:
                    if marker in main_type:
                        return Sniffed(fmt, True)
                for part, fmt in _OFFICE_PARTS:
                    if part in names:
                        return Sniffed(fmt, True)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError, RuntimeError, NotImplementedError):
        return Sniffed(DAMAGED_ZIP, False)  # a name or content type may still say what it should have been
    return Sniffed("zip", True)


def _sniff_media(head: bytes) -> Sniffed | None:
    if head.startswith((b"ID3", b"fLaC", b"OggS")) or head[4:8] == b"ftypM4A":
        return Sniffed("audio", True)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return Sniffed("audio", True)
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return Sniffed("video", True)
    if head[4:8] == b"ftyp" or head.startswith(b"\x1aE\xdf\xa3"):
        return Sniffed("video", True)
    if (
        len(head) > 1
        and head[0] == 0xFF
        and head[1] & 0xE0 == 0xE0
        and not head.startswith(codecs.BOM_UTF16_LE)
    ):
        return Sniffed("audio", False)  # an MPEG audio (MP3) or ADTS (AAC) frame header
    return None


def _looks_like_json(text: bytes, whole: bool) -> bool:
    stripped = text.lstrip()
    if not stripped[:1] or stripped[:1] not in b"{[":
        return False
    if whole:
        try:
            json.loads(stripped)
        except (ValueError, RecursionError):
            return False
        return True
    rest = stripped[1:].lstrip()
    return bool(rest[:1]) and rest[:1] in _JSON_NEXT


def _looks_like_csv(head: bytes, whole: bool) -> bool:
    lines = head.decode("utf-8", "replace").splitlines()
    if not whole:
        lines = lines[:-1]  # the last line may be cut
    lines = [line for line in lines if line.strip()]
    if len(lines) < 2 or lines[0].lstrip().startswith("#"):
        return False
    for delimiter in _CSV_DELIMITERS:
        try:
            widths = {len(row) for row in csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)}
        except csv.Error:
            continue
        if len(widths) == 1 and widths.pop() >= 2:
            return True
    return False


def _sniff_text(head: bytes, source: Path | bytes, size: int) -> Sniffed | None:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return Sniffed("text", False)
    head = head.removeprefix(codecs.BOM_UTF8)
    if _CONTROL_RE.search(head):
        return None
    lowered = head[:1024].lstrip().lower()
    if lowered.startswith(b"<!doctype html") or b"<html" in lowered:
        return Sniffed("html", False)
    if lowered.startswith(b"<?xml"):
        return Sniffed("xml", False)
    whole = size <= _HEAD
    if lowered[:1] in (b"{", b"["):
        data = head
        if not whole and size <= MAX_TEXT_SNIFF:
            data = source if isinstance(source, bytes) else source.read_bytes()
            data, whole = data.removeprefix(codecs.BOM_UTF8), True
        if _looks_like_json(data, whole):
            return Sniffed("json", False)
    if _looks_like_csv(head, whole):
        return Sniffed("csv", False)
    return Sniffed("text", False)  # no control characters in the first 8 KiB: text in some encoding


def sniff(source: Path | bytes) -> Sniffed | None:
    """The format of the file at ``source``, or of its bytes, judged by its content; None when it is
    not recognised."""
    if isinstance(source, bytes):
        size, head = len(source), source[:_HEAD]
    else:
        size = source.stat().st_size
        with source.open("rb") as f:
            head = f.read(_HEAD)
    if not head:
        return None
    if head.startswith(b"%PDF-"):
        return Sniffed("pdf", True)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _sniff_zip(source)
    if b"%PDF-" in head[:1024]:
        return Sniffed("pdf", False)  # readers accept junk before the header
    return _sniff_media(head) or _sniff_text(head, source, size)


def sniff_format(path: Path) -> str | None:
    """Just the format name of :func:`sniff`."""
    found = sniff(path)
    return found.format if found else None
