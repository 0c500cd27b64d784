"""Processing: registry resolution, plugins, every format on the samples, bad input, progress and cancel."""

from __future__ import annotations

import importlib.metadata
import io
import os
import shutil
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from morag_worker.core.processing import (
    PLUGIN_GROUP,
    CorruptInput,
    EmptyContent,
    ProcessedContent,
    ProcessingError,
    ProcessorRegistry,
    TaskCancelled,
    UnsupportedContent,
    media,
    no_progress,
    office,
    sniff,
)
from morag_worker.core.processing.documents import fenced
from morag_worker.resources.samples.make_samples import build_pdf, multi_page_pdf

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[2] / "resources" / "samples"
INTRO = "MoRAG Worker runs on a contributor's machine"
TABLE_ROW = "| PDF | pypdf | pages |"
PDF_DAMAGED = "the PDF file is damaged or not a PDF file"


@pytest.fixture(scope="module")
def registry() -> ProcessorRegistry:
    return ProcessorRegistry.default(entry_points=[])


def run(registry: ProcessorRegistry, path: Path, **kw: Any) -> ProcessedContent:
    options = kw.pop("options", {})
    progress = kw.pop("progress", no_progress)
    processor = registry.resolve(kw.get("content_type"), kw.get("filename"), path, **kw.get("resolve", {}))
    return processor.process(path, options, progress)


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def a_zip(entries: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


# --- Registry --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "filename", "expected"),
    [
        ("application/pdf", "report.docx", "pdf"),  # a known content type wins over the name
        ("text/html; charset=utf-8", None, "html"),
        ("PDF", None, "pdf"),
        ("text", "notes.md", "text"),
        ("markdown", None, "markdown"),
        ("document", "report.docx", "docx"),  # a generic family name defers to the name
        ("application/octet-stream", "Sheet.XLSX", "xlsx"),
        (None, "slides.pptx", "pptx"),
        ("image/png", "scan.pdf", "pdf"),  # an unknown type falls through to the name
    ],
)
def test_resolve_by_content_type_then_extension(
    registry: ProcessorRegistry, tmp_path: Path, content_type: str | None, filename: str | None, expected: str
) -> None:
    path = write(tmp_path, "download.bin", b"\x00\x01 not looked at")
    assert registry.resolve(content_type, filename, path).name == expected


def test_resolve_uses_the_path_name_without_a_filename_hint(
    registry: ProcessorRegistry, tmp_path: Path
) -> None:
    assert registry.resolve(None, None, write(tmp_path, "notes.md", "# Hi")).name == "markdown"


# Each bundled sample and the format its content alone says it is.
SAMPLE_FORMATS = [
    ("sample.pdf", "pdf"),
    ("sample.docx", "docx"),
    ("sample.pptx", "pptx"),
    ("sample.xlsx", "xlsx"),
    ("sample.epub", "epub"),
    ("sample.html", "html"),
    ("sample.txt", "text"),
    ("sample.md", "text"),  # markdown is text that a name or type calls markdown
    ("sample.csv", "csv"),
    ("sample.json", "json"),
]


@pytest.mark.parametrize(
    ("sample", "expected"),
    SAMPLE_FORMATS,
)
def test_resolve_by_sniffing_content(
    registry: ProcessorRegistry, tmp_path: Path, sample: str, expected: str
) -> None:
    blob = tmp_path / "blob"
    shutil.copyfile(SAMPLES / sample, blob)
    assert registry.resolve(None, None, blob).name == expected
    assert registry.resolve("document", "upload", blob).name == expected


def test_sniffing_xml_and_web_pages_without_doctype(registry: ProcessorRegistry, tmp_path: Path) -> None:
    assert registry.resolve(None, None, write(tmp_path, "a", '<?xml version="1.0"?><r/>')).name == "xml"
    fragment = write(tmp_path, "b", "<p>A page without a doctype.</p>")
    assert registry.resolve(None, None, fragment).name == "text"
    assert registry.resolve("web", None, fragment).name == "html"


# --- Content decides: sniffing, and hints that disagree with it ---------------------------------------


CERTAIN = {"pdf", "docx", "xlsx", "pptx", "epub"}


def sniffed(path: Path) -> sniff.Sniffed | None:
    """What ``sniff`` finds in the file, having checked that its bytes in memory sniff the same (a
    small download is judged in memory)."""
    found = sniff.sniff(path)
    assert sniff.sniff(path.read_bytes()) == found
    return found


@pytest.mark.parametrize(
    ("sample", "expected"),
    SAMPLE_FORMATS,
)
def test_sniff_each_format_from_content_alone(tmp_path: Path, sample: str, expected: str) -> None:
    saved = tmp_path / "input.bin"
    shutil.copyfile(SAMPLES / sample, saved)
    assert sniffed(saved) == sniff.Sniffed(expected, certain=expected in CERTAIN)


def opc(main_part: str, main_type: str, *, extra_defaults: str = "", rels: bool = True) -> dict[str, bytes]:
    """The manifest members of an Office Open XML package whose main part is ``main_part``."""
    types = (
        '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f"{extra_defaults}"
        f'<Override PartName="/{main_part}" ContentType="{main_type}"/></Types>'
    )
    members = {"[Content_Types].xml": types.encode(), main_part: b"<x/>"}
    if rels:
        members["_rels/.rels"] = (
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/'
            'relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/'
            f'2006/relationships/officeDocument" Target="{main_part}"/></Relationships>'
        ).encode()
    return members


