"""What ``morag-worker --no-gui`` shows: a live terminal view, or JSON log lines when not on a TTY.

Both are ``SupervisorListener``s, called from the supervisor's thread. ``TerminalView`` prints a
line per status change and per finished task, and keeps one line per active task (stage, %,
bytes, speed, ETA) at the bottom, redrawn in place at most a few times a second. ``JsonView``
logs the same events as named structlog events (JSON when stderr is not a terminal), throttling
progress to a line every few seconds per task. Child log lines are passed through when verbose,
otherwise only the child's warnings and errors.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TextIO

import structlog

from morag_worker.core.results import TaskRecord
from morag_worker.core.supervisor.events import TaskProgress, WorkerState, WorkerStatus
from morag_worker.core.units import human_bytes, human_count, human_duration, human_rate

__all__ = ["JsonView", "TerminalView", "progress_line", "status_text"]

log = structlog.get_logger("morag_worker.headless")

_LOUD_LEVELS = ("warning", "error", "critical", "exception")


def progress_line(p: TaskProgress, width: int = 100) -> str:
    """``a.pdf  DOWNLOADING  45.0%  1.2 MiB of 2.6 MiB  350 KiB/s  ETA 4 s`` (cut to ``width``)."""
    name = p.filename or p.task_id[:8]
    parts = [name, p.stage.lower()]
    if p.percent is not None:
        parts.append(f"{p.percent:5.1f}%")
    downloading = p.stage == "DOWNLOADING"
    fmt: Callable[[float], str] = human_bytes if downloading else human_count
    if p.total:
        parts.append(f"{fmt(p.done)} of {fmt(p.total)}")
    elif p.done:
        parts.append(fmt(p.done))
    if p.speed:
        parts.append(human_rate(p.speed, unit="bytes" if downloading else None))
    if p.eta_s is not None:
        parts.append(f"ETA {human_duration(p.eta_s)}")
    if p.message and not downloading:
        parts.append(p.message)
    line = "  ".join(parts)
    return line if len(line) <= width else line[: max(0, width - 1)] + "…"


def _is_loud(line: str) -> bool:
    try:
        data = json.loads(line)
    except ValueError:
        return any(f"[{level}" in line.lower() for level in _LOUD_LEVELS) or "Traceback" in line
    return isinstance(data, dict) and str(data.get("level", "")).lower() in _LOUD_LEVELS


def status_text(status: WorkerStatus) -> str:
    """The status message, with the queues the worker consumes once it runs."""
    if status.state is WorkerState.RUNNING and status.queues:
        return f"{status.message} (queues {', '.join(status.queues)})"
    return status.message


def _record_line(record: TaskRecord) -> str:
    name = record.filename or record.task_id[:8]
    text = f"{name}: {record.outcome.value} after {human_duration(record.duration_s)}"
    return text + (f" ({record.error})" if record.error else "")


class TerminalView:
    """The live view on a terminal (``stream`` is a TTY)."""

    def __init__(
        self,
        stream: TextIO,
        *,
        verbose: bool = False,
        width: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 0.25,
    ) -> None:
        import shutil

        self._stream = stream
        self._verbose = verbose
        self._width = width or (lambda: shutil.get_terminal_size((100, 20)).columns)
        self._clock = clock
        self._min_interval = min_interval
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskProgress] = {}
        self._drawn = 0
        self._last_draw = float("-inf")
        self._notice_shown: str | None = None

    def _clear(self) -> None:
        if self._drawn:
            self._stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        width = max(20, self._width() - 1)
        lines = [progress_line(p, width) for p in self._tasks.values()]
        for line in lines:
            self._stream.write(line + "\n")
        self._drawn = len(lines)
        self._last_draw = self._clock()
        self._stream.flush()

    def _print(self, text: str) -> None:
        with self._lock:
            self._clear()
            self._stream.write(text + "\n")
            self._draw()

    def on_status(self, status: WorkerStatus) -> None:
        stamp = time.strftime("%H:%M:%S")
        self._print(f"[{stamp}] {status.state.value}: {status_text(status)}")
        if status.notice and status.notice != self._notice_shown:
            self._notice_shown = status.notice
            self._print(f"  note: {status.notice}")
        if status.last_output and status.state.value == "crashed":
            self._print("  last output of the worker:\n    " + "\n    ".join(status.last_output[-10:]))

    def on_progress(self, progress: TaskProgress) -> None:
        with self._lock:
            before = self._tasks.get(progress.task_id)
            self._tasks[progress.task_id] = progress
            changed = before is None or before.stage != progress.stage
            if changed or self._clock() - self._last_draw >= self._min_interval:
                self._clear()
                self._draw()

    def on_task_finished(self, record: TaskRecord) -> None:
        with self._lock:
            self._tasks.pop(record.task_id, None)
        self._print(f"[{time.strftime('%H:%M:%S')}] {_record_line(record)}")

    def on_log(self, line: str) -> None:
        if self._verbose or _is_loud(line):
            self._print(line)


class JsonView:
    """Structured log lines (the stdlib/structlog pipeline renders JSON when not on a terminal)."""

    def __init__(
        self,
        *,
        verbose: bool = False,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        progress_every_s: float = 5.0,
    ) -> None:
        import sys

        self._verbose = verbose
        self._stream = stream or sys.stderr
        self._clock = clock
        self._every = progress_every_s
        self._lock = threading.Lock()
        self._last: dict[str, tuple[str, float]] = {}

    def on_status(self, status: WorkerStatus) -> None:
        log.info(
            "worker.status",
            state=status.state.value,
            message=status.message,
            problem=status.problem.value if status.problem else None,
            attempt=status.attempt,
            retry_at=status.retry_at,
            queues=", ".join(status.queues) or None,
            notice=status.notice,
            held_reason=status.held_reason,
            last_output=list(status.last_output[-10:]) if status.state.value == "crashed" else None,
        )

    def on_progress(self, p: TaskProgress) -> None:
        now = self._clock()
        with self._lock:
            stage, when = self._last.get(p.task_id, ("", float("-inf")))
            if stage == p.stage and now - when < self._every:
                return
            self._last[p.task_id] = (p.stage, now)
        log.info(
            "task.progress",
            task_id=p.task_id,
            filename=p.filename,
            stage=p.stage,
            done=p.done,
            total=p.total,
            percent=p.percent,
            speed=round(p.speed, 1) if p.speed else None,
            eta_s=round(p.eta_s, 1) if p.eta_s is not None else None,
        )

    def on_task_finished(self, record: TaskRecord) -> None:
        with self._lock:
            self._last.pop(record.task_id, None)
        log.info(
            "task.finished",
            task_id=record.task_id,
            filename=record.filename,
            outcome=record.outcome.value,
            seconds=round(record.duration_s, 3),
            error=record.error,
        )

    def on_log(self, line: str) -> None:
        if self._verbose or _is_loud(line):
            with self._lock:
                self._stream.write(line + "\n")
                self._stream.flush()
