"""Logging, configured once per process: structlog for our events, stdlib records through it too.

A console renderer on a terminal, JSON lines otherwise. A redaction step removes API keys and
other secrets from every event and message before anything is rendered, whichever library logged.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

__all__ = ["configure_logging", "redact", "register_secret"]

_secrets: set[str] = set()
_secrets_lock = threading.Lock()

# A token_urlsafe(32) key is 43 characters of [A-Za-z0-9_-]; catch whole runs of 32+ such characters
# that mix lower and upper case (task ids and hashes are lower-case hex and stay readable), and
# credentials in headers and URLs. Every log line of the worker goes through this, so a run is found
# by one plain character-class scan and checked in Python (one pattern with two lookaheads at every
# position cost several times as much).
_TOKEN_RUN_RE = re.compile(r"[A-Za-z0-9_-]{32,}")
_LOWER_RE = re.compile(r"[a-z]")
_UPPER_RE = re.compile(r"[A-Z]")
# Long CamelCase names (``SecretServiceNotAvailableException``) mix cases too, but a random key
# practically never has their shape: words of one capital and lower-case letters, nothing else.
_CAMEL_RE = re.compile(r"[a-z]*(?:[A-Z][a-z]+)+")
_BEARER_RE = re.compile(r"(?i)(bearer\s+|x-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+")
_URL_PASSWORD_RE = re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")
REDACTED = "[REDACTED]"


def register_secret(secret: str | None) -> None:
    """Make ``secret`` redacted wherever it appears in a log line of this process."""
    if secret and len(secret) >= 8:
        with _secrets_lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    """Remove known secrets and anything shaped like an API key or a URL password from ``text``."""
    with _secrets_lock:
        known = tuple(_secrets)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "://" in text:  # the URL pattern is the costly one, and cannot match without it
        text = _URL_PASSWORD_RE.sub(r"\1" + REDACTED + "@", text)
    text = _BEARER_RE.sub(r"\1" + REDACTED, text)
    return _TOKEN_RUN_RE.sub(_redact_token, text)


def _redact_token(match: re.Match[str]) -> str:
    run = match.group(0)
    keyish = _LOWER_RE.search(run) and _UPPER_RE.search(run) and not _CAMEL_RE.fullmatch(run)
    return REDACTED if keyish else run


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    return value


def _redaction_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact_value(value)
    return event_dict


def _redact_rendered(_logger: Any, _method: str, event_dict: Any) -> Any:
    # The last step sees the rendered line (tracebacks included).
    return redact(event_dict) if isinstance(event_dict, str) else event_dict


def configure_logging(
    renderer: Literal["console", "json"] | None = None,
    level: int | str = logging.INFO,
    stream: Any = None,
) -> None:
    """Route structlog and the standard library through one redacting pipeline on ``stream``."""
    stream = stream if stream is not None else sys.stderr
    if renderer is None:
        renderer = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redaction_processor,
    ]
    final: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if renderer == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        # Events under the level are dropped before any work is done on them.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, final, _redact_rendered],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "multipart", "python_multipart"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
