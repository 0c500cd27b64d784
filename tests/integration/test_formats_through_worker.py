"""Every supported document format through hub → worker → result, on files a real office suite made.

One worker serves the whole module. DOCX, XLSX and PPTX are made twice: by python-docx/openpyxl/python-pptx
(the committed samples) and by LibreOffice, converting headless in this test from sources written here
(HTML → DOCX through Writer, CSV → XLSX through Calc, a flat ODP → PPTX through Impress). The LibreOffice
cases skip only where ``soffice`` is missing. The worker saves every download as ``input.bin``; the cases
below also send misleading names, no name and no content type, and damaged files.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from morag_worker.core.hub_client import HubClient, TaskView
from tests.conftest import SAMPLES, Stack
from tests.processes import wait_for

pytestmark = pytest.mark.integration

USER = "formats"
SOFFICE_TIMEOUT_S = 300  # the first start of a fresh profile on a busy machine is slow
INTRO = "MoRAG Worker runs on a contributor's machine"
TITLE = "MoRAG Worker: contributing a GPU to a MoRAG server"
SAMPLE_ROW = "| PDF | pypdf | pages |"
OOXML = "application/vnd.openxmlformats-officedocument."
XLSX_TYPE = OOXML + "spreadsheetml.sheet"


@dataclass(frozen=True)
class Case:
    """One file to send: where it comes from, what must come back."""

    source: str  # a sample's name, or "libreoffice:<name>"
    fmt: str
    phrases: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case(
        "sample.docx", "docx", ("# " + TITLE, INTRO, "* The worker downloads", SAMPLE_ROW), {"title": TITLE}
    ),
    Case(
        "sample.xlsx", "xlsx", ("## Formats", SAMPLE_ROW, "| alice | gpu-tasks-alice | gpu |"), {"sheets": 2}
    ),
    Case("sample.pptx", "pptx", ("# How a task flows", INTRO, SAMPLE_ROW), {"slides": 3, "title": TITLE}),
    Case("sample.html", "html", ("## How a task flows", INTRO, SAMPLE_ROW), {"title": TITLE}),
    Case("sample.pdf", "pdf", (INTRO, "gpu-tasks-{user_id}"), {"pages": 2, "title": TITLE}),
    Case("sample.csv", "csv", ("| Format | Processor | Progress unit |", SAMPLE_ROW), {"rows": 4}),
    Case("sample.json", "json", (f'"title": "{TITLE}"', INTRO), {"json_type": "dict"}),
    Case("sample.txt", "text", (TITLE, INTRO), {"encoding": "utf-8"}),
    Case("sample.md", "markdown", ("## Privacy", INTRO, SAMPLE_ROW), {"title": TITLE}),
    Case("sample.epub", "epub", ("## Privacy", INTRO, SAMPLE_ROW), {"title": TITLE}),
    Case(
        "libreoffice:report.docx",
        "docx",
        (
            "# Quarterly field report",
            "seventeen cormorants",
            "## Findings",
            "* Kelp forests",
            "| Station | Readings |\n| --- | --- |\n| Northpoint | 42 |",
        ),
        {"title": "Quarterly field report"},
    ),
    Case(
        "libreoffice:stations.xlsx",
        "xlsx",
        ("| Station | Readings | Keeper |", "| Northpoint | 42 | Ingrid |", "| Southcove | 17 | Tomasz |"),
        {"sheets": 1},
    ),
    Case(
        "libreoffice:survey.pptx",
        "pptx",
        ("Harbour survey results", "Seventeen cormorants nested", "Next steps for the keepers"),
        {"slides": 2},
    ),
]

REPORT_HTML = """\
<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Quarterly field report</title></head><body>
<h1>Quarterly field report</h1>
<p>The lighthouse keepers counted seventeen cormorants.</p>
<h2>Findings</h2>
<ul><li>Tides rose earlier than forecast</li><li>Kelp forests recovered</li></ul>
<table><tr><th>Station</th><th>Readings</th></tr><tr><td>Northpoint</td><td>42</td></tr></table>
</body></html>
"""
STATIONS_CSV = "Station,Readings,Keeper\nNorthpoint,42,Ingrid\nSouthcove,17,Tomasz\n"
_NS = {
    "office": "urn:oasis:names:tc:opendocument:xmlns:office:1.0",
    "draw": "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0",
    "text": "urn:oasis:names:tc:opendocument:xmlns:text:1.0",
    "presentation": "urn:oasis:names:tc:opendocument:xmlns:presentation:1.0",
    "svg": "urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0",
}


def _slide(name: str, *lines: str) -> str:
    frames = "".join(
        f'<draw:frame svg:x="2cm" svg:y="{2 + 5 * i}cm" svg:width="20cm" svg:height="4cm">'
        f"<draw:text-box><text:p>{line}</text:p></draw:text-box></draw:frame>"
        for i, line in enumerate(lines)
    )
    return f'<draw:page draw:name="{name}">{frames}</draw:page>'


def survey_fodp() -> str:
    """A flat OpenDocument presentation (one XML file) of two slides: Impress imports it, saves it as PPTX."""
    namespaces = " ".join(f'xmlns:{prefix}="{uri}"' for prefix, uri in _NS.items())
    slides = _slide("p1", "Harbour survey results", "Seventeen cormorants nested near the breakwater.")
    slides += _slide("p2", "Next steps for the keepers")
    return textwrap.dedent(f"""\
        <?xml version="1.0" encoding="UTF-8"?>
        <office:document {namespaces} office:version="1.3"
          office:mimetype="application/vnd.oasis.opendocument.presentation">
        <office:body><office:presentation>{slides}</office:presentation></office:body></office:document>
    """)


def soffice_convert(soffice: str, profile: Path, source: Path, target: str, out: Path, *extra: str) -> Path:
    """``soffice --headless --convert-to`` with a private profile, so that parallel runs never share one."""
    argv = [soffice, f"-env:UserInstallation={profile.as_uri()}", "--headless", *extra]
    argv += ["--convert-to", target, "--outdir", str(out), str(source)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=SOFFICE_TIMEOUT_S, check=False)
    made = out / f"{source.stem}.{target}"
    assert done.returncode == 0 and made.is_file(), f"soffice failed: {done.stdout}{done.stderr}"
    return made


@pytest.fixture(scope="module")
def libreoffice(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The DOCX, XLSX and PPTX that LibreOffice makes from sources written here; skips without ``soffice``."""
    soffice = shutil.which("soffice")
    if soffice is None:
        pytest.skip("LibreOffice (soffice) is not installed; ./scripts/setup.sh installs it")
    tmp = tmp_path_factory.mktemp("libreoffice")
    profile, src, out = tmp / "profile", tmp / "src", tmp / "out"
    src.mkdir()
    (src / "report.html").write_text(REPORT_HTML, encoding="utf-8")
    (src / "stations.csv").write_text(STATIONS_CSV, encoding="utf-8")
    (src / "survey.fodp").write_text(survey_fodp(), encoding="utf-8")
    # An .html file opens in Writer/Web, which cannot save DOCX: import it into Writer instead.
    return {
        "report.docx": soffice_convert(
            soffice, profile, src / "report.html", "docx", out, "--infilter=HTML (StarWriter)"
        ),
        "stations.xlsx": soffice_convert(soffice, profile, src / "stations.csv", "xlsx", out),
        "survey.pptx": soffice_convert(soffice, profile, src / "survey.fodp", "pptx", out),
        "report.odt": soffice_convert(
            soffice, profile, src / "report.html", "odt", out, "--infilter=HTML (StarWriter)"
        ),
    }


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    api_key = stack.key(USER)
    stack.start_worker(USER, api_key)
    return api_key


