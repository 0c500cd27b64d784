"""kombu's Redis transport, hardened against queue entries that are not messages.

A queue in Redis is a list anyone with write access can push anything into. With kombu 5.7's own
transport, one entry that is not JSON, or JSON that is not a kombu envelope (a list, a string, an
object without ``properties``...), raises out of the consumer's event loop and Celery stops the
worker with "Unrecoverable error". Here such an entry is logged (``broker.message_dropped``, with
the reason, never the content) and dropped; it was already popped off the queue and never reached
the unacked set, so nothing is restored later. An envelope whose headers name a task id but which
cannot be read (a body that is not base64...) is handed to the handler set with
:func:`on_unreadable_message`, which stores a failure for that id so its submitter does not wait
forever. Entries that are envelopes go on to Celery, which refuses bad bodies (pickle, undecodable
JSON, unknown tasks) on its own.

A new channel whose login Redis refuses (a revoked key) is reported at once through
``broker_auth.report_refusal`` before Celery starts its endless reconnect loop.

A channel keeps one Redis client for the commands it sends outside the event loop (a publish, the
unacked entry of a delivery, its ack). kombu makes a new client for each, and making a redis-py
client costs 60 µs (it builds its table of reply callbacks and an event dispatcher), three times a
task between the submitter and the worker (issue 14). A client holds no connection of its own; each
command takes one from the channel's pool and gives it back, so one client serves every thread.
When kombu replaces the channel's pool (``_disconnect_pools``: after a fork, or once the channel is
closed), the next command gets a new client on the new pool; a reconnect makes a new channel.

Selected by ``broker_transport`` in :func:`~morag_worker.core.execution.celery_config.base_config`; URL
parsing, TLS and the key prefix are kombu's. Runs on the worker's consumer (event loop) thread.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import structlog
from kombu.transport import redis, virtual
from kombu.transport.virtual import Empty

from morag_worker.core.execution.health.broker_auth import report_refusal

__all__ = [
    "CheckedMessage",
    "MalformedEnvelope",
    "Transport",
    "envelope_problem",
    "on_unreadable_message",
    "task_id_of",
]

log = structlog.get_logger(__name__)

UnreadableHandler = Callable[[str, str], None]  # (task id, why the message cannot be read)
_unreadable_handler: UnreadableHandler | None = None
_MAX_TASK_ID = 255


def on_unreadable_message(handler: UnreadableHandler | None) -> None:
    """Call ``handler(task_id, reason)`` for each dropped envelope that names a task id."""
    global _unreadable_handler
    _unreadable_handler = handler


def task_id_of(payload: object) -> str | None:
    """The task id in a (possibly malformed) envelope's headers, when it has a usable one."""
    headers = payload.get("headers") if isinstance(payload, Mapping) else None
    task_id = headers.get("id") if isinstance(headers, Mapping) else None
    if isinstance(task_id, str) and 0 < len(task_id) <= _MAX_TASK_ID:
        return task_id
    return None


class MalformedEnvelope(ValueError):
    """A queue entry that is not a kombu message; the message says what is wrong with it."""


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def envelope_problem(payload: object) -> str | None:
    """What makes ``payload`` (a decoded queue entry) unusable as a kombu message, or None."""
    if not isinstance(payload, Mapping):
        return f"it is {_kind(payload)}, not a message envelope"
    properties = payload.get("properties")
    if not isinstance(properties, Mapping):
        return "it has no properties"
    if not isinstance(properties.get("delivery_tag"), str):
        return "it has no delivery tag"
    info = properties.get("delivery_info")
    if not isinstance(info, Mapping) or not all(
        isinstance(info.get(key), str) for key in ("exchange", "routing_key")
    ):
        return "it has no delivery info"
    fields: tuple[tuple[str, type], ...] = (
        ("body", str),
        ("headers", Mapping),
        ("content-type", str),
        ("content-encoding", str),
    )
    for name, allowed in fields:
        value = payload.get(name)
        if value is not None and not isinstance(value, allowed):
            return f"its {name} is {_kind(value)}"
    return None


class CheckedMessage(virtual.Message):
    """A kombu message built only from a well-formed envelope; MalformedEnvelope otherwise."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        problem = envelope_problem(payload)
        if problem is not None:
            raise MalformedEnvelope(problem)
        try:
            super().__init__(payload, channel=channel, **kwargs)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError, LookupError, AttributeError) as exc:  # the body's transfer encoding
            raise MalformedEnvelope(f"its body cannot be decoded ({type(exc).__name__})") from None


class Channel(redis.Channel):
    """A Redis channel that drops (and logs) entries that are not messages instead of failing."""

    Message = CheckedMessage

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._kept_client: Any = None  # a redis-py client on the pool it was made for
        try:
            super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        except Exception as exc:
            report_refusal("consumer", exc)  # only an authentication failure is reported
            raise

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        result = super().basic_consume(queue, *args, **kwargs)  # type: ignore[no-untyped-call]
        deliver: Callable[[Any], Any] = self.connection._callbacks[queue]

        def checked(raw_message: Any) -> Any:
            try:
                return deliver(raw_message)
            except MalformedEnvelope as exc:
                task_id = task_id_of(raw_message)
                log.error("broker.message_dropped", queue=queue, reason=str(exc), task_id=task_id)
                handler = _unreadable_handler
                if task_id is not None and handler is not None:
                    handler(task_id, str(exc))
                return None

        self.connection._callbacks[queue] = checked
        return result

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client if client else self._command_client()

    def _command_client(self) -> Any:
        """The channel's client for commands, made anew only when its pool was replaced."""
        kept = self._kept_client
        if kept is None or kept.connection_pool is not self.pool:
            kept = self._kept_client = self._create_client()  # type: ignore[no-untyped-call]
        return kept

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # the entry is not (UTF-8) JSON
            log.error("broker.message_dropped", reason=f"it is not a JSON message ({type(exc).__name__})")
            raise Empty() from None


class Transport(redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
