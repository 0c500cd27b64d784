"""PDF to markdown: PDFium (pypdfium2) page by page, with pypdf as the fallback.

PDFium is the extractor Chrome uses: on the reference PDFs (Debian's libtasn1 manual and the
shared-mime-info spec) it gives the same words as pypdf with none glued, 10-20x faster
(:mod:`.documents` has the measurements). It is native code, so it runs only where conversions run in
their own limited child process; a PDF PDFium cannot open or read, or in which it finds no text at all
(a missing or broken font), is tried again with pypdf, which is pure Python. The order of words can
differ from pypdf's where a line is drawn out of order: PDFium follows the line as it is seen
(texinfo's right-aligned "[Function]" labels come last on their line), pypdf the order of the page's
drawing commands.

Structure: the document outline (bookmarks) marks headings, as ``#`` lines where a line of the page
equals an outline title that points at that page; lines that start with a bullet become list items.

Progress is reported per page, and each report is a cancellation checkpoint. A PDF in which no page has a
text layer (a scan) is an :class:`EmptyContent` error rather than an empty success: an empty success would
be indexed as nothing and nobody would learn that the document needs OCR. Pages without text in an
otherwise textual PDF are listed in the metadata.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from morag_worker.core.processing.base import (
    CorruptInput,
    EmptyContent,
    ProcessedContent,
    ProcessingError,
    ProgressFn,
    UnsupportedContent,
    check_output,
    damaged,
    finish,
)

__all__ = ["PdfProcessor"]

log = structlog.get_logger(__name__)

_WHAT = "the PDF file"
_MAX_LISTED_PAGES = 50


def _check_header(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(1024)
    if not head:
        raise EmptyContent(f"{_WHAT} is empty (0 bytes)")
    if b"%PDF-" not in head:
        raise CorruptInput(f"{_WHAT} is not a PDF: it does not start with a %PDF header")


def _text_of(value: Any) -> str | None:
    return (str(value).strip() or None) if value else None


@dataclass
class _Extracted:
    """The text of each page (already stripped) and what the document says about itself."""

    pages: list[str]
    title: str | None
    author: str | None
    encrypted: bool
    extractor: str


class _PdfiumUnusable(Exception):
    """PDFium could not open or read the file: try pypdf."""


_BULLET = re.compile(r"^[\u2022\u25e6\u25aa\u2023\u2043\u2219\u00b7] ?", re.MULTILINE)


_SECTION_NUMBER = re.compile(r"(?:[0-9]+|[A-Z])(?:\.[0-9]+)*\.? ")


def _with_pdfium(path: Path, options: Mapping[str, Any], progress: ProgressFn) -> _Extracted:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    try:
        document = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
            raise UnsupportedContent(
                f"{_WHAT} is password-protected; remove the password and submit it again"
            ) from None
        raise _PdfiumUnusable(str(exc)) from exc
    try:
        try:
            total = len(document)
            info = document.get_metadata_dict(skip_empty=True)
            encrypted = pdfium_c.FPDF_GetSecurityHandlerRevision(document.raw) != -1
            headings = _outline_by_page(document)
        except Exception as exc:
            raise _PdfiumUnusable(repr(exc)) from exc
        if total == 0:
            raise EmptyContent(f"{_WHAT} has no pages")
        pages: list[str] = []
        chars = 0
        for index in range(total):
            progress(index, total, f"page {index + 1} of {total}")  # may raise to cancel: not caught
            try:
                page = document[index]
                try:
                    textpage = page.get_textpage()
                    try:
                        text = textpage.get_text_range()
                    finally:
                        textpage.close()
                finally:
                    page.close()
            except Exception as exc:
                raise _PdfiumUnusable(f"page {index + 1}: {exc!r}") from exc
            pages.append(_with_structure(text.replace("\r\n", "\n").replace("\r", "\n"), headings.get(index)))
            chars += len(pages[-1])
            check_output(options, chars)  # pages sharing one huge content stream stop here
    finally:
        document.close()
    return _Extracted(pages, _text_of(info.get("Title")), _text_of(info.get("Author")), encrypted, "pdfium")


def _outline_by_page(document: Any) -> dict[int, list[tuple[int, str]]]:
    """Outline entries (level, title) by the page index they point at; empty without an outline."""
    by_page: dict[int, list[tuple[int, str]]] = {}
    for count, bookmark in enumerate(document.get_toc(max_depth=6)):
        if count >= 5000:
            break
        destination = bookmark.get_dest()
        index = destination.get_index() if destination is not None else None
        title = " ".join((bookmark.get_title() or "").split())
        if index is not None and title:
            by_page.setdefault(index, []).append((bookmark.level, title))
    return by_page


def _with_structure(text: str, headings: list[tuple[int, str]] | None) -> str:
    """``text`` with outline titles as ``#`` headings and bulleted lines as list items."""
    text = _BULLET.sub("- ", text.strip())
    if not headings:
        return text
    wanted = {title: level for level, title in headings}
    lines = text.split("\n")
    for n, line in enumerate(lines):
        key = " ".join(line.split())
        # An outline title may leave out the section number that the page shows ("2.1 ASN.1 syntax").
        level = wanted.pop(key, None)
        if level is None and (numbered := _SECTION_NUMBER.match(key)):
            level = wanted.pop(key[numbered.end() :], None)
        if level is not None:
            lines[n] = "#" * min(level + 1, 6) + " " + key
    return "\n".join(lines)


