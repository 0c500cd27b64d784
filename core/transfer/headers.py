"""Reading the response headers a download relies on, defensively: a header may be missing or lie.

``Retry-After``, ``Content-Range``, ``Content-Encoding``, ``Content-Length``, ``ETag`` /
``Last-Modified``, ``Content-Disposition`` and the hub's ``X-Checksum-SHA256``. Pure functions.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from urllib3.response import HTTPResponse

from morag_worker.core.transfer.workspace import safe_display_name

__all__ = [
    "SHA256_HEX",
    "ContentRange",
    "checksum_header",
    "content_codings",
    "content_length",
    "content_range",
    "filename_hint",
    "range_validator",
    "retry_after",
    "unsatisfied_range_total",
    "unsupported_codings",
]

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)


class ContentRange(NamedTuple):
    """``Content-Range: bytes start-end/total`` (total None for ``*``)."""

    start: int
    end: int
    total: int | None


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def content_range(value: str | None) -> ContentRange | None:
    """The ``Content-Range`` of a 206, or None when missing or malformed."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        return None
    return ContentRange(int(match[1]), int(match[2]), None if match[3] == "*" else int(match[3]))


def unsatisfied_range_total(value: str | None) -> int | None:
    """The total size in the ``Content-Range: bytes */N`` of a 416, or None."""
    match = _UNSATISFIED_RANGE.fullmatch((value or "").strip())
    return int(match[1]) if match else None


def content_codings(headers: Mapping[str, str]) -> list[str]:
    """The content codings applied to the body, ``identity`` left out."""
    codings = (c.strip().lower() for c in headers.get("Content-Encoding", "").split(","))
    return [c for c in codings if c and c != "identity"]


def unsupported_codings(codings: list[str]) -> bool:
    """True when urllib3 cannot decode one of ``codings`` (we would store encoded bytes)."""
    return any(c not in HTTPResponse.CONTENT_DECODERS for c in codings)


def content_length(headers: Mapping[str, str]) -> int | None:
    """``Content-Length`` as an int, or None when absent or not a plain number."""
    value = headers.get("Content-Length", "").strip()
    return int(value) if value.isdigit() else None


def range_validator(headers: Mapping[str, str]) -> str | None:
    """What to send as ``If-Range``: a strong ETag, else ``Last-Modified`` (weak ETags may not be used)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified") or None


def checksum_header(headers: Mapping[str, str]) -> str | None:
    """The hub's ``X-Checksum-SHA256`` as lower-case hex, or None when absent or malformed."""
    value = headers.get("X-Checksum-SHA256", "").strip().lower()
    return value if SHA256_HEX.fullmatch(value) else None


def filename_hint(headers: Mapping[str, str], url: str) -> str | None:
    """A display name from ``Content-Disposition`` or the URL's last path segment; never a path."""
    name: str | None = None
    disposition = headers.get("Content-Disposition")
    if disposition:
        message = Message()
        message["Content-Disposition"] = disposition
        try:
            name = message.get_filename()
        except (ValueError, LookupError, TypeError):
            name = None
    return safe_display_name(name) or safe_display_name(unquote(urlsplit(url).path.rsplit("/", 1)[-1]))
