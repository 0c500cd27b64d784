"""Supervisor side of task progress: channel messages in, ``TaskProgress``/``TaskRecord`` out.

Keeps the tasks the child is working on, computes a smoothed speed (an exponentially weighted
average of the rate between updates, with a time constant, so uneven update intervals weigh
fairly) and the ETA from it. Times come from the supervisor's clock, not the child's, so speed is
measured where it is shown. Not thread-safe: the supervisor's loop thread owns it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from morag_worker.core.execution.progress_channel import ProgressMessage, TaskEndMessage, TaskStartMessage
from morag_worker.core.results import TaskOutcome, TaskRecord
from morag_worker.core.supervisor.events import TaskProgress

__all__ = ["STARTED_STAGE", "TaskTracker"]

STARTED_STAGE = "STARTED"  # the stage of a task that has started but reported nothing yet


@dataclass
class _Active:
    progress: TaskProgress
    started_at: float  # wall clock
    last_mono: float | None = None  # monotonic time of the last progress update
    missing_beats: int = 0


class TaskTracker:
    """Active tasks of one child and their speed.

    Args:
        monotonic: Seconds for rate computation.
        wall: Epoch seconds for ``TaskProgress.timestamp`` and ``TaskRecord`` times.
        time_constant_s: How quickly the smoothed speed follows a change of rate.
    """

    def __init__(
        self,
        monotonic: Callable[[], float],
        wall: Callable[[], float],
        *,
        time_constant_s: float = 3.0,
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._tau = time_constant_s
        self._tasks: dict[str, _Active] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def active(self) -> list[TaskProgress]:
        return [entry.progress for entry in self._tasks.values()]

    def started(self, msg: TaskStartMessage) -> TaskProgress:
        progress = TaskProgress(
            task_id=msg.task_id,
            stage=STARTED_STAGE,
            done=0.0,
            total=None,
            percent=None,
            message=msg.name.rsplit(".", 1)[-1],
            filename=msg.filename,
            timestamp=self._wall(),
        )
        self._tasks[msg.task_id] = _Active(progress=progress, started_at=self._wall())
        return progress

    def progressed(self, msg: ProgressMessage) -> TaskProgress:
        entry = self._tasks.get(msg.task_id)
        if entry is None:  # started before we listened (or its start line was lost)
            entry = _Active(
                progress=TaskProgress(msg.task_id, STARTED_STAGE, 0.0, None, None), started_at=self._wall()
            )
            self._tasks[msg.task_id] = entry
        now = self._monotonic()
        previous = entry.progress
        speed = previous.speed
        if previous.stage != msg.stage or entry.last_mono is None:
            speed = None
        else:
            elapsed = now - entry.last_mono
            if elapsed > 0 and msg.done >= previous.done:
                rate = (msg.done - previous.done) / elapsed
                weight = 1.0 - math.exp(-elapsed / self._tau)
                speed = rate if speed is None else speed + weight * (rate - speed)
        eta = None
        if speed and speed > 0 and msg.total is not None and msg.total >= msg.done:
            eta = (msg.total - msg.done) / speed
        entry.last_mono = now
        entry.missing_beats = 0
        entry.progress = replace(
            previous,
            stage=msg.stage,
            done=msg.done,
            total=msg.total,
            percent=msg.percent,
            message=msg.message,
            speed=speed,
            eta_s=eta,
            timestamp=self._wall(),
        )
        return entry.progress

    def ended(self, msg: TaskEndMessage) -> TaskRecord:
        entry = self._tasks.pop(msg.task_id, None)
        started = entry.started_at if entry is not None else self._wall()
        return TaskRecord(
            task_id=msg.task_id,
            outcome=TaskOutcome(msg.outcome),
            started_at=started,
            finished_at=self._wall(),
            filename=entry.progress.filename if entry is not None else None,
            error=msg.error,
            metadata=dict(msg.metadata),
        )

    def interrupt(self, task_id: str, reason: str) -> TaskRecord | None:
        """The record of a task that ended without a ``task_end`` line (back to the queue)."""
        entry = self._tasks.pop(task_id, None)
        if entry is None:
            return None
        return TaskRecord(
            task_id=task_id,
            outcome=TaskOutcome.REQUEUED,
            started_at=entry.started_at,
            finished_at=self._wall(),
            filename=entry.progress.filename,
            error=reason,
        )

    def interrupt_all(self, reason: str) -> list[TaskRecord]:
        return [r for task_id in list(self._tasks) if (r := self.interrupt(task_id, reason)) is not None]

    def reconcile(self, active: tuple[str, ...], reason: str) -> list[TaskRecord]:
        """Tasks the child's main process no longer lists in two heartbeats in a row are lost.

        A prefork pool process killed under a task (out of memory...) never writes ``task_end``;
        Celery requeues its message (``task_reject_on_worker_lost``).
        """
        lost = []
        for task_id, entry in list(self._tasks.items()):
            if task_id in active:
                entry.missing_beats = 0
                continue
            entry.missing_beats += 1
            if entry.missing_beats >= 2 and (record := self.interrupt(task_id, reason)) is not None:
                lost.append(record)
        return lost
