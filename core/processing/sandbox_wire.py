"""What a converter child may say to its parent: a closed set of small typed messages, framed on a pipe.

The child parses hostile input, so nothing it sends is unpickled or trusted: every frame is a one-byte
kind and a four-byte length, then either a JSON message (at most :data:`MAX_MESSAGE_BYTES`) checked
field by field into one of the dataclasses below, or the converted text itself (at most the output
limit, and only right after a :class:`Done` that announced its size). Anything else is a
:class:`WireError`. Plain functions; the parent reads frames on a reader thread, the child writes them
on its only thread.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import IO, Any

__all__ = [
    "MAX_MESSAGE_BYTES",
    "ChildMessage",
    "Content",
    "Crashed",
    "Done",
    "Failed",
    "FrameWriter",
    "Limit",
    "LimitReached",
    "Progress",
    "WireError",
    "encode_message",
    "parse_message",
    "read_frame",
]

MAX_MESSAGE_BYTES = 1024 * 1024  # a message (progress, metadata, an error) is small; text travels as Content
MAX_TEXT = 2000  # characters kept of any string field (messages, error texts)
_HEADER = struct.Struct(">cI")
_MESSAGE = b"M"
_CONTENT = b"C"


class WireError(Exception):
    """The child sent something that is not a frame or message this parent accepts."""


class Limit(StrEnum):
    """Which of the converter's limits a conversion reached."""

    MEMORY = "memory"
    TIME = "time"
    OUTPUT = "output"


@dataclass(frozen=True)
class Progress:
    """``progress(done, total, message)`` called in the child."""

    done: float
    total: float | None
    message: str


@dataclass(frozen=True)
class Done:
    """The conversion succeeded; a :class:`Content` frame of ``content_bytes`` UTF-8 bytes follows."""

    content_bytes: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    """The processor raised a ``ProcessingError`` subclass: ``error`` is the nearest built-in one's name."""

    error: str
    message: str


@dataclass(frozen=True)
class LimitReached:
    """The child noticed a limit itself (a ``MemoryError``, text over the output limit)."""

    limit: Limit
    size: int | None = None  # bytes of text, for the output limit


@dataclass(frozen=True)
class Crashed:
    """Any other exception: its type's name and message, nothing more."""

    error_type: str
    message: str


@dataclass(frozen=True)
class Content:
    """The converted markdown, UTF-8 encoded (read by the parent, never sent as JSON)."""

    data: bytes


ChildMessage = Progress | Done | Failed | LimitReached | Crashed
_TYPES: dict[type[Any], str] = {
    Progress: "progress",
    Done: "done",
    Failed: "failed",
    LimitReached: "limit",
    Crashed: "crashed",
}


def _text(value: object) -> str:
    return str(value)[:MAX_TEXT]


def encode_message(message: ChildMessage) -> bytes:
    """The JSON payload of ``message`` (metadata must be JSON-serialisable)."""
    fields: dict[str, Any] = {"type": _TYPES[type(message)]}
    if isinstance(message, Progress):
        fields.update(done=message.done, total=message.total, message=_text(message.message))
    elif isinstance(message, Done):
        fields.update(content_bytes=message.content_bytes, metadata=message.metadata)
    elif isinstance(message, Failed):
        fields.update(error=message.error, message=_text(message.message))
    elif isinstance(message, LimitReached):
        fields.update(limit=message.limit.value, size=message.size)
    else:
        fields.update(error_type=_text(message.error_type), message=_text(message.message))
    return json.dumps(fields, ensure_ascii=False, allow_nan=False, default=str).encode()


def _number(value: object, name: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WireError(f"{name} is not a finite number")
    return float(value)


def _string(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str):
        raise WireError(f"{name} is not a string")
    return value[:MAX_TEXT]


def parse_message(payload: bytes) -> ChildMessage:
    """The message in a JSON frame, checked field by field.

    Raises:
        WireError: Not JSON, not an object, an unknown type, or a field of the wrong type.
    """
    try:
        fields = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"a message is not JSON ({type(exc).__name__})") from None
    if not isinstance(fields, dict):
        raise WireError("a message is not a JSON object")
    kind = fields.get("type")
    if kind == "progress":
        done = _number(fields.get("done"), "done")
        assert done is not None
        return Progress(
            done, _number(fields.get("total"), "total", optional=True), _string(fields, "message")
        )
    if kind == "done":
        size, metadata = fields.get("content_bytes"), fields.get("metadata")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise WireError("content_bytes is not a size")
        if not isinstance(metadata, dict):
            raise WireError("metadata is not an object")
        return Done(size, metadata)
    if kind == "failed":
        return Failed(_string(fields, "error"), _string(fields, "message"))
    if kind == "limit":
        try:
            limit = Limit(str(fields.get("limit")))
        except ValueError:
            raise WireError("an unknown limit") from None
        size = fields.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise WireError("size is not a whole number")
        return LimitReached(limit, size)
    if kind == "crashed":
        return Crashed(_string(fields, "error_type"), _string(fields, "message"))
    raise WireError(f"an unknown message type {str(kind)[:40]!r}")


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = stream.read(min(left, 1024 * 1024))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: IO[bytes], max_content_bytes: int) -> ChildMessage | Content | None:
    """The next frame from ``stream``; None at a clean end of the stream.

    Raises:
        WireError: A frame of an unknown kind, over its size limit, or cut short.
    """
    header = _read_exactly(stream, _HEADER.size)
    if header is None:
        return None
    kind, size = _HEADER.unpack(header)
    if kind == _MESSAGE:
        if size > MAX_MESSAGE_BYTES:
            raise WireError(f"a message of {size} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")
    elif kind == _CONTENT:
        if size > max_content_bytes:
            raise WireError(f"text of {size} bytes is over the output limit")
    else:
        raise WireError("a frame of an unknown kind")
    payload = _read_exactly(stream, size)
    if payload is None:
        raise WireError("the stream ended inside a frame")
    return Content(payload) if kind == _CONTENT else parse_message(payload)


class FrameWriter:
    """Writes frames with ``write`` (``os.write`` on a descriptor, or a binary file's ``write``)."""

    def __init__(self, write: Callable[[memoryview], int | None]) -> None:
        self._write = write

    def _send(self, kind: bytes, payload: bytes) -> None:
        for part in (_HEADER.pack(kind, len(payload)), payload):  # no copy of a large payload
            data = memoryview(part)
            while data:
                written = self._write(data)
                if written is None:  # a buffered file writes everything
                    break
                data = data[written:]

    def message(self, message: ChildMessage) -> None:
        """Send ``message``; metadata too large for one message raises :class:`WireError`."""
        payload = encode_message(message)
        if len(payload) > MAX_MESSAGE_BYTES:
            raise WireError(f"a message of {len(payload)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")
        self._send(_MESSAGE, payload)

    def content(self, data: bytes) -> None:
        """Send the converted text (after a :class:`Done` announcing ``len(data)``)."""
        self._send(_CONTENT, data)
