"""Documents and web pages: which parser handles each format, the text-based formats, and their registration.

The parser for each format was chosen by measuring it on real documents; ``bench/processing_extractors.py``
reproduces the numbers (2 shared cores, best of 3 warm runs; markitdown 0.1.9, pypdf 7.1.1, pypdfium2 5.15.2,
pdfminer.six 20260107). "Glued" counts words of more than 25 letters, which is what words run together
look like::

    document (Debian /usr/share/doc)     extractor                 words   glued         time   vs pypdf
    shared-mime-info-spec.pdf, 17 pages  markitdown PdfConverter   1,815   336 (18.5%)  1.42 s   x3.8
                                         pdfminer.six alone        5,506     0          0.67 s   x1.8
                                         pypdf                     5,506     0          0.37 s   x1
                                         pypdfium2                 5,506     0          0.02 s   x0.06
    libtasn1.pdf, 36 pages               markitdown PdfConverter  10,372    33 (0.3%)   3.84 s   x2.8
                                         pdfminer.six alone       10,805     0          2.07 s   x1.5
                                         pypdf                    10,803     0          1.35 s   x1
                                         pypdfium2                10,803     0          0.06 s   x0.05
    XLSX, 20,000 rows x 6 columns        markitdown XlsxConverter                      24.4 s
                                         openpyxl read-only (ours)                      2.6 s
    socat.html, python-policy.html,      markitdown HtmlConverter  19,264 / 6,376 / 4,317 words, 0 glued
    zlib_how.html

Decisions:

- **PDF: PDFium (pypdfium2), pypdf as the fallback** (:mod:`.pdf`), page by page. markitdown's PDF path
  glues words together, is 3-4x slower, and through ``MarkItDown().convert`` a non-PDF named ``.pdf`` comes
  back as "success" with its bytes as text. pypdfium2 gives the same words 15-20x faster than pypdf; it is
  native code parsing untrusted input, which is acceptable because conversions run in their own child
  process with memory, time and output limits. pypdf (pure Python) reads what PDFium cannot open.
- **XLSX: openpyxl read-only** (:mod:`.office`): markitdown goes through pandas and HTML, 7-10x slower,
  writes ``NaN`` into every empty cell, leaves ``|`` unescaped (breaking the table), turns 7 into 7.0 and
  dates into ``2026-01-02 00:00:00``. Read-only openpyxl also allows progress per sheet and 1,000 rows.
- **PPTX, EPUB: markitdown's PptxConverter, EpubConverter**, called directly: headings, lists and tables come
  through.
- **DOCX: mammoth and markitdown's HTML converter**, the two steps of markitdown's DocxConverter (3,000
  paragraphs in 3.7 s), called by :class:`.office.DocxProcessor` itself: markitdown 0.1.9's pre-processing
  (equations to LaTeX) breaks every document with lxml 6.2, so its output is used only when the document
  body survived, and equations are otherwise converted namespace-aware here.
- **XLSX is handed to openpyxl as an open file**: given a path, openpyxl refuses any name but ``.xlsx``,
  and a download is saved as ``input.bin``.
- **HTML: markitdown's HtmlConverter** on text we decoded ourselves (charset from the task or ``<meta>``):
  clean words, headings, links and tables kept, scripts and styles dropped. A page nested too deeply for
  its recursive markdownify (socat.html, under pytest's deeper stack) becomes plain text with a note.
- **CSV: the standard library** with delimiter sniffing; markitdown's CsvConverter only knows commas.
- **JSON and XML**: validated (XML with defusedxml: no entity expansion, no external references) and returned
  as a fenced block, JSON pretty-printed. Invalid input is :class:`CorruptInput`, never passed on as text.

Runs on the calling task's thread; parsers are imported on first use (markitdown costs about 1.3 s).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from morag_worker.core.processing.base import (
    CorruptInput,
    EmptyContent,
    ProcessedContent,
    ProgressFn,
    UnsupportedContent,
    finish,
)
from morag_worker.core.processing.office import (
    DocxProcessor,
    MarkitdownProcessor,
    XlsxProcessor,
    markdown_table,
)
from morag_worker.core.processing.pdf import PdfProcessor
from morag_worker.core.processing.text import declared_charset, decode_text
from morag_worker.core.wording import error_words

if TYPE_CHECKING:
    from morag_worker.core.processing.registry import ProcessorRegistry

__all__ = ["HtmlProcessor", "StructuredTextProcessor", "fenced", "register"]

_META_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_XML_ENCODING_RE = re.compile(rb"""^<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""")


def fenced(text: str, language: str) -> str:
    """``text`` in a fenced code block whose fence is longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _plain_text(html: str) -> tuple[str, str | None]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for element in soup(["script", "style"]):
        element.extract()
    title = soup.title.get_text() if soup.title else None
    body = soup.body or soup
    return body.get_text("\n", strip=True), title


