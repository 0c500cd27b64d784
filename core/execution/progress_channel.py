"""The local progress channel from the worker child to its supervisor (DESIGN §5): format and ends.

Format, version 1: one JSON object per line (UTF-8, ``\\n``-terminated), at most
``MAX_LINE_BYTES`` long. Every message carries ``v`` (1), ``type``, ``pid`` and ``ts`` (epoch
seconds of the writer). The types and their other fields:

- ``ready``: ``hostname``, ``queues``, ``config`` (the reliability settings the worker runs with).
- ``heartbeat``: ``consumer`` (``starting``, ``connecting`` or ``connected``), ``since_poll_s``
  (seconds since the consumer last asked the broker for a message, or null), ``reserved``
  (messages held), ``active`` (ids of the tasks running), ``paused`` (true while the consumer
  takes no task because the hub is unreachable or the intake rules hold; absent means false).
- ``hub``: ``reachable`` (false while the hub does not answer), ``retry_in_s`` (seconds until the
  worker asks it again, or null when reachable). Sent on each probe of an outage and at its end.
- ``intake``: ``held`` (true while the contributor's rules hold new tasks back), ``reason`` (a
  sentence: "GPU at 86 °C, waiting for 78 °C"; null when not held). Sent when the verdict changes.
- ``task_start``: ``task_id``, ``name``, ``filename``.
- ``progress``: ``task_id``, ``stage``, ``done``, ``total``, ``percent``, ``message``.
- ``task_end``: ``task_id``, ``outcome`` (``succeeded``, ``failed`` or ``requeued``), ``error``,
  ``metadata`` (a summary: a few scalar values), ``processing_time``.
- ``broker_refused``: ``source`` (``consumer``, ``presence``...), ``error``: Redis refused the
  worker's login (``core/execution/broker_auth.py``), as it does once the key is revoked.

Transport. POSIX: a pipe the supervisor creates; the child inherits its write end and finds the
descriptor number in ``MORAG_PROGRESS_FD``. The Celery main process and its prefork pool processes
(forked, so they inherit it) all write to it, each line with a single ``os.write``; lines are kept
under ``PIPE_BUF`` (4096 on Linux, 512 at least by POSIX, hence the small limit below when the
platform says less), so lines of different processes never interleave. Windows: descriptors are
not inherited by number, so ``MORAG_PROGRESS_FD=stdout`` asks the wrapper (``winworker``, one
process) to keep the real stdout as the channel and to point descriptor 1 at stderr before
anything else runs; stray prints then land in the log, never in the channel. Child logs go to
stderr on every platform.

Readers get typed messages from ``parse_line``; a malformed line is ignored (debug log), never
raised. The writer never raises either: when the supervisor is gone it goes quiet.
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from morag_worker.core.results import ProgressMeta

__all__ = [
    "CHANNEL_ENV",
    "MAX_LINE_BYTES",
    "ChannelMessage",
    "BrokerRefusedMessage",
    "ChannelWriter",
    "HeartbeatMessage",
    "HubMessage",
    "IntakeMessage",
    "ProgressMessage",
    "ReadyMessage",
    "TaskEndMessage",
    "TaskStartMessage",
    "encode_message",
    "parse_line",
    "summarize_metadata",
]

log = structlog.get_logger(__name__)

CHANNEL_ENV = "MORAG_PROGRESS_FD"
HEARTBEAT_ENV = "MORAG_HEARTBEAT_S"
VERSION = 1
# POSIX: a line must stay under PIPE_BUF to be written atomically by several processes. Windows:
# one process writes (the threads pool), and a lock keeps its threads' lines whole.
_PIPE_BUF = getattr(select, "PIPE_BUF", 4096)
MAX_LINE_BYTES = min(4000, _PIPE_BUF - 1)
_TEXT_LIMITS = (600, 200, 60)
OUTCOMES = ("succeeded", "failed", "requeued")


@dataclass(frozen=True)
class ReadyMessage:
    pid: int
    ts: float
    hostname: str
    queues: tuple[str, ...]
    config: dict[str, object]


@dataclass(frozen=True)
class HeartbeatMessage:
    pid: int
    ts: float
    consumer: str  # starting, connecting, connected
    since_poll_s: float | None
    reserved: int
    active: tuple[str, ...]
    paused: bool = False  # no task is taken while the hub is unreachable

    def stalled(self, after_s: float) -> bool:
        """True when a connected, idle consumer has not polled the broker for ``after_s`` seconds.

        With prefetch 1 a busy consumer stops polling on purpose (it holds a message), a
        consumer without a connection is reconnecting, which Celery retries by itself, and a
        paused one waits for the hub on purpose.
        """
        return (
            self.consumer == "connected"
            and not self.paused
            and self.reserved == 0
            and self.since_poll_s is not None
            and self.since_poll_s > after_s
        )


@dataclass(frozen=True)
class HubMessage:
    pid: int
    ts: float
    reachable: bool
    retry_in_s: float | None  # seconds until the next try, while unreachable


@dataclass(frozen=True)
class IntakeMessage:
    pid: int
    ts: float
    held: bool
    reason: str | None  # why no new task is taken, while held


@dataclass(frozen=True)
class TaskStartMessage:
    pid: int
    ts: float
    task_id: str
    name: str
    filename: str | None


@dataclass(frozen=True)
class ProgressMessage:
    pid: int
    ts: float
    task_id: str
    stage: str
    done: float
    total: float | None
    percent: float | None
    message: str


@dataclass(frozen=True)
class TaskEndMessage:
    pid: int
    ts: float
    task_id: str
    outcome: str  # succeeded, failed, requeued
    error: str | None
    metadata: dict[str, object]
    processing_time: float | None


@dataclass(frozen=True)
class BrokerRefusedMessage:
    pid: int
    ts: float
    source: str  # who met the refusal: consumer, presence
    error: str


ChannelMessage = (
    ReadyMessage
    | HeartbeatMessage
    | HubMessage
    | IntakeMessage
    | TaskStartMessage
    | ProgressMessage
    | TaskEndMessage
    | BrokerRefusedMessage
)


def summarize_metadata(metadata: Mapping[str, Any] | None, max_keys: int = 16) -> dict[str, object]:
    """A few scalar values of a result's metadata, strings cut short, safe to put on the channel."""
    summary: dict[str, object] = {}
    for key, value in (metadata or {}).items():
        if len(summary) >= max_keys:
            break
        if isinstance(value, bool | int | float) or value is None:
            summary[str(key)[:64]] = value
        elif isinstance(value, str):
            summary[str(key)[:64]] = value[:120]
    return summary


