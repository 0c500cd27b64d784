"""Small dialogs: the question asked when quitting during a task, and About.

Each question has an ``ask()`` class method that returns the answer, so tests answer it with
``monkeypatch.setattr(QuitDialog, "ask", ...)`` instead of clicking a modal box.

GUI thread only.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QMessageBox, QWidget

from morag_worker import DISPLAY_NAME

__all__ = [
    "QuitChoice",
    "QuitDialog",
    "RestartDialog",
    "StopNowChoice",
    "StopNowDialog",
    "log_folder_box",
]


class QuitChoice(Enum):
    """How to quit while a task runs."""

    FINISH_FIRST = "finish_first"  # finish the task, then quit
    HAND_BACK = "hand_back"  # stop now; the task goes back to the queue


class QuitDialog(QMessageBox):
    """Asks, when quitting during a task: finish it first, or hand it back now?"""

    def __init__(self, task_count: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Quit {DISPLAY_NAME}")
        self.setIcon(QMessageBox.Icon.Question)
        what = "A task is" if task_count == 1 else f"{task_count} tasks are"
        self.setText(f"{what} still running.")
        self.setInformativeText(
            "Finish it first and quit when it is done, or hand it back now: it goes back to your "
            "queue and will be picked up again."
        )
        self.finish_button = self.addButton("Finish first, then quit", QMessageBox.ButtonRole.AcceptRole)
        self.hand_back_button = self.addButton(
            "Hand it back and quit", QMessageBox.ButtonRole.DestructiveRole
        )
        self.cancel_button = self.addButton(QMessageBox.StandardButton.Cancel)
        self.setDefaultButton(self.finish_button)
        self.setEscapeButton(self.cancel_button)

    def choice(self) -> QuitChoice | None:
        """The answer after the dialog closed; None for Cancel."""
        clicked = self.clickedButton()
        if clicked is self.finish_button:
            return QuitChoice.FINISH_FIRST
        if clicked is self.hand_back_button:
            return QuitChoice.HAND_BACK
        return None

    @classmethod
    def ask(cls, task_count: int, parent: QWidget | None = None) -> QuitChoice | None:
        """Ask (modal) and return the choice; None when the user cancels."""
        dialog = cls(task_count, parent)
        dialog.exec()
        return dialog.choice()


class RestartDialog(QMessageBox):
    """Asks, after settings changed while the worker runs: restart it now so they apply?"""

    def __init__(self, busy: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings saved")
        self.setIcon(QMessageBox.Icon.Question)
        self.setText("Restart the worker so the new settings apply?")
        self.setInformativeText(
            "The task in progress is finished first, so no work is lost; then the worker starts again."
            if busy
            else "No task is running, so nothing is interrupted."
        )
        self.restart_button = self.addButton(
            "Restart after this task" if busy else "Restart now", QMessageBox.ButtonRole.AcceptRole
        )
        self.later_button = self.addButton("Later", QMessageBox.ButtonRole.RejectRole)
        self.setDefaultButton(self.restart_button)
        self.setEscapeButton(self.later_button)

    @classmethod
    def ask(cls, *, busy: bool, parent: QWidget | None = None) -> bool:
        """Ask (modal); True to restart."""
        dialog = cls(busy, parent)
        dialog.exec()
        return dialog.clickedButton() is dialog.restart_button


def log_folder_box(path: Path, parent: QWidget | None = None) -> QMessageBox:
    """Says where the log folder is when no file manager could open it (shown by the caller).

    The path can be selected, and "Copy path" puts it on the clipboard.
    """
    box = QMessageBox(parent)
    box.setWindowTitle("Log folder")
    box.setIcon(QMessageBox.Icon.Information)
    box.setText("No file manager could be opened. The log files are in this folder:")
    box.setInformativeText(str(path))
    box.setTextInteractionFlags(
        Qt.TextInteractionFlag.TextSelectableByMouse | Qt.TextInteractionFlag.TextSelectableByKeyboard
    )
    copy = box.addButton("Copy path", QMessageBox.ButtonRole.ActionRole)
    copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(str(path)))
    box.addButton(QMessageBox.StandardButton.Close)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setModal(False)
    return box


class StopNowChoice(Enum):
    """The answer to "Stop now?" when work would be lost."""

    STOP_NOW = "stop_now"  # hand the tasks back now; their progress is lost
    FINISH = "finish"  # finish them, then pause


class StopNowDialog(QMessageBox):
    """Asks before "Stop now" throws work away: says how much, and offers to finish first."""

    def __init__(self, lost: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Stop now?")
        self.setIcon(QMessageBox.Icon.Warning)
        self.setText("Stopping now hands the work in progress back to your queue, where it starts over.")
        self.setInformativeText(
            " ".join(lost) + " Finish and pause keeps it: the worker takes no new task and pauses "
            "once the current work is done."
        )
        self.stop_button = self.addButton("Stop now", QMessageBox.ButtonRole.DestructiveRole)
        self.finish_button = self.addButton("Finish, then pause", QMessageBox.ButtonRole.AcceptRole)
        self.cancel_button = self.addButton(QMessageBox.StandardButton.Cancel)
        self.setDefaultButton(self.finish_button)
        self.setEscapeButton(self.cancel_button)

    def choice(self) -> StopNowChoice | None:
        clicked = self.clickedButton()
        if clicked is self.stop_button:
            return StopNowChoice.STOP_NOW
        if clicked is self.finish_button:
            return StopNowChoice.FINISH
        return None

    @classmethod
    def ask(cls, lost: list[str], parent: QWidget | None = None) -> StopNowChoice | None:
        """Ask (modal) and return the choice; None when the user cancels."""
        dialog = cls(lost, parent)
        dialog.exec()
        return dialog.choice()
