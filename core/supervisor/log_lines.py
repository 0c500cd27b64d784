"""The worker child's output as a person reads it: one ``LogEntry`` per line, with a sentence or none.

The child writes JSON log lines (our named events and Celery's own messages through the same
pipeline), and, before logging is set up, plain text: Celery's start-up banner, Python warnings
such as Celery's SecurityWarning, blank lines, a traceback when it dies early. ``read_log_line``
turns a named event into a sentence (``task.done`` -> "Task 6ea70f53 finished in 2 s."), keeps
Celery's messages that say something new, and leaves the rest without a sentence: it is still in
``raw`` for whoever asks for the details. Front ends show ``text`` by default and ``raw`` on request;
the level lets them filter.

Pure functions, no Qt, no I/O; safe on any thread.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

from morag_worker.core.units import human_bytes, human_count, human_duration, human_rate
from morag_worker.core.wording import capitalised, sentence

__all__ = ["LogEntry", "LogLevel", "read_log_line"]


class LogLevel(IntEnum):
    """How much a line matters; ordered, so a view can show "this level and above"."""

    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40

    @classmethod
    def named(cls, name: object, default: LogLevel | None = None) -> LogLevel:
        text = str(name or "").strip().upper()
        aliases = {"WARN": "WARNING", "CRITICAL": "ERROR", "EXCEPTION": "ERROR", "FATAL": "ERROR"}
        text = aliases.get(text, text)
        return cls[text] if text in cls.__members__ else (default or cls.INFO)


@dataclass(frozen=True)
class LogEntry:
    """One line of the child's output.

    Attributes:
        raw: The line as the child wrote it (without its line end).
        level: How much it matters.
        text: The sentence a person reads; None when the line only belongs in the details
            (the banner, warnings, blank lines, duplicates of an event already said).
        time: When it was logged (epoch seconds): the event's own time stamp, else arrival.
    """

    raw: str
    level: LogLevel
    text: str | None
    time: float

    @property
    def readable(self) -> bool:
        """Whether there is a sentence for this line."""
        return self.text is not None


def read_log_line(line: str, now: float | None = None) -> LogEntry:
    """The ``LogEntry`` for one line of the child's output; ``now`` stamps lines without a time."""
    raw = line.rstrip("\r\n")
    arrived = time.time() if now is None else now
    data = _json_object(raw)
    if data is None:
        level, plain = _plain_line(raw)
        return LogEntry(raw, level, plain, arrived)
    level = LogLevel.named(data.get("level"))
    stamp = _epoch(data.get("timestamp"), arrived)
    event = str(data.get("event", ""))
    text = _named_event(event, data) if _EVENT_NAME.fullmatch(event) else _library_message(event)
    return LogEntry(raw, level, text, stamp)


# -- JSON lines --------------------------------------------------------------------------------

_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+")
#: Keys of the logging pipeline, never part of what happened.
_PIPELINE_KEYS = frozenset({"event", "level", "logger", "timestamp", "exception", "exc_info", "stack"})


def _json_object(raw: str) -> dict[str, Any] | None:
    if not raw.startswith("{"):
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "event" in data else None


def _epoch(stamp: object, fallback: float) -> float:
    if not isinstance(stamp, str):
        return fallback
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return fallback


def _task(fields: Mapping[str, Any]) -> str:
    task_id = str(fields.get("task_id") or "")
    return f"Task {task_id[:8]}" if task_id else "A task"


def _num(fields: Mapping[str, Any], key: str) -> float | None:
    value = fields.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _seconds(fields: Mapping[str, Any], key: str = "seconds") -> str:
    value = _num(fields, key)
    if value is None:
        return "?"
    return "less than a second" if value < 0.5 else human_duration(value)


def _task_done(f: Mapping[str, Any]) -> str:
    if f.get("success") is False:
        return f"{_task(f)} ended without a result after {_seconds(f)}: the file could not be converted."
    return f"{_task(f)} finished in {_seconds(f)}."


def _download_start(f: Mapping[str, Any]) -> str:
    size = _num(f, "expected_size")
    return f"Downloading from {f.get('host') or 'the hub'}" + (f" ({human_bytes(size)})." if size else ".")


