"""Build the demo sample inputs in this folder, and PDFs of any size for tests.

Run ``python resources/samples/make_samples.py [DEST]`` to (re)write ``sample.{txt,md,html,csv,json,pdf,docx,
pptx,xlsx,epub}``. The text is the same in every format, so a test can look for the same phrases in each.

The PDF writer is hand-made (no reportlab): it lays out lines of Helvetica text and writes the objects with a
correct cross-reference table. :func:`build_pdf` and :func:`multi_page_pdf` are imported by the tests to make
documents of hundreds of pages, so that progress per page can be observed. DOCX, PPTX and XLSX need
python-docx, python-pptx and openpyxl (the ``dev`` extra); the other formats need nothing outside the
standard library. Zip-based formats are written with fixed timestamps, so rebuilding gives the same bytes.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import sys
import textwrap
import zipfile
from collections.abc import Sequence
from html import escape
from pathlib import Path

__all__ = ["SECTIONS", "TABLE", "TITLE", "build_pdf", "multi_page_pdf", "write_samples"]

TITLE = "MoRAG Worker: contributing a GPU to a MoRAG server"
INTRO = (
    "MoRAG Worker runs on a contributor's machine and takes processing tasks from a MoRAG server's "
    "per-user queue. It downloads each input from the hub, converts it to markdown, and returns the "
    "text and its metadata through the result backend."
)
FLOW = [
    "The server publishes the task on the queue gpu-tasks-{user_id}.",
    "The worker downloads the input over HTTPS with the contributor's API key.",
    "A processor turns the file into markdown and reports progress page by page.",
    "The result goes back to the server; the worker never calls a vector store or an LLM.",
]
TABLE = [
    ["Format", "Processor", "Progress unit"],
    ["PDF", "pypdf", "pages"],
    ["Word (DOCX)", "markitdown", "document"],
    ["PowerPoint (PPTX)", "markitdown", "document"],
    ["Audio and video", "faster-whisper", "seconds"],
]
PRIVACY = (
    "The API key lives in the operating system's keychain and reaches the worker process only through "
    "its environment. Each user's tasks and results stay in their own Redis namespace, which Redis "
    "itself enforces with an ACL user per contributor."
)
SECTIONS: list[tuple[str, list[str]]] = [
    ("What MoRAG Worker does", [INTRO]),
    ("How a task flows", [f"- {item}" for item in FLOW]),
    ("Supported inputs", [" | ".join(row) for row in TABLE]),
    ("Privacy", [PRIVACY]),
]
_FIXED_TIME = dt.datetime(2026, 1, 1, 12, 0, 0)
_ZIP_TIME = (2026, 1, 1, 12, 0, 0)


# --- PDF -------------------------------------------------------------------------------------------------


def _pdf_string(text: str) -> bytes:
    raw = text.encode("cp1252", "replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _page_stream(lines: Sequence[str]) -> bytes:
    """Lay out one page: a line starting with ``# `` is a bold heading, others wrap at 88 characters."""
    out = [b"BT", b"/F1 11 Tf", b"15 TL", b"72 770 Td"]
    for line in lines:
        if line.startswith("# "):
            out += [b"/F2 14 Tf", _pdf_string(line[2:]) + b" Tj T*", b"/F1 11 Tf"]
            continue
        for part in textwrap.wrap(line, 88) or [""]:
            out.append(_pdf_string(part) + b" Tj T*")
    out.append(b"ET")
    return b"\n".join(out) + b"\n"


def build_pdf(pages: Sequence[Sequence[str]], *, title: str = "") -> bytes:
    """A valid PDF 1.4 with one page per item of ``pages`` (each a list of lines) and ``title`` in /Info."""
    n = len(pages)
    page_ids = [6 + 2 * i for i in range(n)]
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % i for i in page_ids) + b"] /Count %d >>" % n,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
        b"<< /Title " + _pdf_string(title) + b" /Producer (MoRAG Worker make_samples.py) >>",
    ]
    for page_id, lines in zip(page_ids, pages, strict=True):
        stream = _page_stream(lines)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            b"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents %d 0 R >>" % (page_id + 1)
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"endstream")
    buf = io.BytesIO()
    buf.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(buf.tell())
        buf.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = buf.tell()
    buf.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        buf.write(b"%010d 00000 n \n" % offset)
    buf.write(b"trailer\n<< /Size %d /Root 1 0 R /Info 5 0 R >>\n" % (len(objects) + 1))
    buf.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return buf.getvalue()