def source_path(case: Case, request: pytest.FixtureRequest) -> Path:
    if case.source.startswith("libreoffice:"):
        made: dict[str, Path] = request.getfixturevalue("libreoffice")
        return made[case.source.split(":", 1)[1]]
    return SAMPLES / case.source


def wait_done(client: HubClient, task_id: str, what: str, timeout: float = 120) -> dict[str, Any]:
    view: TaskView = wait_for(
        lambda: (v := client.task(task_id)).done and v, timeout, f"the task for {what} to finish"
    )
    assert view.state == "SUCCESS", view.error
    assert view.result is not None
    return view.result


def submit(
    stack: Stack, key: str, path: Path, *, name: str | None, content_type: str | None = None
) -> dict[str, Any]:
    """Upload ``path`` under ``name`` (None: no name at all) and run it; the task's result."""
    client = stack.client(key)
    if name == path.name:
        uploaded = client.upload(path)
    else:
        params = {"filename": name} if name else {}
        response = requests.post(
            f"{stack.hub_url}/api/v1/files",
            params=params,
            data=path.read_bytes(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"},
            timeout=30,
        )
        response.raise_for_status()
        uploaded = response.json()
    created = client.create_task(file_id=uploaded["file_id"], content_type=content_type)
    return wait_done(client, created["task_id"], f"{path.name} sent as {name!r}")


@pytest.mark.parametrize("case", CASES, ids=[c.source.replace("libreoffice:", "libreoffice-") for c in CASES])
def test_each_format_comes_back_as_markdown(
    stack: Stack, key: str, case: Case, request: pytest.FixtureRequest
) -> None:
    path = source_path(case, request)
    result = submit(stack, key, path, name=path.name)
    assert result["success"] is True, result["error_message"]
    assert result["error_message"] is None and result["user_id"] == USER
    for phrase in case.phrases:
        assert phrase in result["content"], (phrase, result["content"])
    meta = result["metadata"]
    assert meta["format"] == case.fmt and meta["processor"] == case.fmt
    assert meta["filename"] == path.name
    assert meta["source_size"] == path.stat().st_size and len(meta["source_sha256"]) == 64
    assert meta["word_count"] >= 8
    assert case.metadata.items() <= meta.items(), meta
    assert "notes" not in meta, meta["notes"]


@pytest.mark.parametrize(
    ("sample", "name", "content_type", "fmt"),
    [
        ("sample.xlsx", "input.bin", XLSX_TYPE, "xlsx"),  # the name says nothing, the type is right
        ("sample.xlsx", "report.docx", None, "xlsx"),  # the name is wrong: the content decides
        ("sample.docx", "notes.txt", "text/plain", "docx"),  # name and type both wrong
        ("sample.pptx", None, None, "pptx"),  # no name, no type: the content alone
        ("sample.xlsx", None, None, "xlsx"),
        ("sample.epub", None, None, "epub"),
        ("sample.pdf", None, None, "pdf"),
        ("sample.json", None, None, "json"),
        ("sample.html", None, "web", "html"),
    ],
)
def test_the_content_decides_not_the_name_or_type(
    stack: Stack, key: str, sample: str, name: str | None, content_type: str | None, fmt: str
) -> None:
    result = submit(stack, key, SAMPLES / sample, name=name, content_type=content_type)
    assert result["success"] is True, result["error_message"]
    assert result["metadata"]["format"] == fmt
    assert "pypdf" in result["content"]  # a cell of the table every sample holds


def test_libreoffice_files_under_a_misleading_name(
    stack: Stack, key: str, libreoffice: dict[str, Path]
) -> None:
    for made, fmt in (("stations.xlsx", "xlsx"), ("report.docx", "docx"), ("survey.pptx", "pptx")):
        result = submit(stack, key, libreoffice[made], name="input.bin")
        assert result["success"] is True, result["error_message"]
        assert result["metadata"]["format"] == fmt


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("stations.xlsx", "the XLSX file is damaged or not an XLSX file (not a valid zip archive"),
        (None, "the file is a damaged zip archive (a download cut short looks like this)"),
    ],
)
def test_a_damaged_office_file_fails_clearly(
    stack: Stack, key: str, tmp_path: Path, name: str | None, match: str
) -> None:
    cut = tmp_path / "cut.xlsx"
    cut.write_bytes((SAMPLES / "sample.xlsx").read_bytes()[:3000])
    result = submit(stack, key, cut, name=name)
    assert result["success"] is False and result["content"] is None
    assert result["error_message"].startswith(match), result["error_message"]
    assert "Traceback" not in result["error_message"]


def test_an_opendocument_file_is_refused_with_advice(
    stack: Stack, key: str, libreoffice: dict[str, Path]
) -> None:
    result = submit(stack, key, libreoffice["report.odt"], name="input.bin")
    assert result["success"] is False and result["content"] is None
    assert result["error_message"].startswith(
        "this file is not supported: it is an OpenDocument text (ODT); saved as DOCX it would convert"
    ), result["error_message"]