OOXML = "application/vnd.openxmlformats-officedocument."
XLSX_TYPE = OOXML + "spreadsheetml.sheet"


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        # the main part decides, wherever it lives and whatever else the manifest lists
        (opc("word/body.xml", OOXML + "wordprocessingml.document.main+xml"), "docx"),
        (
            opc(
                "word/document.xml",
                OOXML + "wordprocessingml.document.main+xml",
                extra_defaults=f'<Default Extension="xlsx" ContentType="{XLSX_TYPE}"/>',
            ),
            "docx",  # a Word file with an embedded spreadsheet is a Word file
        ),
        (opc("xl/book.xml", "application/vnd.ms-excel.sheet.macroEnabled.main+xml"), "xlsx"),
        (opc("ppt/presentation.xml", OOXML + "presentationml.presentation.main+xml"), "pptx"),
        (opc("xl/workbook.xml", "application/xml", rels=False), "xlsx"),  # no .rels: the usual part names
        ({"mimetype": b"application/epub+zip", "META-INF/container.xml": b"<c/>"}, "epub"),
        ({"mimetype": b"application/vnd.oasis.opendocument.text", "content.xml": b"<x/>"}, "odt"),
        # zips that are not documents are not mistaken for one
        ({"hello.txt": b"hi"}, "zip"),
        ({"word/document.xml": b"<w/>"}, "zip"),  # Office part names without an OPC manifest
        ({"mimetype": b"application/zip", "xl/workbook.xml": b"<w/>"}, "zip"),
        ({}, "zip"),  # an empty archive
    ],
)
def test_sniff_zip_containers_by_what_they_declare(
    tmp_path: Path, members: dict[str, bytes], expected: str
) -> None:
    found = sniffed(write(tmp_path, "input.bin", a_zip(members)))
    assert found == sniff.Sniffed(expected, certain=True)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a": [1, 2, {"b": null}]}', "json"),
        (b"  [1, 2, 3]\n", "json"),
        (b"{not json, just braces}", "text"),
        (b"[" + b'{"row": 1}, ' * 5000 + b'{"row": 2}]', "json"),  # longer than the head: parsed whole
        (b"name;amount\nalice;3\nbob;4\n", "csv"),
        (b"a\tb\tc\n1\t2\t3\n", "csv"),
        (b"Dear Bob, hello.\nThanks, and bye.\n", "csv"),  # a guess: one comma on each line
        (b"Dear Bob, hello.\nThanks and bye.\n", "text"),
        (b"# Notes\n\na, b\nc, d\n", "text"),  # a markdown heading is not a CSV header
        (b"| a | b |\n| --- | --- |\n| 1 | 2 |\n", "text"),  # a markdown table is not CSV
        (b"<!DOCTYPE html><title>t</title>", "html"),
        (b'<?xml version="1.0"?><r/>', "xml"),
        (b"just words\n", "text"),
        ("Grüße".encode("utf-16"), "text"),
    ],
)
def test_sniff_text_formats(tmp_path: Path, data: bytes, expected: str) -> None:
    assert sniffed(write(tmp_path, "input.bin", data)) == sniff.Sniffed(expected, certain=False)


def test_sniff_damaged_unknown_and_empty(tmp_path: Path) -> None:
    cut = (SAMPLES / "sample.docx").read_bytes()[:20000]
    assert sniffed(write(tmp_path, "cut", cut)) == sniff.Sniffed(sniff.DAMAGED_ZIP, certain=False)
    assert sniffed(write(tmp_path, "noise", bytes(range(256)) * 4)) is None
    assert sniffed(write(tmp_path, "empty", b"")) is None
    assert sniff.sniff_format(SAMPLES / "sample.pdf") == "pdf"


def test_sniff_reads_a_bounded_amount_of_a_hostile_manifest(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", b"<" * (64 << 20))  # 64 MiB of one byte: 64 KiB stored
    started = time.monotonic()
    assert sniffed(write(tmp_path, "bomb", buf.getvalue())) == sniff.Sniffed("zip", certain=True)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("data", "match", "error"),
    [
        (b"", "the file is empty", EmptyContent),
        ((SAMPLES / "sample.xlsx").read_bytes()[:3000], "damaged zip archive .*cut short", CorruptInput),
        (bytes(range(256)) * 4, "not recognised from its name or content", UnsupportedContent),
        (
            a_zip({"a.txt": b"a"}),
            "it is a zip archive, but not a DOCX, XLSX, PPTX or EPUB",
            UnsupportedContent,
        ),
        (
            a_zip({"mimetype": b"application/vnd.oasis.opendocument.spreadsheet"}),
            r"not supported: it is an OpenDocument spreadsheet \(ODS\); saved as XLSX it would convert",
            UnsupportedContent,
        ),
    ],
)
def test_a_download_without_hints_that_is_no_supported_format_fails_clearly(
    registry: ProcessorRegistry, tmp_path: Path, data: bytes, match: str, error: type[ProcessingError]
) -> None:
    with pytest.raises(error, match=match):
        run(registry, write(tmp_path, "input.bin", data), resolve={"name_from_path": False})