def multi_page_pdf(n_pages: int, *, title: str = "MoRAG Worker load test") -> bytes:
    """A PDF of ``n_pages`` pages; page i says ``This is page i of n_pages`` among a few sentences."""
    pages = [
        [
            f"# Section {i}",
            f"This is page {i} of {n_pages} of the MoRAG Worker load test document.",
            "Each page is extracted on its own, so the worker can report progress and stop between pages.",
        ]
        for i in range(1, n_pages + 1)
    ]
    return build_pdf(pages, title=title)


def sample_pdf() -> bytes:
    first = [f"# {TITLE}", ""]
    second: list[str] = []
    for index, (heading, lines) in enumerate(SECTIONS):
        page = first if index < 2 else second
        page += [f"# {heading}", *lines, ""]
    return build_pdf([first, second], title=TITLE)


# --- Plain formats ---------------------------------------------------------------------------------------


def sample_txt() -> str:
    parts = [TITLE, "=" * len(TITLE), ""]
    for heading, lines in SECTIONS:
        parts += [heading, "-" * len(heading), *lines, ""]
    return "\n".join(parts)


def sample_md() -> str:
    parts = [f"# {TITLE}", ""]
    for heading, lines in SECTIONS:
        if heading == "Supported inputs":
            lines = [f"| {' | '.join(TABLE[0])} |", "|" + " --- |" * len(TABLE[0])]
            lines += [f"| {' | '.join(row)} |" for row in TABLE[1:]]
        parts += [f"## {heading}", "", *lines, ""]
    return "\n".join(parts)


def sample_json() -> str:
    document = {
        "title": TITLE,
        "sections": [{"heading": heading, "paragraphs": lines} for heading, lines in SECTIONS],
        "flow": FLOW,
        "formats": [dict(zip(TABLE[0], row, strict=True)) for row in TABLE[1:]],
        "privacy": PRIVACY,
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def sample_csv() -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(TABLE)
    return out.getvalue()


def _html_body() -> str:
    rows = "".join(
        "<tr>" + "".join(f"<{tag}>{escape(cell)}</{tag}>" for cell in row) + "</tr>\n"
        for tag, row in [("th", TABLE[0])] + [("td", r) for r in TABLE[1:]]
    )
    items = "".join(f"  <li>{escape(item)}</li>\n" for item in FLOW)
    return (
        f"<h1>{escape(TITLE)}</h1>\n<h2>What MoRAG Worker does</h2>\n<p>{escape(INTRO)}</p>\n"
        f"<h2>How a task flows</h2>\n<ul>\n{items}</ul>\n"
        f"<h2>Supported inputs</h2>\n<table>\n{rows}</table>\n"
        f"<h2>Privacy</h2>\n<p>{escape(PRIVACY)}</p>\n"
    )


def sample_html() -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(TITLE)}</title>\n<style>body {{ font-family: sans-serif; }}</style>\n"
        "<script>console.log('scripts are not content');</script>\n</head>\n<body>\n"
        f"{_html_body()}</body>\n</html>\n"
    )


