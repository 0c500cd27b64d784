"""PDF to markdown with pypdf, page by page.

Why pypdf and not markitdown's PDF path (pdfminer + pdfplumber) or pypdfium2: see the measurements in
:mod:`.documents`. In short, markitdown glued 18% of the words of a real PDF together and took 3-4x as
long; pypdf and pypdfium2 give the same clean words, and pypdf is pure Python, so a hostile PDF can raise
but not corrupt memory in the worker process (pypdfium2 is 15-20x faster: worth revisiting once parsers
run in an isolated subprocess).

Progress is reported per page, and each report is a cancellation checkpoint. A PDF in which no page has a
text layer (a scan) is an :class:`EmptyContent` error rather than an empty success: an empty success would
be indexed as nothing and nobody would learn that the document needs OCR. Pages without text in an
otherwise textual PDF are listed in the metadata. Runs on the calling task's thread.
"""

from __future__ import annotations

from collections.abc import Mapping
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


class PdfProcessor:
    """PDF through pypdf, one page at a time (progress unit: pages)."""

    name = "pdf"

    def preload(self) -> None:
        """Import pypdf in the worker, once, so converter children inherit it."""
        import pypdf  # noqa: F401

    def process(self, path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        """Extract the text layer of every page; see the module docstring for the error policy."""
        from pypdf import PdfReader
        from pypdf.errors import DependencyError

        _check_header(path)
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

        parts: list[str] = []
        chars = 0
        empty_pages: list[int] = []
        for index in range(total):
            progress(index, total, f"page {index + 1} of {total}")
            try:
                text = reader.pages[index].extract_text() or ""
            except Exception as exc:
                log.info("processing.parser_failed", format="PDF", page=index + 1, error=repr(exc))
                raise CorruptInput(f"{_WHAT} is damaged: page {index + 1} cannot be read ({exc!r})") from exc
            text = text.strip()
            if text:
                parts.append(text)
                chars += len(text)
                check_output(options, chars)  # pages sharing one huge content stream stop here
            else:
                empty_pages.append(index + 1)
        progress(total, total, f"{total} pages extracted")

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
        }
        return finish(
            "\n\n".join(parts), processor=self.name, fmt="pdf", what=_WHAT, metadata=metadata, notes=notes
        )
