"""Compare document extractors on real files; the numbers behind the choices in core/processing/documents.py.

Usage: ``python bench/processing_extractors.py [PDF ...]`` (default: the PDFs Debian ships under
/usr/share/doc). For each PDF and extractor it prints words, "glued" words (more than 25 letters: words run
together) and the best of 3 timed runs after an untimed one, as a ratio to pypdf (the extractor the worker
uses); then a generated 20,000-row XLSX, markitdown against openpyxl read-only. Nothing is asserted.
"""

from __future__ import annotations

import io
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's morag_worker, not an install
WORD_RE = re.compile(r"[^\W\d_]+")
DEFAULT_PDFS = [
    "/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf",
    "/usr/share/doc/libtasn1-doc/libtasn1.pdf",
]


def with_pypdf(path: Path) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() or "" for page in PdfReader(path).pages)


def with_pypdfium2(path: Path) -> str:
    import pypdfium2

    document = pypdfium2.PdfDocument(path)
    try:
        return "\n".join(page.get_textpage().get_text_range() for page in document)
    finally:
        document.close()


def with_pdfminer(path: Path) -> str:
    from pdfminer.high_level import extract_text

    return str(extract_text(str(path)))


def with_markitdown_pdf(path: Path) -> str:
    from markitdown import StreamInfo
    from markitdown.converters import PdfConverter

    with path.open("rb") as f:
        return str(PdfConverter().convert(f, StreamInfo(extension=".pdf")).markdown)


def timed(fn: Callable[[Path], str], path: Path, repeat: int = 3) -> tuple[str, float]:
    """The text and the best of ``repeat`` runs (a first untimed run pays for imports)."""
    text = fn(path)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        text = fn(path)
        best = min(best, time.perf_counter() - start)
    return text, best


def bench_pdf(path: Path) -> None:
    extractors = [
        ("pypdf", with_pypdf),
        ("pypdfium2", with_pypdfium2),
        ("pdfminer.six", with_pdfminer),
        ("markitdown", with_markitdown_pdf),
    ]
    baseline = None
    print(f"\n{path.name}")
    for name, fn in extractors:
        try:
            text, seconds = timed(fn, path)
        except Exception as exc:  # a missing optional package: report and go on
            print(f"  {name:13} failed: {exc!r}")
            continue
        baseline = baseline or seconds
        words = WORD_RE.findall(text)
        glued = sum(1 for w in words if len(w) > 25)
        share = 100.0 * glued / max(1, len(words))
        print(
            f"  {name:13} words {len(words):6}  glued {glued:4} ({share:5.2f}%)  "
            f"{seconds:6.2f} s  x{seconds / baseline:5.2f} of pypdf"
        )


def bench_xlsx(rows: int = 20000) -> None:
    from markitdown import StreamInfo
    from markitdown.converters import XlsxConverter
    from openpyxl import Workbook

    from morag_worker.core.processing.base import no_progress
    from morag_worker.core.processing.office import XlsxProcessor

    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(["id", "user", "queue", "pages", "words", "note"])
    for i in range(rows):
        sheet.append([i, f"user{i % 50}", f"gpu-tasks-user{i % 50}", i % 300, i * 7, "converted"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.xlsx"
        workbook.save(path)
        _, ours = timed(lambda p: XlsxProcessor().process(p, {}, no_progress).markdown, path, 1)
        _, theirs = timed(
            lambda p: str(XlsxConverter().convert(io.BytesIO(p.read_bytes()), StreamInfo(extension=".xlsx"))),
            path,
            1,
        )
    print(f"\nXLSX {rows} rows: openpyxl read-only {ours:.2f} s, markitdown {theirs:.2f} s")
    print(f"  markitdown takes x{theirs / ours:.1f} as long")


def main(argv: list[str]) -> int:
    pdfs = [Path(p) for p in (argv or DEFAULT_PDFS)]
    for path in pdfs:
        if path.is_file():
            bench_pdf(path)
        else:
            print(f"\n{path}: not found, skipped")
    bench_xlsx()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
