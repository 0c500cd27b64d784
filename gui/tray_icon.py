"""The system tray icon: an icon and a tooltip per state, and the menu of ``WorkerActions``.

``tray_look`` and ``tray_tooltip`` read ``state_presentation.PRESENTATION`` (state + tasks in flight ->
what to show);
``TrayIcon`` applies them on every status and progress event from the controller. A click on
the icon shows the progress window; the context menu has everything else, under a greyed
first line that says the state in words.

GUI thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import structlog
from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from morag_worker import DISPLAY_NAME
from morag_worker.core.supervisor.events import TaskProgress, WorkerStatus

from .actions import WorkerActions
from .controller import WorkerController
from .icons import IconSet
from .qt_emit import emit
from .state_presentation import Level, Moment, Notice, TrayLook, presentation

__all__ = ["TrayIcon", "status_line", "tray_look", "tray_tooltip"]

log = structlog.get_logger(__name__)

# Windows truncates tray tooltips at 127 characters.
_TOOLTIP_MAX = 127
# A menu wider than this is hard to read on a small panel.
_STATUS_LINE_MAX = 80


def tray_look(status: WorkerStatus, busy: bool) -> TrayLook:
    """The icon for ``status``, with (``busy``) or without a task in flight."""
    return presentation(status.state).look_for(status, busy)


def tray_tooltip(status: WorkerStatus, tasks: Sequence[TaskProgress], now: float | None = None) -> str:
    """The tooltip for ``status`` with ``tasks`` in flight; at most 127 characters."""
    moment = Moment(status, tasks, time.time() if now is None else now)
    full = f"{DISPLAY_NAME}: {presentation(status.state).tooltip(moment)}"
    return full if len(full) <= _TOOLTIP_MAX else full[: _TOOLTIP_MAX - 1] + "…"


def status_line(status: WorkerStatus, tasks: Sequence[TaskProgress], now: float) -> str:
    """The menu's first line (as Maestral and BOINC show): the state in a sentence, at most 80
    characters; pure."""
    text = presentation(status.state).tooltip(Moment(status, tasks, now))
    return text if len(text) <= _STATUS_LINE_MAX else text[: _STATUS_LINE_MAX - 1] + "…"


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
        # The state in words, greyed out (not a command), above the commands.
        self.status_action = QAction(self.menu)
        self.status_action.setEnabled(False)
        self.menu.addAction(self.status_action)
        self.menu.addSeparator()
        actions.fill_menu(self.menu)
        self.menu.aboutToShow.connect(
            lambda: log.info("gui.tray_menu_shown", status=self.status_action.text())
        )
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
        look = tray_look(status, bool(tasks))
        if look is not self.look:
            self.look = look
            self.setIcon(self._icons.tray(look))
        now = self._clock()
        self.setToolTip(tray_tooltip(status, tasks, now))
        self.status_action.setText(status_line(status, tasks, now).replace("&", "&&"))  # no mnemonic

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