@pytest.mark.parametrize(
    ("sample", "content_type", "filename", "expected"),
    [
        ("sample.xlsx", XLSX_TYPE, None, "xlsx"),  # the worker's own case: a type, saved as input.bin
        ("sample.xlsx", None, None, "xlsx"),
        ("sample.xlsx", None, "report.docx", "xlsx"),  # content certainly disagrees: content decides
        ("sample.docx", "text/plain", "notes.txt", "docx"),
        ("sample.pdf", "text/html", "page.html", "pdf"),
        ("sample.pptx", "application/pdf", None, "pptx"),
        ("sample.epub", "csv", None, "epub"),
        ("sample.json", None, "data.txt", "text"),  # text formats look alike: the hint stands
        ("sample.md", "markdown", None, "markdown"),
        ("sample.csv", None, "table.csv", "csv"),
    ],
)
def test_content_decides_where_a_hint_would_break_the_parser(
    registry: ProcessorRegistry,
    tmp_path: Path,
    sample: str,
    content_type: str | None,
    filename: str | None,
    expected: str,
) -> None:
    saved = tmp_path / "input.bin"
    shutil.copyfile(SAMPLES / sample, saved)
    assert registry.resolve(content_type, filename, saved).name == expected
    # A small download is resolved from its bytes in memory, which have no name: the same answer.
    assert registry.resolve(content_type, filename, saved.read_bytes()).name == expected
    content = run(registry, saved, content_type=content_type, filename=filename)
    assert content.metadata["format"] == expected
    assert "pypdf" in content.markdown  # a cell of the table every sample holds


def test_a_hint_stands_where_content_is_not_certain_and_the_parser_says_what_is_wrong(
    registry: ProcessorRegistry, tmp_path: Path
) -> None:
    words = write(tmp_path, "input.bin", "hello, this is not JSON\n")
    with pytest.raises(CorruptInput, match="the JSON file is not valid JSON"):
        run(registry, words, content_type="application/json")
    with pytest.raises(CorruptInput, match="the PDF file is not a PDF"):
        run(registry, words, filename="report.pdf")
    with pytest.raises(CorruptInput, match="the DOCX file is not a DOCX file: it is a zip archive without"):
        run(registry, write(tmp_path, "other.bin", a_zip({"a.txt": b"a"})), filename="report.docx")


def test_content_does_not_override_a_plugin_claim(tmp_path: Path) -> None:
    registry = ProcessorRegistry.default(entry_points=[plugin("better_pdf", ["application/pdf"])])
    pdf = tmp_path / "input.bin"
    shutil.copyfile(SAMPLES / "sample.pdf", pdf)
    assert registry.resolve("application/pdf", None, pdf).name == "better_pdf"
    assert registry.resolve(None, None, pdf).name == "pdf"


