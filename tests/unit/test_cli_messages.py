"""The command line's own decisions, checked without starting a process."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from morag_worker.core.cli import CliError, ExitCode, build_parser
from morag_worker.core.cli.demo import _summary
from morag_worker.core.cli.display import has_display
from morag_worker.core.cli.redis_url import admin_redis_url
from morag_worker.core.cli.submit import _check_source, failure_of
from morag_worker.core.hub_client import TaskView
from morag_worker.core.wording import sentence

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no such file: /tmp/x", "No such file: /tmp/x."),
        (
            "no API key for http://h:1. run `morag-worker login`",
            "No API key for http://h:1. Run `morag-worker login`.",
        ),
        ("already a sentence.", "Already a sentence."),
        ("Is it? yes", "Is it? Yes."),
        ("see e.g. the README", "See e.g. the README."),
        ("--expires-days must be at least 1", "--expires-days must be at least 1."),
        ("gpu_index must be a GPU number", "gpu_index must be a GPU number."),
        ("the worker exited:\nlast line of its output", "The worker exited:\nlast line of its output"),
        ("  hub URL must not contain a query  ", "Hub URL must not contain a query."),
        ("", ""),
    ],
)
def test_sentence(text: str, expected: str) -> None:
    assert sentence(text) == expected


@pytest.mark.parametrize(
    ("environ", "platform", "expected"),
    [
        ({}, "linux", False),
        ({"DISPLAY": ":0"}, "linux", True),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
        ({"DISPLAY": ""}, "linux", False),
        ({"QT_QPA_PLATFORM": "offscreen"}, "linux", True),
        ({"QT_QPA_PLATFORM": "minimal"}, "freebsd14", True),
        ({"QT_QPA_PLATFORM": "xcb"}, "linux", False),
        ({"QT_QPA_PLATFORM": "xcb", "DISPLAY": ":1"}, "linux", True),
        ({"QT_QPA_PLATFORM": "wayland;xcb", "DISPLAY": ":1"}, "linux", True),
        ({"QT_QPA_PLATFORM": "wayland"}, "linux", False),
        ({}, "win32", True),
        ({}, "darwin", True),
    ],
)
def test_has_display(environ: dict[str, str], platform: str, expected: bool) -> None:
    assert has_display(environ, platform) is expected


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_admin_redis_url_is_never_guessed() -> None:
    with pytest.raises(CliError, match="REDIS_URL") as caught:
        admin_redis_url(_args("keys", "list", "--user", "u"), {})
    assert caught.value.code is ExitCode.CONFIG and "--redis-url" in str(caught.value)
    with pytest.raises(CliError, match="REDIS_URL"):
        admin_redis_url(_args("hub"), {"REDIS_URL": "  "})
    assert admin_redis_url(_args("hub"), {"REDIS_URL": "redis://:pw@h:1/0"}) == "redis://:pw@h:1/0"


@pytest.mark.parametrize(
    "argv",
    [
        ("keys", "--redis-url", "redis://h:2/0", "list", "--user", "u"),
        ("keys", "list", "--user", "u", "--redis-url", "redis://h:2/0"),
        ("hub", "--redis-url", "redis://h:2/0"),
    ],
)
def test_redis_url_option_wins_over_the_environment(argv: tuple[str, ...]) -> None:
    assert admin_redis_url(_args(*argv), {"REDIS_URL": "redis://h:1/0"}) == "redis://h:2/0"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:secret@h:1/0", "must not contain a password"),
        ("redis://admin:secret@h:1/0", "must not contain a password"),
        ("redis://h:1/0?password=secret", "must not contain a password"),
        ("http://h:1/0", "redis://, rediss:// or unix://"),
    ],
)
def test_bad_redis_url_options(url: str, message: str) -> None:
    with pytest.raises(CliError, match=message) as caught:
        admin_redis_url(_args("hub", "--redis-url", url), {})
    assert caught.value.code is ExitCode.USAGE
    assert "secret" not in str(caught.value)


def test_submit_names_each_mistake(tmp_path: Path) -> None:
    file = tmp_path / "a.txt"
    file.write_text("hi")
    assert _check_source(str(file)) == file
    assert _check_source("https://example.org/a.pdf") == "https://example.org/a.pdf"
    assert _check_source("HTTP://example.org/a.pdf") == "HTTP://example.org/a.pdf"
    mistakes = {
        str(tmp_path): "directory",
        str(tmp_path / "missing.pdf"): "no such file",
        "ftp://example.org/a.pdf": "only http:// and https:// URLs",
        "file:///etc/hosts": "only http:// and https:// URLs",
    }
    for source, message in mistakes.items():
        with pytest.raises(CliError, match=message) as caught:
            _check_source(source)
        assert caught.value.code is ExitCode.USAGE


def _view(state: str, result: dict[str, object] | None = None, error: str | None = None) -> TaskView:
    return TaskView(task_id="t", state=state, progress=None, result=result, error=error)


def test_a_result_with_success_false_is_a_failure() -> None:
    assert failure_of(_view("SUCCESS", {"success": True, "content": "x"})) is None
    assert failure_of(_view("SUCCESS", {"success": False, "error_message": "broken"})) == (
        "processing failed",
        "broken",
    )
    assert failure_of(_view("SUCCESS", None)) is not None
    assert failure_of(_view("FAILURE", None, "boom")) == ("the task failed", "boom")


def test_demo_summary() -> None:
    assert _summary(4, {}, 0) == "4 of 4 converted"
    assert _summary(4, {"sample.xlsx": "the XLSX file is damaged (InvalidFileException: …)"}, 0) == (
        "3 of 4 converted; failed: sample.xlsx (the XLSX file is damaged)"
    )
    assert _summary(2, {}, 1) == "2 of 2 converted; the worker exited with status 1"
    assert _summary(1, {}, None) == "1 of 1 converted; the worker did not stop in time and was killed"
