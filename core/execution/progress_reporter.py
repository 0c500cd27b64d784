"""Throttled progress reports of one task: to the result backend and to the local channel.

A task reports DOWNLOADING bytes and PROCESSING units as fast as its loops run; this turns them
into at most ~4 updates per second (plus every stage change and the final value), each sent to
every sink. Sinks are plain callables so the logic is tested without Celery.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

from morag_worker.core.results import ProgressMeta, TaskStage

__all__ = ["ProgressReporter", "ProgressSink", "SettledStates"]

ProgressSink = Callable[[str, ProgressMeta], None]
"""Receives (task_id, meta); must not raise (a failing sink is dropped from further reports)."""


class ProgressReporter:
    """Forwards a task's progress to its sinks, at most once per ``min_interval`` per stage, and every
    report to its ``latest`` sinks (which keep the latest and write it when they choose)."""

    def __init__(
        self,
        task_id: str,
        sinks: Sequence[ProgressSink],
        *,
        min_interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        checkpoint: Callable[[], None] | None = None,
        latest: Sequence[ProgressSink] = (),
    ) -> None:
        self.task_id = task_id
        self._sinks = list(sinks)
        # Told every report, unthrottled: sinks that keep only the latest (SettledStates), cheaply.
        self._latest = list(latest)
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
        for keep in self._latest:
            keep(self.task_id, meta)
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


class SettledStates:
    """Writes a task's state to the result backend only once it has lasted ``settle_s``.

    A person polling a task (the hub's ``GET /api/v1/tasks/{id}``, the submit CLI at 4 per second)
    never sees a state that another replaced within a quarter of a second: a 40-byte input goes
    DOWNLOADING, PROCESSING and SUCCESS in a few milliseconds, and each state written costs the
    backend a GET, a SETEX and a PUBLISH. So each task's latest state waits here and is written
    by one thread of this process when it is ``settle_s`` old; a newer state replaces a waiting
    one (written when the first would have been, so a long stage still shows within
    ``settle_s``). :meth:`discard` drops a task's waiting state before its result is stored,
    after waiting for a write of it in flight, so no progress ever lands over a final state.
    The thread is started in the process that reports (a pool process, after the fork), never
    inherited.
    """

    def __init__(
        self,
        write: ProgressSink,
        *,
        settle_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._settle_s = settle_s
        self._clock = clock
        self._pid = -1
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._waiting: dict[str, tuple[float, ProgressMeta]] = {}
        self._writing: str | None = None
        self._thread: threading.Thread | None = None
        # When the thread looks at the states again by itself: None while it waits for a first one,
        # -inf while it is awake. A report it would find in time wakes nobody (issue 14: a small
        # task reports six times, and each wake cost a thread switch and the GIL).
        self._wakes_at: float | None = float("-inf")

    def __call__(self, task_id: str, meta: ProgressMeta) -> None:
        """A :data:`ProgressSink`: remember ``meta`` as the task's state to write once settled."""
        if os.getpid() != self._pid:  # first use in this process: a fork shares no thread
            self._pid = os.getpid()
            self._reset()
        with self._cond:
            waiting = self._waiting.get(task_id)
            due = waiting[0] if waiting is not None else self._clock() + self._settle_s
            self._waiting[task_id] = (due, meta)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="morag-task-states", daemon=True)
                self._thread.start()
            elif self._wakes_at is None or due < self._wakes_at:
                self._cond.notify()

    def discard(self, task_id: str) -> None:
        """Forget the task's waiting state; return once no write of it is in flight."""
        if os.getpid() != self._pid:
            return
        with self._cond:
            self._waiting.pop(task_id, None)
            while self._writing == task_id:
                self._cond.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._waiting:
                    self._wakes_at = None
                    self._cond.wait()
                    self._wakes_at = float("-inf")
                    continue
                task_id, (due, meta) = min(self._waiting.items(), key=lambda item: item[1][0])
                left = due - self._clock()
                if left > 0:
                    self._wakes_at = due
                    self._cond.wait(left)
                    self._wakes_at = float("-inf")
                    continue
                del self._waiting[task_id]
                self._writing = task_id
            try:
                self._write(task_id, meta)
            except Exception:  # noqa: BLE001 - a state not written is not worth failing a task over
                pass
            finally:
                with self._cond:
                    self._writing = None
                    self._cond.notify_all()
