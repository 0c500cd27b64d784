"""PDFs through PDFium with pypdf as the fallback (issue 14): the words on real documents, the
structure the outline gives, and what happens when PDFium cannot read a file."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pypdf
import pytest
import structlog

from morag_worker.core.processing import TaskCancelled, no_progress
from morag_worker.core.processing.pdf import PdfProcessor, read_with_pdfium, warm_up_pdf
from morag_worker.resources.samples.make_samples import multi_page_pdf

pytestmark = pytest.mark.unit

WORD_RE = re.compile(r"[^\W\d_]+")
SHARED_MIME = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")
LIBTASN1 = Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")
# texinfo draws a definition's "[Function]" label at the right end of its line, before the line's
# text: pypdf keeps the drawing order, PDFium the order on the line.
RIGHT_LABEL = re.compile(r"^(.*?) ?(\[[A-Z][A-Za-z ]*\])$", re.MULTILINE)


def _installed(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is not installed on this machine (scripts/setup.sh installs it)")
    return path


def _pdfium_words(path: Path) -> list[str]:
    import pypdfium2

    document = pypdfium2.PdfDocument(str(path))
    try:
        return WORD_RE.findall("\n".join(page.get_textpage().get_text_range() for page in document))
    finally:
        document.close()


def _pypdf_words(path: Path) -> list[str]:
    from pypdf import PdfReader

    text = "\n".join(page.extract_text() or "" for page in PdfReader(path).pages)
    return WORD_RE.findall(text)


@pytest.mark.parametrize("location", [SHARED_MIME, LIBTASN1], ids=lambda p: p.name)
def test_reference_pdfs_give_pdfiums_words_with_none_glued(location: Path) -> None:
    path = _installed(location)
    content = PdfProcessor().process(path, {}, no_progress)
    words = WORD_RE.findall(content.markdown)
    assert content.metadata["extractor"] == "pdfium"
    assert words == _pdfium_words(path)
    assert [w for w in words if len(w) > 25] == []


def test_the_words_equal_pypdfs_where_lines_are_drawn_in_order() -> None:
    path = _installed(SHARED_MIME)
    assert WORD_RE.findall(PdfProcessor().process(path, {}, no_progress).markdown) == _pypdf_words(path)


def test_the_words_differ_from_pypdfs_only_by_right_aligned_labels() -> None:
    path = _installed(LIBTASN1)
    markdown = PdfProcessor().process(path, {}, no_progress).markdown
    pypdf = _pypdf_words(path)
    assert sorted(WORD_RE.findall(markdown)) == sorted(pypdf)
    assert WORD_RE.findall(RIGHT_LABEL.sub(r"\2\1", markdown)) == pypdf


def test_the_outline_gives_headings_and_bullets_give_list_items() -> None:
    markdown = PdfProcessor().process(_installed(LIBTASN1), {}, no_progress).markdown
    lines = markdown.splitlines()
    assert "# 1 Introduction" in lines and "# 4 Function reference" in lines
    assert "## 2.1 ASN.1 syntax" in lines  # the outline leaves out the number the page shows
    assert any(line.startswith("- Distinguished Encoding Rules (DER)") for line in lines)
    assert not any(line.startswith("\u2022") for line in lines)


def test_pypdf_reads_what_pdfium_cannot_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pypdfium2

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise pypdfium2.PdfiumError("Failed to load document (PDFium: Data format error).")

    monkeypatch.setattr(pypdfium2, "PdfDocument", refuse)
    pdf = tmp_path / "input.bin"
    pdf.write_bytes(multi_page_pdf(3))
    content = PdfProcessor().process(pdf, {}, no_progress)
    assert content.metadata["extractor"] == "pypdf" and content.metadata["pages"] == 3


def test_cancelling_between_pages_is_not_a_reason_to_try_pypdf(tmp_path: Path) -> None:
    pdf = tmp_path / "input.bin"
    pdf.write_bytes(multi_page_pdf(5))
    seen: list[float] = []

    def progress(done: float, total: float | None, message: str) -> None:
        seen.append(done)
        if done == 2:
            raise TaskCancelled("stop now")

    with pytest.raises(TaskCancelled):
        PdfProcessor().process(pdf, {}, progress)
    assert seen == [0, 1, 2]  # once through the pages, not again with pypdf


def test_preload_warms_pdfium_on_a_pdf_made_here_that_both_extractors_read() -> None:
    """Converter children inherit PDFium's font tables from it (issue 14); no input is read."""
    assert read_with_pdfium(warm_up_pdf()) == "warm up"
    assert pypdf.PdfReader(io.BytesIO(warm_up_pdf("Courier"))).pages[0].extract_text() == "warm up"
    with structlog.testing.capture_logs() as events:
        PdfProcessor().preload()
    assert [e["event"] for e in events if e["event"].startswith("processing.")] == []
