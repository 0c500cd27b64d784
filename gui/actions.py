"""The user's commands as ``QAction``s, shared by the tray menu and the progress window.

One ``WorkerActions`` per app: the tray menu and the window's buttons show the same actions, so
what is enabled always agrees. What may be asked in which state is the ``enabled`` column of
``state_presentation.PRESENTATION``. Worker actions are wired to the controller here; the
app-level ones (show progress, settings, enter key, logs, sign out, about, quit) are connected by ``TrayApp``.

GUI thread only.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Slot
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu

from morag_worker.core.supervisor.events import WorkerStatus

from .controller import WorkerController
from .state_presentation import WORKER_ACTIONS, key_problem, presentation

__all__ = ["SNOOZE_30_MIN", "SNOOZE_1_H", "WORKER_ACTIONS", "WorkerActions", "enabled_names"]

SNOOZE_30_MIN = 30 * 60
SNOOZE_1_H = 60 * 60


def enabled_names(status: WorkerStatus) -> frozenset[str]:
    """Which of ``WORKER_ACTIONS`` make sense with ``status``; pure."""
    return presentation(status.state).actions(status)


class WorkerActions(QObject):
    """The menu's actions; worker actions call ``controller``'s slots.

    Attributes:
        snooze_menu: The ``Snooze ▸`` submenu (30 min, 1 h, until I resume), shown by ``snooze``.
        before_stop_now: Asked before "Stop now" goes ahead (``TrayApp`` asks the person when
            work would be lost); a false answer cancels it.
    """

    def __init__(self, controller: WorkerController, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._controller = controller
        self.before_stop_now: Callable[[], bool] | None = None
        self.start = QAction("Start", self)
        self.finish = QAction("Finish current task and pause", self)
        self.stop_now = QAction("Stop now (the task goes back to the queue)", self)
        self.snooze_30 = QAction("For 30 minutes", self)
        self.snooze_60 = QAction("For 1 hour", self)
        self.snooze_resume = QAction("Until I resume", self)
        self.snooze_menu = QMenu("Snooze")
        self.snooze_menu.addActions([self.snooze_30, self.snooze_60, self.snooze_resume])
        self.snooze = self.snooze_menu.menuAction()
        self.show_progress = QAction("Show progress", self)
        self.settings = QAction("Settings…", self)
        #: Shown only while the key is missing or refused; opens Settings at the key.
        self.enter_key = QAction("Enter key…", self)
        self.enter_key.setToolTip("Paste the API key from your MoRAG account")
        self.enter_key.setVisible(False)
        self.open_logs = QAction("Open log folder", self)
        self.sign_out = QAction("Sign out…", self)
        self.sign_out.setToolTip("Stop the worker and remove your API key from this computer")
        self.about = QAction("About MoRAG Worker", self)
        self.quit = QAction("Quit", self)

        self.start.setToolTip("Start taking tasks from your queue")
        self.finish.setToolTip("Finish the task in progress, then pause; no new task is taken")
        self.stop_now.setToolTip("Stop at once; the task in progress goes back to your queue")
        self.quit.setMenuRole(QAction.MenuRole.QuitRole)

        self.start.triggered.connect(controller.start)
        self.finish.triggered.connect(controller.finish)
        self.stop_now.triggered.connect(self._on_stop_now)
        self.snooze_30.triggered.connect(lambda: controller.snooze_for(SNOOZE_30_MIN))
        self.snooze_60.triggered.connect(lambda: controller.snooze_for(SNOOZE_1_H))
        self.snooze_resume.triggered.connect(lambda: controller.snooze(None))
        controller.state_changed.connect(self._on_status)
        self.update_for(controller.status)

    @Slot()
    def _on_stop_now(self) -> None:
        if self.before_stop_now is None or self.before_stop_now():
            self._controller.stop_now()

    @Slot(object)
    def _on_status(self, status: WorkerStatus) -> None:
        self.update_for(status)

    def update_for(self, status: WorkerStatus) -> None:
        """Enable the worker actions that make sense with ``status``; offer the key when it is the problem."""
        enabled = enabled_names(status)
        if self._controller.quitting:
            enabled -= {"start"}  # quitting once the task is done: Resume would keep the app from quitting
        for name in WORKER_ACTIONS:
            getattr(self, name).setEnabled(name in enabled)
        self.start.setText(presentation(status.state).start_label)
        self.enter_key.setVisible(key_problem(status) is not None)

    def enabled_worker_actions(self) -> frozenset[str]:
        """The names of the worker actions enabled now (for tests and the window)."""
        return frozenset(name for name in WORKER_ACTIONS if getattr(self, name).isEnabled())

    def fill_menu(self, menu: QMenu) -> None:
        """Add the whole menu, in order, to ``menu``."""
        menu.addAction(self.enter_key)
        menu.addAction(self.start)
        menu.addAction(self.finish)
        menu.addAction(self.stop_now)
        menu.addMenu(self.snooze_menu)
        menu.addSeparator()
        menu.addAction(self.show_progress)
        menu.addAction(self.settings)
        menu.addAction(self.open_logs)
        menu.addAction(self.sign_out)
        menu.addSeparator()
        menu.addAction(self.about)
        menu.addAction(self.quit)