def test_unknown_types_are_unsupported_with_the_list_of_formats(
    registry: ProcessorRegistry, tmp_path: Path
) -> None:
    png = write(tmp_path, "scan.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(UnsupportedContent, match=r"type 'image/png' is not supported; supported: ") as caught:
        registry.resolve("image/png", "scan.png", png)
    assert "csv, docx, epub, html, json, markdown, pdf, pptx, text" in caught.value.message
    with pytest.raises(UnsupportedContent, match=r"the file type '\.png' is not supported; .*pdf"):
        registry.resolve(None, None, png)
    other_zip = write(tmp_path, "bundle", a_zip({"hello.txt": b"hi"}))
    with pytest.raises(UnsupportedContent, match=r"it is a zip archive, but not a DOCX, XLSX, PPTX or EPUB"):
        registry.resolve(None, None, other_zip)
    with pytest.raises(UnsupportedContent, match="not recognised"):
        registry.resolve(None, None, write(tmp_path, "noise", b"\x00\x01\x02 not a format" * 10))


def test_an_empty_file_without_hints_is_empty_content(registry: ProcessorRegistry, tmp_path: Path) -> None:
    with pytest.raises(EmptyContent, match="empty"):
        registry.resolve(None, None, write(tmp_path, "nothing", b""))


def test_audio_and_video_need_the_audio_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(media, "is_available", lambda: False)
    registry = ProcessorRegistry.default(entry_points=[])
    clip = write(tmp_path, "talk.mp3", b"ID3\x03\x00")
    for content_type, name in [("audio", None), ("video/mp4", None), (None, "talk.mp3"), (None, None)]:
        with pytest.raises(UnsupportedContent) as caught:
            registry.resolve(content_type, name, clip)
        assert caught.value.message == media.AUDIO_EXTRA_MESSAGE
        assert "pip install morag-worker[audio]" in str(caught.value)
    assert "audio" not in registry.supported()


# --- Plugins ---------------------------------------------------------------------------------------------


class FakeEntryPoint:
    def __init__(self, name: str, load: Callable[[], Any]) -> None:
        self.name = name
        self.value = f"fake_plugin_{name}:register"
        self._load = load

    def load(self) -> Any:
        return self._load()


class EchoProcessor:
    def __init__(self, name: str) -> None:
        self.name = name

    def process(self, path: Path, options: Mapping[str, Any], progress: Any) -> ProcessedContent:
        return ProcessedContent(f"echo {path.name}", {"processor": self.name})


def plugin(name: str, content_types: Iterable[str], extensions: Iterable[str] = ()) -> FakeEntryPoint:
    def register(registry: ProcessorRegistry) -> None:
        registry.register(EchoProcessor(name), content_types=content_types, extensions=extensions)

    return FakeEntryPoint(name, lambda: register)


def test_plugins_register_and_may_replace_builtins(tmp_path: Path) -> None:
    registry = ProcessorRegistry.default(
        entry_points=[
            plugin("images", ["image", "image/*"], [".png"]),
            plugin("better_pdf", ["application/pdf"]),
        ]
    )
    png = write(tmp_path, "scan.png", b"\x89PNG")
    assert registry.resolve("image/jpeg", None, png).name == "images"
    assert registry.resolve(None, None, png).name == "images"
    assert registry.resolve("application/pdf", None, png).name == "better_pdf"
    assert registry.resolve(None, "x.pdf", png).name == "pdf"  # only what the plugin claimed changed
    assert "image" in registry.supported()


def test_broken_plugins_are_logged_and_skipped(tmp_path: Path) -> None:
    def fails_halfway(registry: ProcessorRegistry) -> None:
        registry.register(EchoProcessor("half"), content_types=["pdf"], extensions=[".half"])
        raise RuntimeError("plugin bug")

    def import_error() -> Any:
        raise ImportError("No module named 'fake_plugin'")

    entry_points = [
        FakeEntryPoint("unimportable", import_error),
        FakeEntryPoint("not_callable", lambda: 42),
        FakeEntryPoint("halfway", lambda: fails_halfway),
        importlib.metadata.EntryPoint("missing", "no_such_module_for_morag_tests:register", PLUGIN_GROUP),
        plugin("good", ["image/png"]),
    ]
    registry = ProcessorRegistry()
    with structlog.testing.capture_logs() as logs:
        loaded = registry.load_plugins(entry_points)
    assert loaded == ["good"]
    failed = {e["plugin"]: e for e in logs if e["event"] == "processing.plugin_failed"}
    assert set(failed) == {"unimportable", "not_callable", "halfway", "missing"}
    assert "plugin bug" in failed["halfway"]["error"]
    assert failed["halfway"]["log_level"] == "warning"
    stray = write(tmp_path, "a.half", b"\x00")
    assert registry.resolve("image/png", None, stray).name == "good"
    # What the failing plugin registered before raising was undone.
    for content_type, name in [("pdf", None), (None, "a.half")]:
        with pytest.raises(UnsupportedContent):
            registry.resolve(content_type, name, stray)


def test_default_reads_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def entry_points(*, group: str) -> list[FakeEntryPoint]:
        asked.append(group)
        return [plugin("from_metadata", ["image"])]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    registry = ProcessorRegistry.default()
    assert asked == ["morag_worker.processors"]
    assert "image" in registry.supported()


# --- Formats, on the committed samples -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "phrases", "extra"),
    [
        ("sample.txt", [INTRO, "gpu-tasks-{user_id}"], {"encoding": "utf-8"}),
        ("sample.pdf", [INTRO, "gpu-tasks-{user_id}", "Audio and video | faster-whisper"], {"pages": 2}),
        ("sample.docx", ["# MoRAG Worker: contributing", INTRO, "* The worker downloads", TABLE_ROW], {}),
        ("sample.pptx", ["# How a task flows", INTRO, TABLE_ROW], {"slides": 3}),
        ("sample.xlsx", ["## Formats", TABLE_ROW, "| alice | gpu-tasks-alice | gpu |"], {"sheets": 2}),
        ("sample.html", ["## How a task flows", INTRO, "* The worker downloads", TABLE_ROW], {}),
        ("sample.epub", ["## Privacy", INTRO, TABLE_ROW], {}),
        ("sample.csv", ["| Format | Processor | Progress unit |", TABLE_ROW], {"rows": 4}),
        ("sample.md", ["## How a task flows", INTRO, TABLE_ROW], {}),
        ("sample.json", ['"title": "MoRAG Worker: contributing', INTRO], {"json_type": "dict"}),
    ],
)
def test_samples_convert_to_markdown(
    registry: ProcessorRegistry, sample: str, phrases: list[str], extra: dict[str, Any]
) -> None:
    content = run(registry, SAMPLES / sample)
    for phrase in phrases:
        assert phrase in content.markdown
    fmt = {"txt": "text", "md": "markdown"}.get(sample.rsplit(".", 1)[1], sample.rsplit(".", 1)[1])
    meta = content.metadata
    assert meta["format"] == fmt and meta["processor"] == fmt
    assert meta["word_count"] > 15
    assert extra.items() <= meta.items()
    if fmt not in ("text", "csv", "json"):
        assert meta["title"] == "MoRAG Worker: contributing a GPU to a MoRAG server"
    assert "scripts are not content" not in content.markdown
    assert (SAMPLES / sample).stat().st_size < 100_000


