"""When to tell the user something they did not ask to hear: the notification policy.

Notify failures (a task failed, a request to the worker failed) and state changes the user did not
ask for (the worker crashed: the hub refused the key, ``Problem.KEY_REJECTED``; the hub became
unreachable; the worker stopped or came back on its own). Never notify a success or a change the
user just asked for; a run of retries is one notification, not one per attempt.

Which states notify, and with which words, is in ``state_presentation.PRESENTATION`` (``notify``,
``notice``, ``recovered``); this module keeps the sequence (the previous state, a run of retries).

Pure Python, no Qt: ``TrayApp`` shows each ``Notice`` (tray balloon, or the window's banner).
"""

from __future__ import annotations

from morag_worker.core.results import INPUT_PROBLEM, TaskOutcome, TaskRecord
from morag_worker.core.supervisor.events import WorkerState, WorkerStatus

from .state_presentation import Level, Notice, Notify, key_problem, presentation

__all__ = ["Level", "Notice", "NotificationPolicy"]  # Level and Notice re-exported from state_presentation


class NotificationPolicy:
    """Decides, event by event, whether to notify; remembers the previous state."""

    def __init__(self) -> None:
        self._previous: WorkerState | None = None
        self._outage = False  # BACKOFF was notified and the worker has not run since
        self._outage_state = WorkerState.BACKOFF  # the state that began it

    def on_status(self, status: WorkerStatus, *, expected: bool) -> Notice | None:
        """A notice for this state change, or None.

        Args:
            status: The new status.
            expected: Whether the user's last request leads to this state.
        """
        previous, self._previous = self._previous, status.state
        if status.state is previous:
            return None
        shown = presentation(status.state)
        detail = status.message.strip()
        if (key := key_problem(status)) is not None:
            title, text = key
            return Notice(f"MoRAG Worker stopped: {title}", text, Level.ERROR)
        if shown.notify is Notify.ALWAYS and shown.notice is not None:
            return shown.notice.notice(detail)
        if shown.notify is Notify.ONCE_PER_OUTAGE and shown.notice is not None:
            if self._outage:
                return None  # retrying: STARTING and BACKOFF again are the same outage
            self._outage = True
            self._outage_state = status.state
            return shown.notice.notice(detail)
        was_out = self._outage
        if shown.ends_outage:
            self._outage = False
        recovered = presentation(self._outage_state).recovered
        if shown.works and was_out and recovered is not None:
            # The outage was announced, so its end is too, even when the user pressed Start.
            return recovered.notice(detail)
        if expected or previous is None:
            return None
        if shown.works and (back := presentation(previous).recovered) is not None:
            return back.notice(detail)
        if (
            shown.notify is Notify.UNASKED_FROM_WORK
            and shown.notice is not None
            and presentation(previous).child_runs
        ):
            return shown.notice.notice(detail)
        return None

    @staticmethod
    def on_task_finished(record: TaskRecord, *, requeue_expected: bool) -> Notice | None:
        """A notice for a failed task, or an unexpected hand-back; None for a success."""
        name = record.filename or record.task_id
        if record.outcome is TaskOutcome.FAILED and record.metadata.get(INPUT_PROBLEM):
            return None  # the uploader's broken file: theirs to fix; the history shows it
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
