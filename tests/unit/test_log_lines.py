"""core.supervisor.log_lines: the worker child's output read as sentences, for every front end."""

from __future__ import annotations

import json

import pytest

from morag_worker.core.supervisor.log_lines import LogLevel, read_log_line

pytestmark = pytest.mark.unit


def _json(**fields: object) -> str:
    return json.dumps({"level": "info", "timestamp": "2026-12-06T08:58:18.104307Z", **fields})


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (_json(event="task.done", task_id="6ea70f53-5eab", success=True, seconds=0.1),
         "Task 6ea70f53 finished in less than a second."),
        (_json(event="task.done", task_id="6ea70f53-5eab", success=False, seconds=75),
         "Task 6ea70f53 ended without a result after 1 min 15 s: the file could not be converted."),
        (_json(event="download.done", host="hub.example", bytes=61_200_000, seconds=4.2),
         "Downloaded 58.4 MiB from hub.example in 4 s, 13.9 MiB/s."),
        (_json(event="download.retry", host="hub.example", reason="timeout", attempt=2, wait_s=1.5),
         "The download from hub.example was interrupted (timeout); trying again in 2 s."),
        (_json(event="worker.ready", hostname="h", user_id=None),
         "The worker is ready and waiting for tasks."),
        # An event nobody wrote words for still reads as words, with its facts.
        (_json(event="presence.write_failed", error="ConnectionError"),
         "Presence write failed (error ConnectionError)."),
        # Celery's own messages: the task name becomes what it is, the broker URL its host.
        (_json(event="Task morag.worker.process_url_task_remote[0ecbb42d-55c0-4811] received"),
         "Task 0ecbb42d received: a web page to convert."),
        (_json(event="Connected to redis://worker-alice:[REDACTED]@broker.example:6379/0"),
         "Connected to the broker at broker.example:6379."),
        (_json(event="consumer: Cannot connect to redis://:**@127.0.0.1:6379/0: Error 111.\n"
                     "Trying again in 2.00 seconds... (1/100)\n", level="error"),
         "Cannot reach the broker at 127.0.0.1:6379; trying again in 2 s."),
        ("worker: Warm shutdown (MainProcess)", "The worker is stopping after its current task."),
        ("ModuleNotFoundError: No module named 'fitz'",
         "The worker reported an error: No module named 'fitz'."),
    ],
)  # fmt: skip
def test_events_read_as_one_sentence(line: str, text: str) -> None:
    assert read_log_line(line, now=0).text == text


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "/venv/lib/python3.11/site-packages/celery/platforms.py:893: SecurityWarning: You're running",
        "absolutely not recommended!",
        " -------------- celery@host v5.7.0 (collider)",
        "- ** ---------- .> transport:   redis://127.0.0.1:6379/0",
        "  . morag.worker.process_file_task",
        "Traceback (most recent call last):",
        # Said already by our own events (worker.ready, task.done).
        _json(event="celery@host ready."),
        _json(event="Task morag.worker.process_file_task[6ea70f53-5eab] succeeded in 0.08s"),
    ],
)
def test_noise_has_no_sentence_but_keeps_its_raw_line(line: str) -> None:
    entry = read_log_line(line + "\n", now=0)
    assert entry.text is None and not entry.readable
    assert entry.raw == line


def test_levels_and_times_come_from_the_event() -> None:
    entry = read_log_line(_json(event="download.failed", level="warning", host="h", message="gone"), now=5)
    assert entry.level is LogLevel.WARNING
    assert entry.time == pytest.approx(1796547498.104307)
    plain = read_log_line("ValueError: bad", now=5.0)
    assert plain.level is LogLevel.ERROR and plain.time == 5.0
    assert LogLevel.named("critical") is LogLevel.ERROR and LogLevel.named("bogus") is LogLevel.INFO
