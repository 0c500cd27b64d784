"""The system tray icon: an icon and a tooltip per state, and the menu of ``WorkerActions``.

``tray_look`` and ``tray_tooltip`` are the pure rules (state + tasks in flight -> what to show);
``TrayIcon`` applies them on every status and progress event from the controller. A click on
the icon shows the progress window; the context menu has everything else.

GUI thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from morag_worker import DISPLAY_NAME
from morag_worker.core.worker_state import TaskProgress, WorkerState, WorkerStatus

from .actions import WorkerActions
from .controller import WorkerController
from .format import clock_time, percent_text
from .icons import IconSet, TrayLook
from .notifications import Level, Notice
from .qt_emit import emit

__all__ = ["TrayIcon", "overall_percent", "task_percent", "tray_look", "tray_tooltip"]

# Windows truncates tray tooltips at 127 characters.
_TOOLTIP_MAX = 127

_LOOKS: dict[WorkerState, TrayLook] = {
    WorkerState.STOPPED: TrayLook.STOPPED,
    WorkerState.STARTING: TrayLook.CONNECTING,
    WorkerState.RUNNING: TrayLook.WAITING,
    WorkerState.FINISHING: TrayLook.FINISHING,
    WorkerState.STOPPING: TrayLook.FINISHING,
    WorkerState.BACKOFF: TrayLook.ERROR,
    WorkerState.CRASHED: TrayLook.ERROR,
    WorkerState.SNOOZED: TrayLook.SNOOZED,
}


def tray_look(state: WorkerState, busy: bool) -> TrayLook:
    """The icon for ``state``; RUNNING with a task in flight is WORKING."""
    if state is WorkerState.RUNNING and busy:
        return TrayLook.WORKING
    return _LOOKS[state]


def task_percent(progress: TaskProgress) -> float | None:
    """The task's percentage: as reported, else ``done / total``; None when unknown."""
    if progress.percent is not None:
        return progress.percent
    if progress.total:
        return 100.0 * progress.done / progress.total
    return None


def overall_percent(tasks: Sequence[TaskProgress]) -> float | None:
    """The mean of the tasks' known percentages, or None when none is known."""
    known = [pct for t in tasks if (pct := task_percent(t)) is not None]
    return sum(known) / len(known) if known else None


def _working_text(tasks: Sequence[TaskProgress]) -> str:
    pct = percent_text(overall_percent(tasks))
    if len(tasks) == 1:
        name = tasks[0].filename or "a task"
        return f"Working on {name}" + (f": {pct}" if pct else "")
    return f"Working on {len(tasks)} tasks" + (f": {pct}" if pct else "")


def tray_tooltip(status: WorkerStatus, tasks: Sequence[TaskProgress], now: float | None = None) -> str:
    """The tooltip for ``status`` with ``tasks`` in flight; at most 127 characters."""
    now = time.time() if now is None else now
    state = status.state
    if state is WorkerState.STOPPED:
        text = "Stopped"
    elif state is WorkerState.STARTING:
        text = "Connecting…"
    elif state is WorkerState.RUNNING:
        text = (
            _working_text(tasks)
            if tasks
            else "Waiting for work" + (f" on {', '.join(status.queues)}" if status.queues else "")
        )
    elif state is WorkerState.FINISHING:
        text = "Finishing the current task, then pausing"
        if tasks and (pct := percent_text(overall_percent(tasks))):
            text += f" ({pct})"
    elif state is WorkerState.STOPPING:
        text = "Stopping; the task goes back to the queue"
    elif state is WorkerState.SNOOZED:
        until = status.snoozed_until
        text = f"Snoozed until {clock_time(until, now)}" if until is not None else "Snoozed until you resume"
    elif state is WorkerState.BACKOFF:
        text = "Cannot connect" + (
            f"; retrying at {clock_time(status.retry_at, now)}" if status.retry_at else ""
        )
        if status.message:
            text += f": {status.message}"
    else:
        text = "Stopped by an error" + (f": {status.message}" if status.message else "")
    full = f"{DISPLAY_NAME}: {text}"
    return full if len(full) <= _TOOLTIP_MAX else full[: _TOOLTIP_MAX - 1] + "…"


_ICON_FOR_LEVEL = {
    Level.INFO: QSystemTrayIcon.MessageIcon.Information,
    Level.WARNING: QSystemTrayIcon.MessageIcon.Warning,
    Level.ERROR: QSystemTrayIcon.MessageIcon.Critical,
}


class TrayIcon(QSystemTrayIcon):
    """The tray icon, its tooltip and its menu, following the controller.

    Args:
        controller: The worker's controller (status and tasks in flight).
        actions: The shared actions; the context menu shows them.
        icons: Where icons come from.
        clock: Epoch seconds, for "snoozed until" times.
    """

    #: The user clicked the icon (not the menu): show the progress window.
    clicked = Signal()

    def __init__(
        self,
        controller: WorkerController,
        actions: WorkerActions,
        icons: IconSet,
        *,
        clock: Callable[[], float] = time.time,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._controller = controller
        self._icons = icons
        self._clock = clock
        self.look: TrayLook | None = None
        self.menu = QMenu()
        actions.fill_menu(self.menu)
        self.setContextMenu(self.menu)
        self.activated.connect(self._on_activated)
        controller.state_changed.connect(self._refresh)
        controller.task_progress.connect(self._refresh)
        controller.task_finished.connect(self._refresh)
        self._refresh()

    @Slot()
    @Slot(object)
    def _refresh(self, _event: object = None) -> None:
        status = self._controller.status
        tasks = list(self._controller.tasks.values())
        look = tray_look(status.state, bool(tasks))
        if look is not self.look:
            self.look = look
            self.setIcon(self._icons.tray(look))
        self.setToolTip(tray_tooltip(status, tasks, self._clock()))

    def refresh_theme(self) -> None:
        """Redraw the icon for the current panel theme (after a colour scheme change)."""
        self.look = None
        self._refresh()

    def notify(self, notice: Notice) -> None:
        """Show ``notice`` as a balloon / desktop notification."""
        self.showMessage(notice.title, notice.message, _ICON_FOR_LEVEL[notice.level], 8000)

    @Slot(QSystemTrayIcon.ActivationReason)
    def _on_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            emit(self.clicked)