def test_text_decoding_boms_fallbacks_and_declared_charsets(
    registry: ProcessorRegistry, tmp_path: Path
) -> None:
    bom = run(registry, write(tmp_path, "bom.txt", "\ufeffHéllo\r\nworld\r\n".encode("utf-8")))
    assert bom.markdown == "Héllo\nworld\n" and bom.metadata["encoding"] == "utf-8"
    utf16 = run(registry, write(tmp_path, "u16.txt", "Grüße aus Köln".encode("utf-16")))
    assert utf16.markdown == "Grüße aus Köln\n" and utf16.metadata["encoding"] == "utf-16"
    legacy = run(registry, write(tmp_path, "legacy.txt", "“Quoted” café".encode("cp1252")))
    assert legacy.markdown == "“Quoted” café\n"
    assert legacy.metadata["notes"] == ["not valid UTF-8; decoded as cp1252 (a fallback)"]
    russian = write(tmp_path, "ru.txt", "Привет, мир".encode("koi8_r"))
    declared = run(registry, russian, options={"charset": "koi8-r"})
    assert declared.markdown == "Привет, мир\n"
    assert "declared charset" in declared.metadata["notes"][0]
    unknown = run(registry, russian, options={"charset": "no-such-charset"})
    assert unknown.metadata["notes"][0] == "ignored the unknown charset 'no-such-charset'"
    md = run(registry, write(tmp_path, "doc.md", "Intro\n\n## The Title ##\ntext"))
    assert md.metadata["title"] == "The Title" and md.metadata["format"] == "markdown"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (bytes(range(256)) * 8, "binary data"),
        (os.urandom(4096).replace(b"\x00", b"\x01"), "control characters|binary data"),
        (b"plain words " * 50 + b"\x00\x00\x00", "NUL bytes"),
        (b"text\x01\x02\x03\x04\x05 more" * 20, "control characters"),
        (b"\xef\xbb\xbf\xff\xfe\xfa", "byte-order mark"),
    ],
)
def test_binary_junk_named_txt_is_refused(
    registry: ProcessorRegistry, tmp_path: Path, data: bytes, match: str
) -> None:
    with pytest.raises(CorruptInput, match=match):
        run(registry, write(tmp_path, "junk.txt", data))


def test_empty_and_blank_documents_are_empty_content(registry: ProcessorRegistry, tmp_path: Path) -> None:
    with pytest.raises(EmptyContent, match="the text file contains no text"):
        run(registry, write(tmp_path, "blank.txt", " \n\t\n"))
    with pytest.raises(EmptyContent, match="the PDF file is empty"):
        run(registry, write(tmp_path, "zero.pdf", b""))
    with pytest.raises(EmptyContent, match="holds no data"):
        run(registry, write(tmp_path, "empty.json", "{}"))


def test_csv_with_semicolons_and_pipes(registry: ProcessorRegistry, tmp_path: Path) -> None:
    content = run(registry, write(tmp_path, "eu.csv", 'name;amount;note\n"a|b";1,5;x\nc;2;"two\nlines"\n'))
    assert "| name | amount | note |" in content.markdown
    assert r"| a\|b | 1,5 | x |" in content.markdown
    assert "| c | 2 | two lines |" in content.markdown
    assert content.metadata["delimiter"] == ";" and content.metadata["rows"] == 2


def test_json_and_xml_are_validated_and_fenced(registry: ProcessorRegistry, tmp_path: Path) -> None:
    js = run(registry, write(tmp_path, "d.json", '{"queue": "gpu-tasks-alice", "pages": [1, 2]}'))
    assert js.markdown.startswith('```json\n{\n  "queue": "gpu-tasks-alice"')
    with pytest.raises(CorruptInput, match=r"the JSON file is not valid JSON \(.* at line 2, column"):
        run(registry, write(tmp_path, "bad.json", '{"a": 1,\n  oops}'))
    xml = run(registry, write(tmp_path, "d.xml", '<?xml version="1.0"?>\n<feed><title>MoRAG</title></feed>'))
    assert xml.markdown.startswith("```xml\n<?xml") and xml.metadata["root_element"] == "feed"
    with pytest.raises(CorruptInput, match="the XML file is not well-formed XML"):
        run(registry, write(tmp_path, "bad.xml", "<feed><title>MoRAG</feed>"))
    bomb = '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><l>&b;</l>'
    with pytest.raises(UnsupportedContent, match="refused for safety"):
        run(registry, write(tmp_path, "bomb.xml", bomb))


def test_fenced_outgrows_backticks_inside() -> None:
    assert fenced("a\n```\nb", "xml") == "````xml\na\n```\nb\n````"


def test_html_charset_from_meta(registry: ProcessorRegistry, tmp_path: Path) -> None:
    page = '<html><head><meta charset="koi8-r"><title>Т</title></head><body><p>Привет</p></body></html>'
    content = run(registry, write(tmp_path, "ru.html", page.encode("koi8_r")))
    assert "Привет" in content.markdown and content.metadata["encoding"] == "koi8-r"


def test_html_nested_too_deeply_for_markdown_is_plain_text_with_a_note(
    registry: ProcessorRegistry, tmp_path: Path
) -> None:
    page = "<html><body>" + "<div>" * 5000 + "<p>Deep words survive.</p>" + "</div>" * 5000 + "</body></html>"
    content = run(registry, write(tmp_path, "deep.html", page))
    assert content.markdown == "Deep words survive.\n"
    assert content.metadata["notes"] == ["nested too deeply for markdown conversion; extracted as plain text"]


