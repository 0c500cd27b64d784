"""Throttled progress reports of one task: to the result backend and to the local channel.

A task reports DOWNLOADING bytes and PROCESSING units as fast as its loops run; this turns them
into at most ~4 updates per second (plus every stage change and the final value), each sent to
every sink. Sinks are plain callables so the logic is tested without Celery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from morag_worker.core.results import ProgressMeta, TaskStage

__all__ = ["ProgressReporter", "ProgressSink"]

ProgressSink = Callable[[str, ProgressMeta], None]
"""Receives (task_id, meta); must not raise (a failing sink is dropped from further reports)."""


class ProgressReporter:
    """Forwards a task's progress to its sinks, at most once per ``min_interval`` per stage."""

    def __init__(
        self,
        task_id: str,
        sinks: Sequence[ProgressSink],
        *,
        min_interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        checkpoint: Callable[[], None] | None = None,
    ) -> None:
        self.task_id = task_id
        self._sinks = list(sinks)
        self._min_interval = min_interval
        self._clock = clock
        self._checkpoint = checkpoint
        self._lock = threading.Lock()
        self._last_stage: str | None = None
        self._last_sent = float("-inf")
        self.last: ProgressMeta | None = None

    def report(
        self,
        stage: TaskStage | str,
        done: float,
        total: float | None,
        message: str = "",
        *,
        force: bool = False,
    ) -> None:
        """Record progress; send it if the stage changed, it is final, forced, or due."""
        if self._checkpoint is not None:
            self._checkpoint()  # cooperative cancellation: may raise
        meta = ProgressMeta.of(str(stage), done, total, message)
        now = self._clock()
        with self._lock:
            self.last = meta
            final = total is not None and done >= total
            due = now - self._last_sent >= self._min_interval
            if not (force or final or due or meta.stage != self._last_stage):
                return
            self._last_stage = meta.stage
            self._last_sent = now
        for sink in list(self._sinks):
            try:
                sink(self.task_id, meta)
            except Exception:  # noqa: BLE001 - a broken sink must not fail the task
                self._sinks.remove(sink)

    def downloading(self, done: int, total: int | None) -> None:
        self.report(TaskStage.DOWNLOADING, done, total, "downloading input")

    def processing(self, done: float, total: float | None, message: str = "") -> None:
        self.report(TaskStage.PROCESSING, done, total, message or "converting to markdown")
