"""When to tell the user something they did not ask to hear: the notification policy.

Notify failures (a task failed, a request to the worker failed) and state changes the user did not
ask for (the worker crashed: the key was revoked or the hub refused it; the hub became
unreachable; the worker stopped or came back on its own). Never notify a success or a change the
user just asked for; a run of retries is one notification, not one per attempt.

Pure Python, no Qt: ``TrayApp`` shows each ``Notice`` (tray balloon, or the window's banner).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from morag_worker.core.worker_state import TaskOutcome, TaskRecord, WorkerState, WorkerStatus

__all__ = ["Level", "Notice", "NotificationPolicy"]


class Level(Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Notice:
    """One notification: a short title and a sentence or two."""

    title: str
    message: str
    level: Level = Level.INFO


_KEY_WORDS = ("key", "401", "unauthor", "revoked", "expired", "rejected")
_WORKING = frozenset({WorkerState.STARTING, WorkerState.RUNNING, WorkerState.FINISHING, WorkerState.STOPPING})


class NotificationPolicy:
    """Decides, event by event, whether to notify; remembers the previous state."""

    def __init__(self) -> None:
        self._previous: WorkerState | None = None
        self._outage = False  # BACKOFF was notified and the worker has not run since

    def on_status(self, status: WorkerStatus, *, expected: bool) -> Notice | None:
        """A notice for this state change, or None.

        Args:
            status: The new status.
            expected: Whether the user's last request leads to this state.
        """
        previous, self._previous = self._previous, status.state
        if status.state is previous:
            return None
        state = status.state
        detail = status.message.strip()
        if state is WorkerState.CRASHED:
            if any(word in detail.lower() for word in _KEY_WORDS):
                return Notice(
                    "MoRAG Worker stopped: API key refused",
                    (detail + ". " if detail else "")
                    + "Open Settings and paste a valid key from your MoRAG account.",
                    Level.ERROR,
                )
            return Notice(
                "MoRAG Worker stopped after an error",
                (detail or "The worker could not keep running.") + " See the log for details.",
                Level.ERROR,
            )
        if state is WorkerState.BACKOFF:
            if self._outage:
                return None  # retrying: STARTING and BACKOFF again are the same outage
            self._outage = True
            return Notice(
                "MoRAG Worker cannot connect",
                (detail or "The hub or the broker cannot be reached.")
                + " It will keep retrying; no action is needed if your network is down.",
                Level.WARNING,
            )
        was_out = self._outage
        if state in (WorkerState.RUNNING, WorkerState.STOPPED, WorkerState.SNOOZED):
            self._outage = False
        if state is WorkerState.RUNNING and was_out:
            # The outage was announced, so its end is too, even when the user pressed Start.
            return Notice("MoRAG Worker is connected again", detail or "Waiting for work.", Level.INFO)
        if expected:
            return None
        if state is WorkerState.RUNNING and previous is WorkerState.CRASHED:
            return Notice("MoRAG Worker is running again", detail or "Waiting for work.", Level.INFO)
        if state is WorkerState.STOPPED and previous in _WORKING:
            return Notice(
                "MoRAG Worker stopped", detail or "The worker stopped. Choose Start to resume.", Level.WARNING
            )
        if state is WorkerState.SNOOZED and previous in _WORKING:
            return Notice("MoRAG Worker paused", detail or "The worker is snoozed.", Level.INFO)
        return None

    @staticmethod
    def on_task_finished(record: TaskRecord, *, requeue_expected: bool) -> Notice | None:
        """A notice for a failed task, or an unexpected hand-back; None for a success."""
        name = record.filename or record.task_id
        if record.outcome is TaskOutcome.FAILED:
            return Notice(f"Task failed: {name}", record.error or "The task failed.", Level.WARNING)
        if record.outcome is TaskOutcome.REQUEUED and not requeue_expected:
            return Notice(
                f"Task handed back: {name}",
                "The task went back to your queue; it will be picked up again.",
                Level.INFO,
            )
        return None

    @staticmethod
    def on_failed(message: str) -> Notice:
        """A request to the worker failed."""
        return Notice("MoRAG Worker: something went wrong", message, Level.ERROR)
