"""Compare document extractors on real files; the numbers behind the choices in core/processing/documents.py.

Usage: ``python bench/processing_extractors.py [--runs 3] [--xlsx-rows 20000] [PDF ...]`` (default: the
PDFs Debian ships under /usr/share/doc). For each PDF and extractor it prints words, "glued" words (more
than 25 letters: words run together) and the median of ``--runs`` timed runs after an untimed one, with
the lowest and highest, and the ratio to pypdf (the extractor the worker uses) run by run; then a
generated XLSX, markitdown against openpyxl read-only, the same way; then the machine's load during the
bench. Nothing is asserted. The generated XLSX's folder is removed however the bench ends.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's morag_worker, not an install

from bench.measure import MachineLoad, Spread, paired_ratios, scratch_folder  # noqa: E402

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


def timed(fn: Callable[[Path], str], path: Path, runs: int) -> tuple[str, list[float]]:
    """The text and the seconds of ``runs`` timed runs (a first untimed run pays for imports)."""
    text = fn(path)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        text = fn(path)
        times.append(time.perf_counter() - start)
    return text, times


def bench_pdf(path: Path, runs: int) -> None:
    extractors = [
        ("pypdf", with_pypdf),
        ("pypdfium2", with_pypdfium2),
        ("pdfminer.six", with_pdfminer),
        ("markitdown", with_markitdown_pdf),
    ]
    baseline: list[float] | None = None
    print(f"\n{path.name}")
    for name, fn in extractors:
        try:
            text, times = timed(fn, path, runs)
        except Exception as exc:  # a missing optional package: report and go on
            print(f"  {name:13} failed: {exc!r}")
            continue
        baseline = baseline or times
        words = WORD_RE.findall(text)
        glued = sum(1 for w in words if len(w) > 25)
        share = 100.0 * glued / max(1, len(words))
        ratio = paired_ratios(times, baseline).format("×", digits=2)
        print(f"  {name:13} words {len(words):6}  glued {glued:4} ({share:5.2f}%)")
        print(f"  {'':13} {Spread.of(times).format('s', digits=3)}; {ratio} of pypdf")


def bench_xlsx(rows: int, runs: int) -> None:
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
    with scratch_folder(prefix="morag-bench-xlsx-") as tmp:
        path = tmp / "big.xlsx"
        workbook.save(path)
        _, ours = timed(lambda p: XlsxProcessor().process(p, {}, no_progress).markdown, path, runs)
        _, theirs = timed(
            lambda p: str(XlsxConverter().convert(io.BytesIO(p.read_bytes()), StreamInfo(extension=".xlsx"))),
            path,
            runs,
        )
    print(f"\nXLSX {rows} rows:")
    print(f"  openpyxl read-only {Spread.of(ours).format('s', digits=2)}")
    print(f"  markitdown         {Spread.of(theirs).format('s', digits=2)}")
    print(f"  markitdown takes {paired_ratios(theirs, ours).format('×', digits=1)} as long, run by run")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pdfs", nargs="*", type=Path, help="PDFs to compare (default: Debian's manuals)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per extractor; medians are shown")
    parser.add_argument("--xlsx-rows", type=int, default=20000, help="rows of the generated XLSX")
    args = parser.parse_args(argv)
    with MachineLoad() as load:
        for path in args.pdfs or [Path(p) for p in DEFAULT_PDFS]:
            if path.is_file():
                bench_pdf(path, args.runs)
            else:
                print(f"\n{path}: not found, skipped")
        bench_xlsx(args.xlsx_rows, args.runs)
    print(load.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
