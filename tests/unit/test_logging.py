"""Redaction: keys never reach a rendered log line, whoever logged them; ids stay readable."""

from __future__ import annotations

import io
import json
import logging
import secrets
import uuid

import pytest
import structlog

from morag_worker.core.logging import configure_logging, redact, register_secret

pytestmark = pytest.mark.unit


def test_pattern_catches_every_generated_key_but_not_ids_or_hashes() -> None:
    keys = [secrets.token_urlsafe(32) for _ in range(5000)]
    assert all(key not in redact(f"key={key}") for key in keys)
    task_id = str(uuid.uuid4())
    digest = "ab12" * 16
    assert redact(f"task {task_id} hash {digest}") == f"task {task_id} hash {digest}"


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