# --- Damaged and misnamed inputs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        (
            "cut.pdf",
            (SAMPLES / "sample.pdf").read_bytes()[:1200],
            PDF_DAMAGED,
        ),
        ("cut-end.pdf", multi_page_pdf(20)[:-60], PDF_DAMAGED),
        ("random.pdf", os.urandom(5000), "the PDF file is not a PDF"),
        ("words.pdf", b"hello, this is not a PDF at all\n", "the PDF file is not a PDF"),
        ("random.docx", os.urandom(5000), "the DOCX file is damaged or not a DOCX file .*not a valid zip"),
        ("random.xlsx", os.urandom(5000), "the XLSX file is damaged or not an XLSX file .*not a valid zip"),
        ("random.pptx", os.urandom(5000), "the PPTX file is damaged or not a PPTX file"),
        ("random.epub", os.urandom(5000), "the EPUB file is damaged or not an EPUB file"),
        ("cut.docx", (SAMPLES / "sample.docx").read_bytes()[:20000], "download cut short"),
        (
            "other.docx",
            a_zip({"hello.txt": b"hi"}),
            "not a DOCX file: it is a zip archive without word/document",
        ),
        ("other.xlsx", a_zip({"word/document.xml": b"<w/>"}), "without xl/workbook.xml"),
        ("junk.docx", a_zip({"[Content_Types].xml": b"<x", "word/document.xml": b"\x00\x01"}), "DOCX file"),
        ("junk.xlsx", a_zip({"xl/workbook.xml": b"not xml"}), "the XLSX file is damaged or not an XLSX file"),
    ],
)
def test_corrupt_inputs_fail_with_a_clear_message(
    registry: ProcessorRegistry, tmp_path: Path, name: str, data: bytes, match: str
) -> None:
    with pytest.raises(CorruptInput, match=match) as caught:
        run(registry, write(tmp_path, name, data))
    assert isinstance(caught.value, ProcessingError) and caught.value.message == str(caught.value)


MATH_NS = 'xmlns:m="http://schemas.openxmlformats.org/officeDocument/2006/math"'


def docx_with_equations(path: Path) -> Path:
    """A DOCX with a heading, a list, an inline equation (x squared) and a display one (a over b)."""
    import docx
    from docx.oxml import parse_xml

    doc = docx.Document()
    doc.add_heading("Equations here", level=1)
    doc.add_paragraph("First point", style="List Bullet")
    inline = doc.add_paragraph("Inline: ")
    inline._p.append(
        parse_xml(
            f"<m:oMath {MATH_NS}><m:sSup><m:e><m:r><m:t>x</m:t></m:r></m:e>"
            "<m:sup><m:r><m:t>2</m:t></m:r></m:sup></m:sSup></m:oMath>"
        )
    )
    doc.add_paragraph()._p.append(
        parse_xml(
            f"<m:oMathPara {MATH_NS}><m:oMath><m:f><m:fPr/><m:num><m:r><m:t>a</m:t></m:r></m:num>"
            "<m:den><m:r><m:t>b</m:t></m:r></m:den></m:f></m:oMath></m:oMathPara>"
        )
    )
    doc.add_paragraph("The end.")
    doc.save(path)
    return path