class HtmlProcessor:
    """HTML (and XHTML) through markitdown's HtmlConverter (progress unit: the whole page)."""

    name = "html"
    _what = "the HTML file"

    def preload(self) -> None:
        """Import markitdown's HTML converter in the worker, once, so converter children inherit it."""
        import markitdown.converters  # noqa: F401

    def process(self, path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        """Decode (task charset, else ``<meta charset>``, else fallbacks) and convert to markdown."""
        from markitdown.converters import HtmlConverter

        data = path.read_bytes()
        progress(0, 1, "converting the web page")
        declared = declared_charset(options)
        if declared is None and (match := _META_CHARSET_RE.search(data[:4096])):
            declared = match.group(1).decode("ascii")
        decoded = decode_text(data, declared=declared, what=self._what)
        notes = list(decoded.notes)
        try:
            result = HtmlConverter().convert_string(decoded.text, strict=True)
            markdown, title = result.markdown, result.title
        except RecursionError:
            # markdownify recurses once per nesting level; markitdown would quietly fall back to plain
            # text (strict=False). Do the same, but say so in the metadata.
            markdown, title = _plain_text(decoded.text)
            notes.append("nested too deeply for markdown conversion; extracted as plain text")
        except Exception as exc:
            raise CorruptInput(f"{self._what} could not be converted ({error_words(exc)}: {exc})") from exc
        content = finish(
            markdown,
            processor=self.name,
            fmt="html",
            what=self._what,
            metadata={"title": (str(title).strip() or None) if title else None, "encoding": decoded.encoding},
            notes=notes,
        )
        progress(1, 1, "web page converted")
        return content


def _csv(text: str, what: str) -> tuple[str, dict[str, Any]]:
    sample = text[:65536]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), dialect))
    except csv.Error as exc:
        raise CorruptInput(f"{what} is not valid CSV ({exc})") from exc
    table = markdown_table(rows)
    data_rows = max(0, table.count("\n") - 1)
    return table, {"rows": data_rows, "delimiter": dialect.delimiter}


def _json(text: str, what: str) -> tuple[str, dict[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptInput(
            f"{what} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from exc
    except RecursionError as exc:
        raise UnsupportedContent(f"{what} is nested too deeply to convert") from exc
    if value in ({}, [], None, ""):
        raise EmptyContent(f"{what} holds no data ({text.strip()[:20]})")
    return fenced(json.dumps(value, indent=2, ensure_ascii=False), "json"), {
        "json_type": type(value).__name__
    }


def _xml(data: bytes, text: str, what: str) -> tuple[str, dict[str, Any]]:
    from defusedxml import DefusedXmlException, ElementTree

    try:
        root = ElementTree.fromstring(data)
    except DefusedXmlException as exc:
        raise UnsupportedContent(
            f"{what} declares entities or external references, which are refused for safety ({exc})"
        ) from exc
    except ElementTree.ParseError as exc:
        raise CorruptInput(f"{what} is not well-formed XML ({exc})") from exc
    return fenced(text, "xml"), {"root_element": re.sub(r"^\{[^}]*\}", "", str(root.tag))}


class StructuredTextProcessor:
    """CSV, JSON or XML: decoded like text, validated, and rendered as a table or a fenced block.

    Args:
        fmt: ``csv``, ``json`` or ``xml``.
    """

    def __init__(self, fmt: str) -> None:
        if fmt not in ("csv", "json", "xml"):
            raise ValueError(f"unknown structured text format {fmt!r}")
        self.name = fmt
        self._what = f"the {fmt.upper()} file"

    def preload(self) -> None:
        """Import the XML parser in the worker, once, so converter children inherit it."""
        if self.name == "xml":
            import defusedxml.ElementTree  # noqa: F401

    def process(self, path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        """Convert the file; see the module docstring for what each format becomes."""
        data = path.read_bytes()
        progress(0, 1, f"converting the {self.name.upper()} file")
        declared = declared_charset(options)
        if self.name == "xml" and declared is None and (match := _XML_ENCODING_RE.search(data[:200])):
            declared = match.group(1).decode("ascii")
        decoded = decode_text(data, declared=declared, what=self._what)
        if self.name == "csv":
            markdown, metadata = _csv(decoded.text, self._what)
        elif self.name == "json":
            markdown, metadata = _json(decoded.text, self._what)
        else:
            markdown, metadata = _xml(data, decoded.text, self._what)
        metadata["encoding"] = decoded.encoding
        content = finish(
            markdown,
            processor=self.name,
            fmt=self.name,
            what=self._what,
            metadata=metadata,
            notes=decoded.notes,
        )
        progress(1, 1, f"{self.name.upper()} file converted")
        return content


_OOXML = "application/vnd.openxmlformats-officedocument."
# (format, factory, content types, extensions)
_FORMATS: list[tuple[str, Callable[[], Any], tuple[str, ...], tuple[str, ...]]] = [
    ("pdf", PdfProcessor, ("application/pdf", "application/x-pdf"), (".pdf",)),
    (
        "docx",
        DocxProcessor,
        (_OOXML + "wordprocessingml.document",),
        (".docx",),
    ),
    (
        "pptx",
        lambda: MarkitdownProcessor("pptx", "PptxConverter", ".pptx", "ppt/presentation.xml"),
        (_OOXML + "presentationml.presentation",),
        (".pptx",),
    ),
    ("xlsx", XlsxProcessor, (_OOXML + "spreadsheetml.sheet",), (".xlsx",)),
    (
        "epub",
        lambda: MarkitdownProcessor("epub", "EpubConverter", ".epub", "META-INF/container.xml"),
        ("application/epub+zip",),
        (".epub",),
    ),
    ("html", HtmlProcessor, ("text/html", "application/xhtml+xml"), (".html", ".htm", ".xhtml")),
    (
        "csv",
        lambda: StructuredTextProcessor("csv"),
        ("text/csv", "application/csv", "text/tab-separated-values"),
        (".csv", ".tsv"),
    ),
    ("json", lambda: StructuredTextProcessor("json"), ("application/json", "text/json"), (".json",)),
    ("xml", lambda: StructuredTextProcessor("xml"), ("application/xml", "text/xml"), (".xml",)),
]


def register(registry: ProcessorRegistry) -> None:
    """Register the document and web page processors (the same hook a plugin provides)."""
    for fmt, factory, content_types, extensions in _FORMATS:
        registry.register(factory(), content_types=(fmt, *content_types), extensions=extensions)
