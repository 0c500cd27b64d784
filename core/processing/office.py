"""Zip-based documents: DOCX, PPTX and EPUB through markitdown's own converters, XLSX through openpyxl.

Each file is opened as a zip first and must hold the part that makes it what it claims to be
(``word/document.xml``, ``ppt/presentation.xml``, ``xl/workbook.xml``, ``META-INF/container.xml``), and must
not unpack to more than :data:`MAX_UNPACKED_BYTES`; so a truncated download, random bytes or some other zip
fail with a message a person understands before any parser runs. Zip bombs are refused there too: a member
compressed more than :data:`MAX_RATIO` to 1, and a member whose data unpacks to more than the size it
declares (Python's ``zipfile`` trusts that size only after inflating up to 2 GiB in one call, so one such
member in a 2 MB file cost the worker over 2 GiB of memory before any parser saw a byte). Every member is
inflated once, in 1 MiB steps, to check it. Parser exceptions are caught and turned into
:class:`CorruptInput`. The converter for the format is called directly: markitdown never guesses the type.
Why XLSX skips markitdown: see :mod:`.documents`. Runs on the calling task's thread.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from morag_worker.core.processing.base import (
    CorruptInput,
    ProcessedContent,
    ProgressFn,
    UnsupportedContent,
    a_file,
    check_output,
    damaged,
    finish,
    guarded,
)

__all__ = [
    "MAX_RATIO",
    "DocxProcessor",
    "MAX_UNPACKED_BYTES",
    "MarkitdownProcessor",
    "XlsxProcessor",
    "ZipFacts",
    "check_zip",
    "markdown_table",
]

MAX_UNPACKED_BYTES = 1 << 30
"""A zip-based document that unpacks to more than this (1 GiB) is refused as a likely zip bomb."""

MAX_RATIO = 500
"""A member over :data:`_RATIO_GRACE_BYTES` that unpacks to more than this many times its compressed size is
refused as a zip bomb. Deflate's best is about 1030:1 (long runs of one byte); Office XML measured here ranged
from 5:1 to 134:1 (a generated document repeating one paragraph), so real files stay far below."""

_RATIO_GRACE_BYTES = 1 << 20
_CHECK_STEP = 1 << 20
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip member's local file header (APPNOTE 4.3.7)

_ROWS_PER_CHECKPOINT = 1000

log = structlog.get_logger(__name__)


def _core_title(zf: zipfile.ZipFile) -> str | None:
    """``dc:title`` from an Office file's ``docProps/core.xml``, if it has one."""
    from defusedxml import ElementTree

    try:
        root = ElementTree.fromstring(zf.read("docProps/core.xml"))
    except Exception:  # a missing or odd core.xml costs the title, nothing else
        return None
    node = root.find("{http://purl.org/dc/elements/1.1/}title")
    if node is None:
        return None
    return (node.text or "").strip() or None


@dataclass(frozen=True)
class ZipFacts:
    """What :func:`check_zip` learnt on the way: the Office title (if any) and the member names."""

    title: str | None
    names: list[str]


