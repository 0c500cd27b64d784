"""The redacting log pipeline: what it removes, what it keeps, and that it drops disabled levels early."""

from __future__ import annotations

import io
import json
import logging
import random
import re
import string
from collections.abc import Iterator

import pytest
import structlog

from morag_worker.core.logging import REDACTED, configure_logging, redact, register_secret

pytestmark = pytest.mark.unit

KEY = "Zq9x" * 10 + "A_b"  # shaped like secrets.token_urlsafe(32): 43 characters


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    stream = io.StringIO()
    configure_logging(renderer="json", level=logging.INFO, stream=stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"key {KEY} in a sentence", "key [REDACTED] in a sentence"),
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer [REDACTED]"),
        ("x-api-key: 'hunter2hunter2'", "x-api-key: '[REDACTED]'"),
        ("redis://worker-u1:s3cr3t-pass@h:6379/0", "redis://worker-u1:[REDACTED]@h:6379/0"),
        ("sha256 " + "ab12" * 16, "sha256 " + "ab12" * 16),  # a hex digest stays readable
        ("a_long_identifier_without_digits_at_all", "a_long_identifier_without_digits_at_all"),
        ("short-1234", "short-1234"),
    ],
)
def test_redaction(text: str, kept: str) -> None:
    assert redact(text) == kept


def test_registered_secrets_are_redacted_wherever_they_appear() -> None:
    secret = 'pa"ss\\word with spaces'
    register_secret(secret)
    assert secret not in redact(f"connecting with {secret}!") and REDACTED in redact(secret)


_ORIGINAL_TOKEN_RE = re.compile(
    r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[g-zG-Z_-])"
    r"[A-Za-z0-9_-]{32,}(?![A-Za-z0-9_-])"
)


def test_token_runs_are_found_exactly_as_by_the_original_single_pattern() -> None:
    rng = random.Random(7)
    token_chars = string.ascii_letters + string.digits + "_-"
    other = " ./:@'\"{}[]=é\n"
    for _ in range(5000):
        text = "".join(
            rng.choice(other if rng.random() < 0.05 else token_chars[: rng.choice([16, 22, 64])])
            for _ in range(rng.randint(0, 160))
        )
        # no "://", "bearer" or "x-api-key" in these, so only the token rule applies
        assert redact(text) == _ORIGINAL_TOKEN_RE.sub(REDACTED, text), text


def test_events_reach_the_stream_redacted_and_disabled_levels_cost_nothing(
    log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = structlog.get_logger("morag_worker.test")
    log.info("download.start", key=KEY, url="https://u:pw@hub.example/x")
    logging.getLogger("celery.test").info("Task received with Bearer %s", KEY)
    calls: list[str] = []
    monkeypatch.setattr("morag_worker.core.logging.redact", lambda text: calls.append(text) or text)
    log.debug("download.progress", done=1)
    assert calls == []  # filtered before the pipeline ran
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["download.start", f"Task received with Bearer {REDACTED}"]
    assert lines[0]["key"] == REDACTED and lines[0]["url"] == f"https://u:{REDACTED}@hub.example/x"
    assert KEY not in log_stream.getvalue()