def _shrink(fields: dict[str, Any], limit: int) -> dict[str, Any]:
    out = dict(fields)
    for key in ("message", "error", "filename", "name", "reason"):
        if isinstance(out.get(key), str):
            out[key] = out[key][:limit]
    return out


def encode_message(
    kind: str, fields: Mapping[str, Any], *, pid: int | None = None, ts: float | None = None
) -> bytes:
    """One channel line (with its newline), shrunk until it fits ``MAX_LINE_BYTES``."""
    head = {"v": VERSION, "type": kind, "pid": os.getpid() if pid is None else pid}
    head["ts"] = round(time.time() if ts is None else ts, 3)
    body = dict(fields)
    attempts = [body] + [_shrink(body, n) for n in _TEXT_LIMITS]
    attempts.append({**_shrink(body, _TEXT_LIMITS[-1]), "metadata": {}, "config": {}, "active": []})
    for candidate in attempts:
        line = json.dumps({**head, **candidate}, separators=(",", ":"), default=str).encode() + b"\n"
        if len(line) <= MAX_LINE_BYTES:
            return line
    return json.dumps(head, separators=(",", ":")).encode() + b"\n"


def _text(data: Mapping[str, Any], key: str, default: str = "") -> str:
    value = data.get(key)
    return value if isinstance(value, str) else default


def _optional_text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _task_id(data: Mapping[str, Any]) -> str:
    task_id = data.get("task_id")
    if not isinstance(task_id, str) or not task_id or len(task_id) > 255:
        raise ValueError("task_id missing")
    return task_id