def check_zip(path: Path, what: str, kind: str, required: str) -> ZipFacts:
    """Check that ``path`` is a sane zip holding ``required``.

    Raises:
        CorruptInput: Not a zip, a damaged zip, or a zip without ``required``.
        UnsupportedContent: It would unpack to more than :data:`MAX_UNPACKED_BYTES`.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [info.filename for info in infos]
            if required not in names:
                raise CorruptInput(f"{what} is not {kind}: it is a zip archive without {required}")
            unpacked = sum(info.file_size for info in infos)
            if unpacked > MAX_UNPACKED_BYTES:
                raise UnsupportedContent(
                    f"{what} would unpack to {unpacked >> 20} MiB, more than the limit of "
                    f"{MAX_UNPACKED_BYTES >> 20} MiB"
                )
            with path.open("rb") as raw:
                for info in infos:
                    _check_member(raw, info, what)
            title = _core_title(zf) if "docProps/core.xml" in names else None
    except zipfile.BadZipFile as exc:
        raise CorruptInput(
            f"{what} is damaged or not {kind} (not a valid zip archive: {exc}); "
            "a download cut short looks like this"
        ) from exc
    return ZipFacts(title, names)


def _check_member(raw: BinaryIO, info: zipfile.ZipInfo, what: str) -> None:
    """Refuse a member that is a bomb, encrypted, or whose data does not unpack to its declared size."""
    name = info.filename[:100]
    if info.flag_bits & 0x1:
        raise UnsupportedContent(f"{what} is password-protected ({name} is encrypted)")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        method = info.compress_type
        raise UnsupportedContent(
            f"{what} uses a compression method Office files do not use (method {method} for {name})"
        )
    ratio = info.file_size // max(info.compress_size, 1)
    if info.file_size > _RATIO_GRACE_BYTES and ratio > MAX_RATIO:
        raise UnsupportedContent(
            f"{what} looks like a zip bomb: {name} would unpack to {ratio} times its stored size "
            f"(more than {MAX_RATIO} times is refused)"
        )
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise CorruptInput(f"{what} is damaged (the zip entry for {name} is missing)")
    name_length, extra_length = _LOCAL_HEADER.unpack(header)[-2:]
    raw.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
    if info.compress_type == zipfile.ZIP_STORED:
        unpacked = info.compress_size
    else:
        try:
            unpacked = _inflated_size(raw, info.compress_size, limit=info.file_size)
        except zlib.error as exc:
            raise CorruptInput(f"{what} is damaged ({name} cannot be decompressed: {exc})") from None
    if unpacked != info.file_size:
        more = "more than" if unpacked > info.file_size else f"{unpacked} bytes, not"
        raise CorruptInput(
            f"{what} is damaged or a zip bomb: {name} unpacks to {more} "
            f"the {info.file_size} bytes it declares"
        )


def _inflated_size(raw: BinaryIO, compressed: int, *, limit: int) -> int:
    """How many bytes the raw deflate stream of ``compressed`` bytes at ``raw``'s position unpacks to.

    Inflates at most 1 MiB at a time and stops as soon as it passes ``limit`` (returning more than
    ``limit``); a stream that ends before its end marker counts what it produced.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    produced, left = 0, compressed
    while not inflater.eof and produced <= limit:
        data = inflater.unconsumed_tail
        if not data and left > 0:
            data = raw.read(min(_CHECK_STEP, left))
            left -= len(data)
            if not data:
                break
        out = inflater.decompress(data, _CHECK_STEP)
        produced += len(out)
        if not out and not data:
            break  # no input left and nothing pending: the stream is cut short
    return produced