def lxml_62_pre_processing(stream: io.BytesIO) -> io.BytesIO:
    """What markitdown 0.1.9's DOCX pre-processing gives with lxml 6.2: namespace prefixes dropped."""
    import re

    out = io.BytesIO()
    with zipfile.ZipFile(stream) as zin, zipfile.ZipFile(out, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "word/document.xml":
                data = re.sub(rb"<(/?)[A-Za-z0-9]+:", rb"<\1", data)
            zout.writestr(name, data)
    out.seek(0)
    return out


@pytest.mark.parametrize("pre_processing", ["markitdown's, as installed", "broken as with lxml 6.2"])
def test_docx_converts_whatever_markitdown_pre_processing_does(
    monkeypatch: pytest.MonkeyPatch, registry: ProcessorRegistry, tmp_path: Path, pre_processing: str
) -> None:
    from markitdown.converter_utils.docx import pre_process

    if pre_processing.startswith("broken"):
        monkeypatch.setattr(pre_process, "pre_process_docx", lxml_62_pre_processing)
    for sample in (SAMPLES / "sample.docx", docx_with_equations(tmp_path / "eq.docx")):
        saved = tmp_path / "input.bin"
        shutil.copyfile(sample, saved)
        content = run(registry, saved, content_type="document")
        assert content.metadata["format"] == "docx" and "notes" not in content.metadata
    assert "# Equations here" in content.markdown and "* First point" in content.markdown
    assert "Inline: $x^{2}$" in content.markdown and "$$\\frac{a}{b}$$" in content.markdown
    sample_md = run(registry, SAMPLES / "sample.docx").markdown
    for phrase in ("## How a task flows", TABLE_ROW, "* The worker downloads"):  # headings, tables, lists
        assert phrase in sample_md
    assert "| Format | Processor | Progress unit |\n| --- | --- | --- |\n" in sample_md  # a header row


def test_an_equation_markitdown_cannot_read_is_left_out_with_a_note(
    monkeypatch: pytest.MonkeyPatch, registry: ProcessorRegistry, tmp_path: Path
) -> None:
    from markitdown.converter_utils.docx import pre_process

    monkeypatch.setattr(pre_process, "pre_process_docx", lxml_62_pre_processing)
    path = docx_with_equations(tmp_path / "eq.docx")
    data = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            part = zin.read(name)
            zout.writestr(name, part.replace(b"<m:fPr/>", b"") if name == DOCUMENT else part)
    content = run(registry, path)
    assert "$x^{2}$" in content.markdown and "The end." in content.markdown
    assert content.metadata["notes"] == ["1 equation(s) could not be converted to LaTeX and were left out"]


def test_zip_bombs_are_refused(monkeypatch: pytest.MonkeyPatch, registry: ProcessorRegistry) -> None:
    monkeypatch.setattr(office, "MAX_UNPACKED_BYTES", 10_000)
    with pytest.raises(UnsupportedContent, match="would unpack to .* MiB, more than the limit"):
        run(registry, SAMPLES / "sample.docx")


DOCUMENT = "word/document.xml"


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        # 2 GiB of zeros in 2 MB: over the unpacked limit by what it declares
        ("declares-2-GiB", UnsupportedContent, "would unpack to 2048 MiB, more than the limit"),
        # 64 MiB of zeros declared honestly: under the limit, but compressed about 1000:1
        ("honest-1000-to-1", UnsupportedContent, "looks like a zip bomb: word/document.xml would unpack to"),
        # declares 1000 bytes, holds 1 GiB: zipfile would inflate up to 2 GiB before trusting the size
        ("lies-about-its-size", CorruptInput, "unpacks to more than the 1000 bytes it declares"),
        # declares more than the stream holds
        ("claims-more", CorruptInput, r"unpacks to 1048576 bytes, not the 2000000 bytes it declares"),
        ("not-deflate", CorruptInput, "cannot be decompressed"),
        ("bzip2", UnsupportedContent, "compression method Office files do not use"),
    ],
)
def test_zip_bombs_and_lying_members_are_refused_before_any_parser(
    registry: ProcessorRegistry, tmp_path: Path, case: str, error: type[Exception], match: str
) -> None:
    from tests.bombs import docx_with_member, zero_crc, zero_deflate

    sample = SAMPLES / "sample.docx"
    data = {
        "declares-2-GiB": lambda: docx_with_member(
            sample, DOCUMENT, zero_deflate(2048), 2048 << 20, zero_crc(2048)
        ),
        "honest-1000-to-1": lambda: docx_with_member(
            sample, DOCUMENT, zero_deflate(64), 64 << 20, zero_crc(64)
        ),
        "lies-about-its-size": lambda: docx_with_member(sample, DOCUMENT, zero_deflate(1024), 1000, 0),
        "claims-more": lambda: docx_with_member(
            sample, DOCUMENT, raw_deflate(os.urandom(1 << 20)), 2_000_000, 0
        ),
        # 0x07 opens a final block of the reserved type 3, which no inflater accepts; random bytes
        # alone sometimes inflate to a few bytes.
        "not-deflate": lambda: docx_with_member(sample, DOCUMENT, b"\x07" + os.urandom(2999), 3000, 0),
        "bzip2": lambda: docx_with_member(sample, DOCUMENT, b"BZh9", 10, 0, method=zipfile.ZIP_BZIP2),
    }[case]()
    started = time.monotonic()
    with pytest.raises(error, match=match):
        run(registry, write(tmp_path, "bomb.docx", data))
    assert time.monotonic() - started < 10


def test_an_encrypted_zip_member_is_refused(registry: ProcessorRegistry, tmp_path: Path) -> None:
    data = bytearray((SAMPLES / "sample.docx").read_bytes())
    with zipfile.ZipFile(SAMPLES / "sample.docx") as zf:
        offsets = [info.header_offset for info in zf.infolist()]
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 0x1  # the first member's "encrypted" flag, in the central directory
    data[offsets[0] + 6] |= 0x1  # and in its local header
    with pytest.raises(UnsupportedContent, match="password-protected"):
        run(registry, write(tmp_path, "locked.docx", bytes(data)))


def test_real_office_files_pass_the_zip_checks(tmp_path: Path) -> None:
    for sample in ("sample.docx", "sample.pptx"):
        path = SAMPLES / sample
        assert office.check_zip(path, "the file", "an Office file", "[Content_Types].xml").names


def encrypted_pdf(user_password: str) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO((SAMPLES / "sample.pdf").read_bytes()))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_encrypted_pdfs(registry: ProcessorRegistry, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedContent, match="the PDF file is password-protected"):
        run(registry, write(tmp_path, "locked.pdf", encrypted_pdf("secret")))
    opened = run(registry, write(tmp_path, "owner-only.pdf", encrypted_pdf("")))
    assert INTRO in opened.markdown and opened.metadata["encrypted"] is True


def test_pdf_without_text_layer(registry: ProcessorRegistry, tmp_path: Path) -> None:
    with pytest.raises(EmptyContent, match="no text layer on any of its 3 pages .*OCR"):
        run(registry, write(tmp_path, "scan.pdf", build_pdf([[], [], []])))
    partly = run(registry, write(tmp_path, "partly.pdf", build_pdf([["Some words here."], [], ["More."]])))
    assert partly.metadata["pages_without_text"] == [2]
    assert partly.metadata["notes"] == ["1 of 3 pages have no text layer (images or blank)"]


