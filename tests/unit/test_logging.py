"""Redaction: keys never reach a rendered log line, whoever logged them; ids stay readable; events
under the level are dropped before the pipeline runs."""

from __future__ import annotations

import io
import json
import logging
import random
import re
import secrets
import string
import uuid

import pytest
import structlog

from morag_worker.core.logging import REDACTED, configure_logging, redact, register_secret

pytestmark = pytest.mark.unit


def test_pattern_catches_every_generated_key_but_not_ids_or_hashes() -> None:
    keys = [secrets.token_urlsafe(32) for _ in range(5000)]
    assert all(key not in redact(f"key={key}") for key in keys)
    task_id = str(uuid.uuid4())
    digest = "ab12" * 16
    name = "SecretServiceNotAvailableException"
    assert redact(f"task {task_id} hash {digest} {name}") == f"task {task_id} hash {digest} {name}"


def test_headers_urls_and_registered_secrets_are_redacted() -> None:
    assert "s3cret" not in redact("Authorization: Bearer s3cret")
    assert "s3cret" not in redact('{"X-API-Key": "s3cret"}')
    assert redact("redis://worker-a:pa55word@host:6379/0") == "redis://worker-a:[REDACTED]@host:6379/0"
    register_secret("short-but-known")
    assert "short-but-known" not in redact("the key is short-but-known, really")


def test_stdlib_and_structlog_lines_and_tracebacks_are_redacted() -> None:
    key = secrets.token_urlsafe(32)
    stream = io.StringIO()
    configure_logging(renderer="json", stream=stream)
    try:
        structlog.get_logger("t").info("event", api_key=key, nested={"k": [key]})
        logging.getLogger("celery.worker").warning("connecting to redis://worker-x:%s@h/0", key)
        try:
            raise RuntimeError(f"login failed with {key}")
        except RuntimeError:
            logging.getLogger("t").exception("boom")
    finally:
        configure_logging(renderer="console", stream=io.StringIO())
    out = stream.getvalue()
    assert key not in out
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["event"] == "event" and "[REDACTED]" in lines[0]["api_key"]
    assert "RuntimeError" in out


_SINGLE_PATTERN = re.compile(
    r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*[a-z])(?=[A-Za-z0-9_-]*[A-Z])"
    r"[A-Za-z0-9_-]{32,}(?![A-Za-z0-9_-])"
)


def test_key_shaped_runs_are_found_exactly_as_by_one_pattern_with_lookaheads() -> None:
    rng = random.Random(7)
    alphabets = [
        string.ascii_lowercase + string.digits,
        string.ascii_letters + string.digits + "_-",
        "abcdef0123",
    ]
    other = " ./:@'\"{}[]=é\n"
    for _ in range(5000):
        chars = rng.choice(alphabets)
        text = "".join(
            rng.choice(other) if rng.random() < 0.04 else rng.choice(chars)
            for _ in range(rng.randint(0, 160))
        )
        # no "://", "bearer" or "x-api-key" in these, so only the key-shaped rule applies
        assert redact(text) == _SINGLE_PATTERN.sub(REDACTED, text), text


def test_events_under_the_level_never_reach_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    configure_logging(renderer="json", level=logging.INFO, stream=stream)
    try:
        calls: list[str] = []
        monkeypatch.setattr("morag_worker.core.logging.redact", lambda text: calls.append(text) or text)
        structlog.get_logger("t").debug("download.progress", done=1, note="x" * 40)
        assert calls == [] and stream.getvalue() == ""
        structlog.get_logger("t").info("download.done", note="y")
        assert calls and "download.done" in stream.getvalue()
    finally:
        configure_logging(renderer="console", stream=io.StringIO())