def _stable_zip(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """A zip of ``entries`` with fixed timestamps; a leading ``mimetype`` entry is stored, as EPUB wants."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED if name == "mimetype" else zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def _restamp(data: bytes) -> bytes:
    """Rewrite an Office zip with fixed timestamps (openpyxl stamps ``modified`` with the time of saving)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        entries = [(name, zf.read(name)) for name in zf.namelist()]
    stamp = rb"\g<1>" + _FIXED_TIME.strftime("%Y-%m-%dT%H:%M:%SZ").encode() + rb"\g<2>"
    modified = re.compile(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)")
    return _stable_zip([(n, modified.sub(stamp, d) if n == "docProps/core.xml" else d) for n, d in entries])


def sample_epub() -> bytes:
    container = (
        '<?xml version="1.0"?>\n<container version="1.0" '
        'xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
        '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
        "</rootfiles></container>"
    )
    opf = (
        '<?xml version="1.0" encoding="utf-8"?>\n<package xmlns="http://www.idpf.org/2007/opf" version="3.0" '
        'unique-identifier="id"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
        '<dc:identifier id="id">urn:uuid:3f1c2a52-morag-worker-sample</dc:identifier>'
        f"<dc:title>{escape(TITLE)}"
        "</dc:title><dc:creator>MoRAG Worker</dc:creator><dc:language>en</dc:language></metadata>"
        '<manifest><item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>'
        '<item id="c1" href="chapter1.xhtml" media-type="application/xhtml+xml"/></manifest>'
        '<spine><itemref idref="c1"/></spine></package>'
    )

    def xhtml(title: str, body: str) -> bytes:
        return (
            '<?xml version="1.0" encoding="utf-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml" '
            'xmlns:epub="http://www.idpf.org/2007/ops">'
            f"<head><title>{escape(title)}</title></head><body>{body}</body></html>"
        ).encode()

    nav = '<nav epub:type="toc"><ol><li><a href="chapter1.xhtml">MoRAG Worker</a></li></ol></nav>'
    return _stable_zip(
        [
            ("mimetype", b"application/epub+zip"),
            ("META-INF/container.xml", container.encode()),
            ("OEBPS/content.opf", opf.encode()),
            ("OEBPS/nav.xhtml", xhtml("Contents", nav)),
            ("OEBPS/chapter1.xhtml", xhtml(TITLE, _html_body())),
        ]
    )


# --- Office formats (python-docx, python-pptx, openpyxl) -------------------------------------------------


def sample_docx() -> bytes:
    import docx

    doc = docx.Document()
    props = doc.core_properties
    props.title, props.author, props.created, props.modified = TITLE, "MoRAG Worker", _FIXED_TIME, _FIXED_TIME
    doc.add_heading(TITLE, level=1)
    doc.add_heading("What MoRAG Worker does", level=2)
    doc.add_paragraph(INTRO)
    doc.add_heading("How a task flows", level=2)
    for item in FLOW:
        doc.add_paragraph(item, style="List Bullet")
    doc.add_heading("Supported inputs", level=2)
    table = doc.add_table(rows=len(TABLE), cols=len(TABLE[0]))
    for r, row in enumerate(TABLE):
        for c, cell in enumerate(row):
            table.cell(r, c).text = cell
    doc.add_heading("Privacy", level=2)
    doc.add_paragraph(PRIVACY)
    buf = io.BytesIO()
    doc.save(buf)
    return _restamp(buf.getvalue())


def sample_pptx() -> bytes:
    from pptx import Presentation
    from pptx.util import Inches

    prs = Presentation()
    props = prs.core_properties
    props.title, props.author, props.created, props.modified = TITLE, "MoRAG Worker", _FIXED_TIME, _FIXED_TIME
    slide = prs.slides.add_slide(prs.slide_layouts[0])
    slide.shapes.title.text = TITLE
    slide.placeholders[1].text = INTRO
    slide = prs.slides.add_slide(prs.slide_layouts[1])
    slide.shapes.title.text = "How a task flows"
    body = slide.placeholders[1].text_frame
    body.text = FLOW[0]
    for item in FLOW[1:]:
        body.add_paragraph().text = item
    slide = prs.slides.add_slide(prs.slide_layouts[5])
    slide.shapes.title.text = "Supported inputs"
    shape = slide.shapes.add_table(len(TABLE), 3, Inches(0.5), Inches(1.5), Inches(9), Inches(3))
    for r, row in enumerate(TABLE):
        for c, cell in enumerate(row):
            shape.table.cell(r, c).text = cell
    buf = io.BytesIO()
    prs.save(buf)
    return _restamp(buf.getvalue())


def sample_xlsx() -> bytes:
    from openpyxl import Workbook

    wb = Workbook()
    wb.properties.title, wb.properties.creator = TITLE, "MoRAG Worker"
    wb.properties.created = wb.properties.modified = _FIXED_TIME
    sheet = wb.active
    assert sheet is not None
    sheet.title = "Formats"
    for row in TABLE:
        sheet.append(row)
    queues = wb.create_sheet("Queues")
    queues.append(["User", "Queue", "Worker type"])
    queues.append(["alice", "gpu-tasks-alice", "gpu"])
    queues.append(["bob", "cpu-tasks-bob", "cpu"])
    buf = io.BytesIO()
    wb.save(buf)
    return _restamp(buf.getvalue())


def write_samples(dest: Path) -> list[Path]:
    """Write every sample into ``dest`` and return their paths."""
    dest.mkdir(parents=True, exist_ok=True)
    made: dict[str, str | bytes] = {
        "sample.txt": sample_txt(),
        "sample.md": sample_md(),
        "sample.html": sample_html(),
        "sample.csv": sample_csv(),
        "sample.json": sample_json(),
        "sample.pdf": sample_pdf(),
        "sample.epub": sample_epub(),
        "sample.docx": sample_docx(),
        "sample.pptx": sample_pptx(),
        "sample.xlsx": sample_xlsx(),
    }
    paths = []
    for name, data in made.items():
        path = dest / name
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8", newline="\n")
        else:
            path.write_bytes(data)
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    for written in write_samples(target):
        print(f"{written.name}: {written.stat().st_size} bytes")