# --- Progress and cancellation ---------------------------------------------------------------------------


class Recorder:
    def __init__(self, cancel_at: float | None = None, error: Exception | None = None) -> None:
        self.calls: list[tuple[float, float | None, str]] = []
        self.cancel_at = cancel_at
        self.error = error or TaskCancelled("stop requested")

    def __call__(self, done: float, total: float | None, message: str) -> None:
        self.calls.append((done, total, message))
        if self.cancel_at is not None and done >= self.cancel_at:
            raise self.error


def test_multi_page_pdf_reports_progress_per_page(registry: ProcessorRegistry, tmp_path: Path) -> None:
    path = write(tmp_path, "big.pdf", multi_page_pdf(200))
    progress = Recorder()
    content = run(registry, path, progress=progress)
    assert [c[0] for c in progress.calls] == list(range(201))
    assert {c[1] for c in progress.calls} == {200}
    assert progress.calls[5][2] == "page 6 of 200"
    assert content.metadata["pages"] == 200
    assert "This is page 200 of 200 of the MoRAG Worker load test" in content.markdown


@pytest.mark.parametrize("error", [TaskCancelled("stop"), KeyError("a bug in the callback")])
def test_an_exception_from_progress_stops_the_pdf_and_propagates(
    registry: ProcessorRegistry, tmp_path: Path, error: Exception
) -> None:
    progress = Recorder(cancel_at=5, error=error)
    with pytest.raises(type(error)):
        run(registry, write(tmp_path, "big.pdf", multi_page_pdf(50)), progress=progress)
    assert len(progress.calls) == 6


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("sample.*")))
def test_cancellation_propagates_from_every_format(registry: ProcessorRegistry, sample: str) -> None:
    progress = Recorder(cancel_at=0)
    with pytest.raises(TaskCancelled):
        run(registry, SAMPLES / sample, progress=progress)
    assert len(progress.calls) == 1


def test_xlsx_checkpoints_inside_a_long_sheet(registry: ProcessorRegistry, tmp_path: Path) -> None:
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    for i in range(2500):
        sheet.append([i, f"row {i}"])
    path = tmp_path / "long.xlsx"
    workbook.save(path)
    progress = Recorder()
    assert "| 2499 | row 2499 |" in run(registry, path, progress=progress).markdown
    assert [c[2] for c in progress.calls if "rows" in c[2]] == [
        "sheet 1 of 1: 1000 rows",
        "sheet 1 of 1: 2000 rows",
    ]

    def cancel_on_rows(done: float, total: float | None, message: str) -> None:
        if "rows" in message:
            raise TaskCancelled(message)

    with pytest.raises(TaskCancelled, match="1000 rows"):
        run(registry, path, progress=cancel_on_rows)


# --- Media, with a fake transcriber ----------------------------------------------------------------------


class FakeTranscriber:
    model_name = "fake-tiny"

    def __init__(self, segments: list[media.Segment] | None = None, error: Exception | None = None) -> None:
        self.segments = segments or []
        self.error = error
        self.options: Mapping[str, Any] = {}

    def transcribe(self, path: Path, options: Mapping[str, Any]) -> tuple[Iterable[media.Segment], Any]:
        if self.error:
            raise self.error
        self.options = options
        return iter(self.segments), media.TranscriptInfo("en", 0.99, 65.0)


def media_registry(transcriber: FakeTranscriber) -> ProcessorRegistry:
    registry = ProcessorRegistry()
    media.register(registry, transcriber)
    return registry


def test_whisper_processor_transcribes_with_progress_in_seconds(tmp_path: Path) -> None:
    segments = [media.Segment(0.0, 2.0, " hello world"), media.Segment(61.5, 65.0, " second minute ")]
    fake = FakeTranscriber(segments)
    registry = media_registry(fake)
    progress = Recorder()
    clip = write(tmp_path, "talk.webm", b"\x1aE\xdf\xa3")
    content = run(registry, clip, options={"language": "en"}, progress=progress)
    assert content.markdown == "[00:00:00] hello world\n\n[00:01:01] second minute\n"
    assert content.metadata["format"] == "video" and content.metadata["model"] == "fake-tiny"
    assert content.metadata["language"] == "en" and content.metadata["segments"] == 2
    assert [c[:2] for c in progress.calls] == [(0, None), (2.0, 65.0), (65.0, 65.0), (65.0, 65.0)]
    assert fake.options == {"language": "en"}
    plain = run(registry, clip, content_type="audio", options={"timestamps": False})
    assert plain.markdown == "hello world\nsecond minute\n" and plain.metadata["format"] == "audio"
    with pytest.raises(TaskCancelled):
        run(registry, clip, progress=Recorder(cancel_at=1))


@pytest.mark.parametrize(
    ("error", "match"),
    [
        (IndexError("tuple index out of range"), "the video file has no audio track"),
        (
            ValueError("Invalid data found when processing input"),
            "the video file is damaged or not an audio or video file",
        ),
    ],
)
def test_whisper_processor_undecodable_media(tmp_path: Path, error: Exception, match: str) -> None:
    registry = media_registry(FakeTranscriber(error=error))
    with pytest.raises(CorruptInput, match=match):
        run(registry, write(tmp_path, "clip.mp4", b"\x00\x00\x00\x18ftypmp42"))