def _build(kind: str, data: Mapping[str, Any], pid: int, ts: float) -> ChannelMessage:
    if kind == "ready":
        queues = data.get("queues")
        config = data.get("config")
        return ReadyMessage(
            pid,
            ts,
            _text(data, "hostname"),
            tuple(q for q in queues if isinstance(q, str)) if isinstance(queues, list) else (),
            dict(config) if isinstance(config, dict) else {},
        )
    if kind == "heartbeat":
        active = data.get("active")
        reserved = data.get("reserved")
        return HeartbeatMessage(
            pid,
            ts,
            _text(data, "consumer", "starting"),
            _number(data, "since_poll_s"),
            reserved if isinstance(reserved, int) and not isinstance(reserved, bool) else 0,
            tuple(a for a in active if isinstance(a, str)) if isinstance(active, list) else (),
            data.get("paused") is True,
        )
    if kind == "hub":
        reachable = data.get("reachable")
        if not isinstance(reachable, bool):
            raise ValueError("hub without reachable")
        retry_in = _number(data, "retry_in_s")
        return HubMessage(pid, ts, reachable, None if reachable or retry_in is None else max(0.0, retry_in))
    if kind == "intake":
        held = data.get("held")
        if not isinstance(held, bool):
            raise ValueError("intake without held")
        reason = _optional_text(data, "reason")
        return IntakeMessage(
            pid, ts, held, (reason or "the rules for when to contribute")[:300] if held else None
        )
    if kind == "task_start":
        return TaskStartMessage(
            pid, ts, _task_id(data), _text(data, "name"), _optional_text(data, "filename")
        )
    if kind == "progress":
        done = _number(data, "done")
        stage = _text(data, "stage")
        if done is None or not stage:
            raise ValueError("progress without stage or done")
        return ProgressMessage(
            pid,
            ts,
            _task_id(data),
            stage,
            done,
            _number(data, "total"),
            _number(data, "percent"),
            _text(data, "message"),
        )
    if kind == "task_end":
        outcome = _text(data, "outcome")
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        metadata = data.get("metadata")
        return TaskEndMessage(
            pid,
            ts,
            _task_id(data),
            outcome,
            _optional_text(data, "error"),
            summarize_metadata(metadata) if isinstance(metadata, dict) else {},
            _number(data, "processing_time"),
        )
    if kind == "broker_refused":
        return BrokerRefusedMessage(pid, ts, _text(data, "source"), _text(data, "error"))
    raise ValueError(f"unknown message type {kind!r}")


def parse_line(line: bytes | str) -> ChannelMessage | None:
    """The typed message on ``line``, or None (logged at debug level) when it is not one."""
    try:
        if len(line) > 4 * MAX_LINE_BYTES:
            raise ValueError("line too long")
        data = json.loads(line)
        if not isinstance(data, dict) or data.get("v") != VERSION:
            raise ValueError("not a version 1 message")
        kind = data.get("type")
        pid = data.get("pid")
        ts = _number(data, "ts")
        if not isinstance(kind, str) or not isinstance(pid, int) or ts is None:
            raise ValueError("type, pid or ts missing")
        return _build(kind, data, pid, ts)
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        log.debug("channel.malformed_line", error=str(exc)[:200], length=len(line))
        return None


class ChannelWriter:
    """The child's end: writes channel lines to a descriptor, one ``os.write`` per line.

    Safe to use from any thread and from forked pool processes (each line is written whole: by
    the atomicity of pipe writes under ``PIPE_BUF`` on POSIX, where no lock may be held across a
    fork, and by a lock on Windows, where nothing forks). Never raises: when the reader is gone
    (EPIPE) or the descriptor is bad it goes quiet.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._lock = threading.Lock() if os.name == "nt" else None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ChannelWriter | None:
        """The writer named by ``MORAG_PROGRESS_FD``; None when the variable is unset or invalid.

        ``stdout`` (the Windows wrapper's mode) must have been turned into a number by
        ``winworker`` before this is called.
        """
        raw = env.get(CHANNEL_ENV, "").strip()
        if not raw.isdecimal():
            return None
        return cls(int(raw))

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def send(self, kind: str, **fields: Any) -> bool:
        """Write one message; False when the channel is closed."""
        fd = self._fd
        if fd is None:
            return False
        line = encode_message(kind, fields)
        try:
            if self._lock is not None:
                with self._lock:
                    written = os.write(fd, line)
            else:
                written = os.write(fd, line)
        except OSError as exc:  # BrokenPipeError when the supervisor is gone, EBADF...
            self._fd = None
            log.debug("channel.closed", error=type(exc).__name__)
            return False
        if written != len(line):  # cannot happen for a blocking pipe and a line under PIPE_BUF
            log.debug("channel.short_write", written=written, length=len(line))
        return True

    def progress_sink(self, task_id: str, meta: ProgressMeta) -> None:
        """A ``ProgressSink`` for ``WorkerRuntime.extra_sinks``."""
        self.send(
            "progress",
            task_id=task_id,
            stage=meta.stage,
            done=meta.done,
            total=meta.total,
            percent=meta.percent,
            message=meta.message,
        )

    def close(self) -> None:
        self._fd = None


def heartbeat_interval(env: Mapping[str, str], default: float = 5.0) -> float:
    """Seconds between heartbeats: ``MORAG_HEARTBEAT_S`` (set by the supervisor), else ``default``."""
    try:
        value = float(env.get(HEARTBEAT_ENV, "") or default)
    except ValueError:
        return default
    return value if 0.05 <= value <= 3600 else default