def _download_done(f: Mapping[str, Any]) -> str:
    size, seconds = _num(f, "bytes") or 0.0, _num(f, "seconds")
    rate = f", {human_rate(size / seconds)}" if seconds else ""
    return f"Downloaded {human_bytes(size)} from {f.get('host') or 'the hub'} in {_seconds(f)}{rate}."


def _download_retry(f: Mapping[str, Any]) -> str:
    reason = f" ({f['reason']})" if f.get("reason") else ""
    wait = _num(f, "wait_s")
    when = f"in {human_duration(wait)}" if wait is not None else "soon"
    return f"The download from {f.get('host') or 'the hub'} was interrupted{reason}; trying again {when}."


def _download_resume(f: Mapping[str, Any]) -> str:
    offset, total = _num(f, "offset") or 0.0, _num(f, "total")
    where = f"{human_bytes(offset)} of {human_bytes(total)}" if total else human_bytes(offset)
    return f"Resuming the download from {f.get('host') or 'the hub'} at {where}."


def _count(f: Mapping[str, Any], key: str, one: str, many: str) -> str:
    value = _num(f, key)
    if value is None:
        return many
    return f"{human_count(value)} {one if value == 1 else many}"


Sentence = Callable[[Mapping[str, Any]], str | None]

#: Our named events, in words. An event not listed reads as its name in words plus its fields.
_SENTENCES: dict[str, Sentence] = {
    "worker.ready": lambda f: (
        "The worker is ready and waiting for tasks"
        + (f" from {f['user_id']}'s queues." if f.get("user_id") else ".")
    ),
    "worker.remote_role": lambda f: f"Taking tasks only from the queues of {f.get('user_id')}.",
    "worker.finish_requested": lambda _f: "Asked to finish the current task, then stop.",
    "worker.stop_now_requested": lambda _f: "Asked to stop now: the task in progress goes back to the queue.",
    "worker.control_closed": lambda _f: "The tray app went away, so the worker stops.",
    "task.done": _task_done,
    "task.failed": lambda f: f"{_task(f)} failed: {f.get('error') or 'no reason given'}",
    "task.gave_up": lambda f: f"{_task(f)} was given up after {_count(f, 'starts', 'start', 'starts')}.",
    "task.requeued": lambda f: f"{_task(f)} went back to the queue.",
    "task.malformed": lambda f: f"{_task(f)} was refused: {f.get('error') or 'it is malformed'}",
    "task.message_rejected": lambda f: f"{_task(f)} was refused: {f.get('error') or 'unreadable message'}",
    "task.refused_local": lambda f: f"{_task(f)} was refused: this worker only runs tasks from your queues.",
    "task.options_ignored": lambda f: (
        f"{_task(f)}: {_count(f, 'count', 'unknown option', 'unknown options')} ignored."
    ),
    "download.start": _download_start,
    "download.done": _download_done,
    "download.retry": _download_retry,
    "download.resume": _download_resume,
    "download.restart": lambda f: f"Downloading from {f.get('host') or 'the hub'} again from the start.",
    "download.already_complete": lambda f: f"The file from {f.get('host') or 'the hub'} is already here.",
    "download.redirect": lambda f: f"The download from {f.get('host')} moved to {f.get('to_host')}.",
    "download.failed": lambda f: (
        f"The download from {f.get('host') or 'the hub'} failed: "
        f"{f.get('message') or f.get('error') or 'no reason given'}"
    ),
    "download.integrity_retry": lambda f: (
        f"The file from {f.get('host') or 'the hub'} arrived damaged"
        f" ({f.get('problem') or 'checksum mismatch'}); downloading it again."
    ),
    "processing.resolved": lambda f: f"Converting it with the {f.get('processor')} converter.",
    "processing.content_overrides_hint": lambda f: (
        f"The file is {f.get('content')}, not {f.get('hinted')}: converting it as {f.get('content')}."
    ),
    "processing.plugin_loaded": lambda f: f"Loaded the converter plug-in {f.get('plugin')}.",
    "processing.plugin_failed": lambda f: f"The converter plug-in {f.get('plugin')} could not be loaded.",
    "workspace.swept": lambda f: (
        f"Removed {_count(f, 'count', 'leftover work folder', 'leftover work folders')} of earlier runs."
    ),
}