def _with_pypdf(path: Path, options: Mapping[str, Any], progress: ProgressFn) -> _Extracted:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(path, strict=False)
        encrypted = reader.is_encrypted
        # Many PDFs are encrypted with an owner password only; the empty user password opens them.
        if encrypted and not reader.decrypt(""):
            raise UnsupportedContent(
                f"{_WHAT} is password-protected; remove the password and submit it again"
            )
        total = len(reader.pages)
        info = reader.metadata
        title = _text_of(info.title) if info else None
        author = _text_of(info.author) if info else None
    except ProcessingError:
        raise
    except DependencyError as exc:
        raise UnsupportedContent(f"{_WHAT} uses an encryption this worker cannot open ({exc})") from exc
    except Exception as exc:
        raise damaged(_WHAT, "a PDF file", exc) from exc
    if total == 0:
        raise EmptyContent(f"{_WHAT} has no pages")

    pages: list[str] = []
    chars = 0
    for index in range(total):
        progress(index, total, f"page {index + 1} of {total}")
        try:
            text = reader.pages[index].extract_text() or ""
        except Exception as exc:
            log.info("processing.parser_failed", format="PDF", page=index + 1, error=repr(exc))
            raise CorruptInput(f"{_WHAT} is damaged: page {index + 1} cannot be read ({exc!r})") from exc
        pages.append(_BULLET.sub("- ", text.strip()))
        chars += len(pages[-1])
        check_output(options, chars)
    return _Extracted(pages, title, author, encrypted, "pypdf")


def warm_up_pdf(font: str = "Times-Roman") -> bytes:
    """A one-page PDF that draws ``warm up`` in one of the standard fonts (not embedded)."""
    content = b"BT /F1 12 Tf 72 100 Td (warm up) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>" % font.encode(),
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def read_with_pdfium(data: bytes) -> str:
    """The text of every page of the PDF in ``data``, as PDFium reads it."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(data)
    try:
        texts = []
        for page in document:
            textpage = page.get_textpage()
            texts.append(textpage.get_text_range())
            textpage.close()
            page.close()
        return "\n".join(texts)
    finally:
        document.close()


class PdfProcessor:
    """PDF through PDFium, or pypdf where PDFium fails, one page at a time (progress unit: pages)."""

    name = "pdf"

    def preload(self) -> None:
        """Import PDFium and pypdf in the worker, once, so converter children inherit them.

        PDFium also sets up its font tables on the first text it reads (about 3 ms: a 2-page PDF
        took 6.3 ms in a forked child against 3.6 ms after this, issue 14), so it reads a PDF made
        here, never a task's input, for every child to inherit them.
        """
        import pypdf  # noqa: F401
        import pypdfium2  # noqa: F401

        try:
            read_with_pdfium(warm_up_pdf())
        except Exception as exc:  # noqa: BLE001 - only a child's speed depends on it
            log.info("processing.pdfium_warm_up_failed", error=repr(exc))

    def process(self, path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        """Extract the text layer of every page; see the module docstring for the error policy."""
        _check_header(path)
        try:
            extracted = _with_pdfium(path, options, progress)
            if not any(extracted.pages):
                # PDFium reads no text where a font is missing or broken; pypdf reads the raw strings.
                raise _PdfiumUnusable("no text on any page")
        except _PdfiumUnusable as exc:
            log.info("processing.pdfium_failed", error=str(exc)[:300])
            extracted = _with_pypdf(path, options, progress)
        total = len(extracted.pages)
        progress(total, total, f"{total} pages extracted")
        parts = [text for text in extracted.pages if text]
        empty_pages = [n + 1 for n, text in enumerate(extracted.pages) if not text]
        title, author, encrypted = extracted.title, extracted.author, extracted.encrypted

        if not parts:
            raise EmptyContent(
                f"{_WHAT} has no text layer on any of its {total} pages (a scan?); "
                "OCR is not supported, so run it through OCR first"
            )
        notes = []
        if empty_pages:
            notes.append(f"{len(empty_pages)} of {total} pages have no text layer (images or blank)")
        metadata: dict[str, Any] = {
            "pages": total,
            "title": title,
            "author": author,
            "encrypted": encrypted or None,
            "pages_without_text": empty_pages[:_MAX_LISTED_PAGES] or None,
            "extractor": extracted.extractor,
        }
        return finish(
            "\n\n".join(parts), processor=self.name, fmt="pdf", what=_WHAT, metadata=metadata, notes=notes
        )