class MarkitdownProcessor:
    """One format through the markitdown converter made for it (progress unit: the whole document).

    Args:
        fmt: The format's short name (``docx``), also the processor's ``name``.
        converter: The class name in ``markitdown.converters`` (``DocxConverter``).
        extension: The extension handed to the converter (``.docx``).
        required: The zip member that proves the format.
    """

    def __init__(self, fmt: str, converter: str, extension: str, required: str) -> None:
        self.name = fmt
        self._converter = converter
        self._extension = extension
        self._required = required
        self._label = fmt.upper()
        self._what = f"the {self._label} file"
        self._kind = a_file(self._label)

    def preload(self) -> None:
        """Import markitdown (about 1.3 s) in the worker, once, so converter children inherit it."""
        import markitdown.converters  # noqa: F401

    def process(self, path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        """Check the zip, convert with markitdown, and add the facts the zip gave (title, slides)."""
        facts = check_zip(path, self._what, self._kind, self._required)
        progress(0, 1, f"converting the {self._label} document")
        markdown, title, notes = self._convert(path)
        metadata: dict[str, Any] = {"title": title or facts.title}
        if self.name == "pptx":
            metadata["slides"] = sum(1 for n in facts.names if re.fullmatch(r"ppt/slides/slide\d+\.xml", n))
        result = finish(
            markdown, processor=self.name, fmt=self.name, what=self._what, metadata=metadata, notes=notes
        )
        progress(1, 1, f"{self._label} document converted")
        return result

    def _convert(self, path: Path) -> tuple[str, str | None, list[str]]:
        import markitdown.converters
        from markitdown import MissingDependencyException, StreamInfo

        converter = getattr(markitdown.converters, self._converter)()
        info = StreamInfo(extension=self._extension, filename=path.name)
        try:
            with path.open("rb") as stream:
                result = converter.convert(stream, info)
        except MissingDependencyException as exc:
            raise UnsupportedContent(f"{self._what} needs a markitdown extra that is not installed") from exc
        except Exception as exc:
            raise damaged(self._what, self._kind, exc) from exc
        return str(result.markdown), (str(result.title).strip() or None) if result.title else None, []


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_M = "{http://schemas.openxmlformats.org/officeDocument/2006/math}"
_DOCX_MATH_PARTS = ("word/document.xml", "word/footnotes.xml", "word/endnotes.xml")
_UNDERLINE_STYLE_MAP = "u => u"  # markitdown's addition: keep underlines as <u>


def _xml_root(data: bytes) -> Any:
    """Parse a document part with lxml: no entities, no network, namespace-aware."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    return etree.fromstring(data, parser=parser)


def _has_body(docx: bytes) -> bool:
    """Whether ``word/document.xml`` in ``docx`` still has a namespaced ``w:body`` (what mammoth needs)."""
    try:
        with zipfile.ZipFile(io.BytesIO(docx)) as zf:
            root = _xml_root(zf.read("word/document.xml"))
    except Exception:
        return False
    return bool(root.tag == _W + "document" and root.find(_W + "body") is not None)


def _latex(element: Any) -> str | None:
    """The LaTeX of one ``m:oMath`` element, or None when markitdown's OMML converter cannot read it."""
    from xml.etree import ElementTree

    from lxml import etree
    from markitdown.converter_utils.docx.math.omml import oMath2Latex

    try:
        return str(oMath2Latex(ElementTree.fromstring(etree.tostring(element))).latex)  # type: ignore[no-untyped-call]
    except Exception as exc:
        log.info("processing.docx_equation_failed", error=repr(exc))
        return None


def _run_with_text(text: str) -> Any:
    from lxml import etree

    run = etree.Element(_W + "r")
    etree.SubElement(run, _W + "t").text = text
    return run


def _math_to_latex(part: bytes) -> tuple[bytes, int]:
    """Replace OMML equations in one document part by ``$latex$`` runs, namespace-aware.

    The same result markitdown's pre-processing gives, without BeautifulSoup's ``"xml"`` parser (which drops
    namespace prefixes with lxml 6.2). Returns the part and how many equations could not be converted (they
    stay OMML, which mammoth skips).
    """
    from lxml import etree

    failed = 0
    root = _xml_root(part)
    for para in list(root.iter(_M + "oMathPara")):
        latex = [_latex(math) for math in para.iter(_M + "oMath")]
        failed += latex.count(None)
        paragraph = etree.Element(_W + "p")
        for text in latex:
            if text is not None:
                paragraph.append(_run_with_text(f"$${text}$$"))
        para.getparent().replace(para, paragraph)
    for math in list(root.iter(_M + "oMath")):
        text = _latex(math)
        if text is None:
            failed += 1
        else:
            math.getparent().replace(math, _run_with_text(f"${text}$"))
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", standalone=True)), failed


def _prepare_docx(data: bytes) -> tuple[bytes, list[str]]:
    """The DOCX bytes to give mammoth: markitdown's pre-processing (equations to LaTeX, repairs) if sound.

    markitdown 0.1.9 rewrites ``word/document.xml`` through BeautifulSoup's ``"xml"`` parser; with lxml 6.2
    that parser drops namespace prefixes, the part becomes ``<document><body>`` and mammoth finds no body.
    So its output is used only when the body survived; otherwise the original file is used, with equations
    converted here instead.
    """
    from markitdown.converter_utils.docx.pre_process import pre_process_docx

    try:
        prepared = pre_process_docx(io.BytesIO(data)).read()
    except Exception as exc:  # markitdown's repairs are a nicety; the original file may still convert
        log.info("processing.docx_preprocess_failed", error=repr(exc))
        prepared = b""
    if prepared and _has_body(prepared):
        return prepared, []
    log.info("processing.docx_preprocess_unusable", fallback="namespace-aware equations")
    notes: list[str] = []
    failed = 0
    with zipfile.ZipFile(io.BytesIO(data)) as zin:
        infos = zin.infolist()
        if not any(i.filename in _DOCX_MATH_PARTS and b"oMath" in zin.read(i) for i in infos):
            return data, notes
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in infos:
                content = zin.read(info)
                if info.filename in _DOCX_MATH_PARTS and b"oMath" in content:
                    content, part_failed = _math_to_latex(content)
                    failed += part_failed
                zout.writestr(info, content)
    if failed:
        notes.append(f"{failed} equation(s) could not be converted to LaTeX and were left out")
    return out.getvalue(), notes


class DocxProcessor(MarkitdownProcessor):
    """DOCX through mammoth (to HTML) and markitdown's HTML converter, as markitdown's DocxConverter does.

    Called directly rather than through DocxConverter so that a markitdown pre-processing step that breaks
    the document (see :func:`_prepare_docx`) costs at most the equations, never the whole file.
    """

    def __init__(self) -> None:
        super().__init__("docx", "DocxConverter", ".docx", "word/document.xml")

    def preload(self) -> None:
        """Import mammoth and markitdown in the worker, once, so converter children inherit them."""
        import mammoth  # noqa: F401
        import markitdown.converters  # noqa: F401

    def _convert(self, path: Path) -> tuple[str, str | None, list[str]]:
        import mammoth
        from markitdown.converters import HtmlConverter

        try:
            prepared, notes = _prepare_docx(path.read_bytes())
            stream = io.BytesIO(prepared)
            embedded = mammoth.read_embedded_style_map(stream)
            stream.seek(0)
            style_map = "\n".join(part for part in (embedded, _UNDERLINE_STYLE_MAP) if part)
            html = mammoth.convert_to_html(
                stream, style_map=style_map, include_embedded_style_map=False
            ).value
            # Word tables have no header cells; without inferring one, every table gets an empty header row.
            result = HtmlConverter().convert_string(html, table_infer_header=True)
        except Exception as exc:
            raise damaged(self._what, self._kind, exc) from exc
        title = (str(result.title).strip() or None) if result.title else None
        return str(result.markdown), title, notes


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        text = value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    elif isinstance(value, dt.date | dt.time):
        text = value.isoformat()
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    return text


def _escape_cell(text: str) -> str:
    return " ".join(text.replace("|", r"\|").split())


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of ``rows`` (the first is the header), without empty rows and trailing columns.

    Pipes in cells are escaped and line breaks collapse to spaces, so a cell cannot break the table.
    """
    rows = [[_escape_cell(cell) for cell in row] for row in rows]
    rows = [row for row in rows if any(row)]
    if not rows:
        return ""
    width = max(max((i + 1 for i, cell in enumerate(row) if cell), default=0) for row in rows)
    padded = [list(row[:width]) + [""] * (width - len(row[:width])) for row in rows]
    lines = ["| " + " | ".join(padded[0]) + " |", "|" + " --- |" * width]
    lines += ["| " + " | ".join(row) + " |" for row in padded[1:]]
    return "\n".join(lines)


class XlsxProcessor:
    """XLSX through openpyxl in read-only mode, one markdown table per sheet (progress unit: sheets).

    Cached formula values are used (``data_only``); empty cells stay empty, dates are ISO dates.
    """

    name = "xlsx"
    _what = "the XLSX file"
    _kind = "an XLSX file"

    def preload(self) -> None:
        """Import openpyxl in the worker, once, so converter children inherit it."""
        import openpyxl  # noqa: F401

    def process(self, path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        """Convert every worksheet; progress after each sheet and every 1,000 rows."""
        from openpyxl import load_workbook

        facts = check_zip(path, self._what, self._kind, "xl/workbook.xml")
        # A file object, not the path: openpyxl refuses a path by its extension, and downloads are saved as
        # ``input.bin``. Read-only mode reads from it lazily, so it stays open until the workbook closes.
        with path.open("rb") as stream:
            try:
                workbook = load_workbook(stream, read_only=True, data_only=True)
            except Exception as exc:
                raise damaged(self._what, self._kind, exc) from exc
            return self._convert(workbook, facts, progress, options)

    def _convert(
        self, workbook: Any, facts: ZipFacts, progress: ProgressFn, options: Mapping[str, Any]
    ) -> ProcessedContent:
        chars = 0
        try:
            sheets = list(workbook.worksheets)
            parts: list[str] = []
            for index, sheet in enumerate(sheets):
                progress(index, len(sheets), f"sheet {index + 1} of {len(sheets)}: {sheet.title}")
                rows: list[list[str]] = []
                for count, row in enumerate(
                    guarded(sheet.iter_rows(values_only=True), self._what, self._kind)
                ):
                    if count and count % _ROWS_PER_CHECKPOINT == 0:
                        progress(index, len(sheets), f"sheet {index + 1} of {len(sheets)}: {count} rows")
                        check_output(options, chars)  # a sheet of millions of rows stops at the limit
                    cells = [_cell(value) for value in row]
                    chars += sum(map(len, cells))
                    rows.append(cells)
                table = markdown_table(rows)
                if table:
                    parts.append(f"## {sheet.title}\n\n{table}")
        finally:
            workbook.close()
        metadata = {"sheets": len(sheets), "sheet_names": [s.title for s in sheets], "title": facts.title}
        result = finish(
            "\n\n".join(parts), processor=self.name, fmt="xlsx", what=self._what, metadata=metadata
        )
        progress(len(sheets), len(sheets), f"{len(sheets)} sheets converted")
        return result
