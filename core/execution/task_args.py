"""Validation of what a task message carries, before any work is done (DESIGN §2, issue 5).

Task arguments arrive from the broker as JSON; anything may be in them. They are checked for type
and size here and turned into a typed ``TaskRequest``; unknown ``task_options`` are dropped with a
warning rather than passed into processors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from morag_worker.core.naming import InvalidUserId, validate_user_id

__all__ = [
    "KNOWN_OPTIONS",
    "MalformedTask",
    "TaskRequest",
    "bind_arguments",
    "parse_task_request",
    "read_task",
]

MAX_URL_LENGTH = 8192
MAX_CONTENT_TYPE_LENGTH = 255
MAX_OPTION_STRING = 1024
# Unknown option names are reported (log line, result metadata) but a message may carry any number
# of them: only the first few, each shortened, are kept; ``ignored_count`` says how many there were.
MAX_IGNORED_LISTED = 20
MAX_IGNORED_NAME = 64
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")

KNOWN_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "sha256": str,
    "size": int,
    "filename": str,
    "language": str,
    "title": str,
    "max_bytes": int,
}


class MalformedTask(ValueError):
    """The task's arguments are of the wrong type, too large or inconsistent."""


@dataclass(frozen=True)
class TaskRequest:
    """The validated arguments of one task."""

    source: str
    user_id: str | None
    content_type: str | None
    options: dict[str, Any] = field(default_factory=dict)
    ignored_options: tuple[str, ...] = ()  # the first MAX_IGNORED_LISTED names, shortened
    ignored_count: int = 0  # how many unknown options the message had in all

    @property
    def sha256(self) -> str | None:
        value = self.options.get("sha256")
        return value.lower() if isinstance(value, str) else None

    @property
    def size(self) -> int | None:
        value = self.options.get("size")
        return value if isinstance(value, int) else None

    @property
    def filename(self) -> str | None:
        value = self.options.get("filename")
        return value if isinstance(value, str) else None


def parse_task_request(
    source: object,
    user_id: object = None,
    content_type: object = None,
    task_options: object = None,
    *,
    source_name: str = "file_url",
    require_user: bool = False,
) -> TaskRequest:
    """Check one task's arguments; raise MalformedTask with a message naming the bad argument."""
    if not isinstance(source, str) or not source.strip():
        raise MalformedTask(f"{source_name} must be a non-empty string, got {type(source).__name__}")
    if len(source) > MAX_URL_LENGTH:
        raise MalformedTask(f"{source_name} is longer than {MAX_URL_LENGTH} characters")
    uid: str | None = None
    if user_id is not None or require_user:
        try:
            uid = validate_user_id(user_id)
        except InvalidUserId as exc:
            raise MalformedTask(str(exc)) from None
    if content_type is not None and (
        not isinstance(content_type, str) or len(content_type) > MAX_CONTENT_TYPE_LENGTH
    ):
        raise MalformedTask("content_type must be a short string or null")
    options, ignored, ignored_count = _parse_options(task_options)
    return TaskRequest(
        source=source.strip(),
        user_id=uid,
        content_type=content_type or None,
        options=options,
        ignored_options=ignored,
        ignored_count=ignored_count,
    )


def _parse_options(task_options: object) -> tuple[dict[str, Any], tuple[str, ...], int]:
    if task_options is None:
        return {}, (), 0
    if not isinstance(task_options, Mapping):
        raise MalformedTask(f"task_options must be an object, got {type(task_options).__name__}")
    options: dict[str, Any] = {}
    ignored: list[str] = []
    ignored_count = 0
    for key, value in task_options.items():
        expected = KNOWN_OPTIONS.get(str(key))
        if expected is None:
            ignored_count += 1
            if len(ignored) < MAX_IGNORED_LISTED:
                ignored.append(str(key)[:MAX_IGNORED_NAME])
            continue
        if value is None:
            continue
        if not isinstance(value, expected) or isinstance(value, bool):
            raise MalformedTask(f"task option {key!r} has the wrong type ({type(value).__name__})")
        if isinstance(value, str) and len(value) > MAX_OPTION_STRING:
            raise MalformedTask(f"task option {key!r} is too long")
        if isinstance(value, int) and value < 0:
            raise MalformedTask(f"task option {key!r} must not be negative")
        options[str(key)] = value
    sha = options.get("sha256")
    if sha is not None and not _SHA256_RE.fullmatch(sha):
        raise MalformedTask("task option 'sha256' must be 64 hexadecimal characters")
    return options, tuple(ignored), ignored_count


def read_task(
    params: tuple[str, ...],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    remote: bool,
    own_user_id: str | None,
) -> TaskRequest:
    """The one check of a task message's arguments, from Celery's ``args``/``kwargs`` to a request.

    ``params`` are the task's parameter names, the source first (``file_url``, ``url`` or
    ``file_path``); a remote task's second is ``user_id``, which must be ``own_user_id`` when
    this worker serves one user. Raises MalformedTask with a message naming the bad argument.
    """
    bound = bind_arguments(params, args, kwargs)
    source_name = params[0]
    if remote:
        if len(bound) < 2:
            raise MalformedTask(f"missing arguments: expected ({source_name}, user_id, ...)")
        request = parse_task_request(*bound, source_name=source_name, require_user=True)
        if own_user_id is not None and request.user_id != own_user_id:
            raise MalformedTask(f"this worker serves user {own_user_id!r}, not {request.user_id!r}")
        return request
    if not bound:
        raise MalformedTask(f"missing argument: {source_name}")
    source, *rest = bound
    content_type = rest[0] if rest else None
    options = rest[1] if len(rest) > 1 else None
    return parse_task_request(source, None, content_type, options, source_name=source_name)


def bind_arguments(
    params: tuple[str, ...], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[Any, ...]:
    """Map a message's positional and keyword arguments onto ``params`` (all optional after 1st).

    Returns the positional tuple trimmed of trailing unset values; raises MalformedTask for extra
    positional arguments, unknown keyword arguments or one given twice.
    """
    if len(args) > len(params):
        raise MalformedTask(f"too many arguments: expected at most {len(params)} ({', '.join(params)})")
    values: list[Any] = list(args) + [_UNSET] * (len(params) - len(args))
    for key, value in kwargs.items():
        if key not in params:
            raise MalformedTask(f"unexpected argument {str(key)[:64]!r}")
        index = params.index(key)
        if values[index] is not _UNSET:
            raise MalformedTask(f"argument {key!r} given twice")
        values[index] = value
    while values and values[-1] is _UNSET:
        values.pop()
    return tuple(None if v is _UNSET else v for v in values)


_UNSET: Any = object()