def _named_event(event: str, fields: Mapping[str, Any]) -> str | None:
    say = _SENTENCES.get(event)
    if say is not None:
        text = say(fields)
        return sentence(text) if text else None
    # Not listed: its name in words ("presence.write_failed" -> "Presence write failed"), then its facts.
    words = capitalised(event.replace(".", " ").replace("_", " "))
    facts = [f"{k.replace('_', ' ')} {_fact(v)}" for k, v in fields.items() if k not in _PIPELINE_KEYS]
    facts = [fact for fact in facts if fact.strip()]
    return sentence(words + (f" ({', '.join(facts)})" if facts else ""))


def _fact(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# -- Celery's own messages -------------------------------------------------------------------

_TASK_NAME = r"(?P<name>[\w.]+)\[(?P<id>[0-9a-f-]+)\]"
_KINDS = {"process_file_task": "a file", "process_url_task": "a web page"}


def _what(name: str) -> str:
    short = name.rsplit(".", 1)[-1].removesuffix("_remote")
    return _KINDS.get(short, short.replace("_", " "))


def _host_of(url: str) -> str:
    after = url.rsplit("@", 1)[-1]
    return after.split("://", 1)[-1].split("/", 1)[0] or url


_LIBRARY: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str | None]]] = [
    (re.compile(rf"Task {_TASK_NAME} received"),
     lambda m: f"Task {m['id'][:8]} received: {_what(m['name'])} to convert."),
    # Our task.done / task.failed say how a task ended; Celery's own lines would say it twice.
    (re.compile(rf"Task {_TASK_NAME} (succeeded|retry|raised)"), lambda _m: None),
    (re.compile(r"\S+ ready\.$"), lambda _m: None),  # worker.ready says it
    (re.compile(r"Connected to (?P<url>\S+)"), lambda m: f"Connected to the broker at {_host_of(m['url'])}."),
    (re.compile(r"consumer: Cannot connect to (?P<url>\S+?):? .*Trying again in (?P<s>[\d.]+) seconds", re.S),
     lambda m: f"Cannot reach the broker at {_host_of(m['url'])}; trying again in "
     f"{human_duration(float(m['s']))}."),
    (re.compile(r"Connection to broker lost"), lambda _m: "Lost the connection to the broker; reconnecting."),
]  # fmt: skip


def _library_message(message: str) -> str | None:
    message = message.strip()
    if not message:
        return None
    for pattern, say in _LIBRARY:
        match = pattern.search(message)
        if match:
            text = say(match)
            return sentence(text) if text else None
    first = message.splitlines()[0]
    return sentence(first)


# -- plain text ---------------------------------------------------------------------------------

#: The last line of a traceback: ``ValueError: ...``, ``celery.exceptions.X: ...``.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit): .+")
_SHUTDOWN = re.compile(r"^worker: (?P<kind>Warm|Cold) shutdown")


def _plain_line(raw: str) -> tuple[LogLevel, str | None]:
    """Plain text is Celery's banner, a warning or a traceback: details, except what a person needs."""
    stripped = raw.strip()
    if not stripped:
        return LogLevel.DEBUG, None
    if shutdown := _SHUTDOWN.match(stripped):
        finish = shutdown["kind"] == "Warm"
        return LogLevel.INFO, (
            "The worker is stopping after its current task." if finish else "The worker is stopping now."
        )
    if _EXCEPTION_LINE.match(stripped):
        return LogLevel.ERROR, sentence(f"The worker reported an error: {stripped.split(': ', 1)[1]}")
    if "Warning:" in stripped:
        return LogLevel.WARNING, None  # Python warnings (Celery's SecurityWarning...): details only
    level = LogLevel.ERROR if stripped.startswith("Traceback") else LogLevel.DEBUG
    return level, None
