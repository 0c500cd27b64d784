"""The progress window: the worker's status, one row per task in flight, the history and the log.

Rows follow ``WorkerController.task_progress`` directly (no timer), so an update is on screen in
the next paint after the event arrives. Each row shows the file name, the stage, a progress bar,
bytes or units done, the speed and the time left. Speed and time left are the supervisor's
(``TaskTracker``, one smoothing for every front end); the window never estimates its own.

The header repeats the tray's state and has buttons for the same ``WorkerActions``, so the window
alone is enough where there is no system tray. A banner shows notices (why the window opened,
what went wrong) when the tray cannot.

GUI thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from PySide6.QtCore import QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QProgressBar,
    QScrollArea,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from morag_worker import DISPLAY_NAME
from morag_worker.core.results import TaskOutcome, TaskRecord
from morag_worker.core.supervisor.events import TaskProgress, WorkerStatus
from morag_worker.core.units import human_duration

from .actions import WorkerActions
from .controller import WorkerController
from .format import percent_text, window_title
from .history_view import HistoryModel, HistoryView
from .icons import IconSet
from .log_view import LogView
from .progress_text import row_texts
from .qt_emit import emit
from .screen_fit import fit_to_screen
from .state_presentation import Level, Moment, Notice, TrayLook, presentation
from .stats_view import ContributionView

__all__ = ["ProgressWindow", "TaskRow", "status_texts"]

#: How long a finished task stays in "Now" with its outcome, unless the next task starts first.
FINISHED_ROW_MS = 8000
_OUTCOME_TEXTS = {
    TaskOutcome.SUCCEEDED: ("Done", "Finished"),
    TaskOutcome.FAILED: ("Failed", "Stopped"),
    TaskOutcome.REQUEUED: ("Back in the queue", "Handed back"),
}
_BANNER_STYLE = {
    Level.INFO: "background:#e8f1fd;color:#1a4d8f;border:1px solid #b9d3f6;",
    Level.WARNING: "background:#fff4e0;color:#7a4b00;border:1px solid #f3d49a;",
    Level.ERROR: "background:#fdecea;color:#8e1f16;border:1px solid #f3b7b0;",
}


def status_texts(status: WorkerStatus, tasks: Sequence[TaskProgress], now: float) -> tuple[str, str]:
    """The header's title and detail line for ``status``; pure."""
    return presentation(status.state).header(Moment(status, tasks, now))


class TaskRow(QFrame):
    """One task in flight: name, stage, bar, and ``done of total · speed · time left``."""

    def __init__(self, progress: TaskProgress) -> None:
        super().__init__()
        self.task_id = progress.task_id
        self.finished = False
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setObjectName("taskRow")
        self.name = QLabel()
        bold = self.name.font()
        bold.setBold(True)
        self.name.setFont(bold)
        self.name.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.stage = QLabel()
        self.stage.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.bar.setFixedHeight(18)
        self.detail = QLabel()
        self.detail.setObjectName("muted")
        top = QHBoxLayout()
        top.addWidget(self.name, 1)
        top.addWidget(self.stage)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 8)
        layout.setSpacing(4)
        layout.addLayout(top)
        layout.addWidget(self.bar)
        layout.addWidget(self.detail)
        self.update_progress(progress)

    def update_progress(self, p: TaskProgress) -> None:
        """Show ``p`` with the speed and time left the supervisor computed (none until it can)."""
        self.finished = False
        self.setProperty("outcome", "")
        self.name.setText(p.filename or p.task_id)
        texts = row_texts(p)
        self.stage.setText(texts.stage)
        if texts.percent is None:
            self.bar.setRange(0, 0)  # busy: the total is unknown
        else:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(max(0.0, min(100.0, texts.percent)) * 10))
            self.bar.setFormat(texts.bar_text)  # the header's rounding, not Qt's truncation
        self.detail.setText(texts.detail)
        self.detail.setVisible(bool(texts.detail))

    def show_outcome(self, record: TaskRecord) -> None:
        """The task ended: say how, and keep the row a moment (the window removes it later)."""
        self.finished = True
        if record.filename:
            self.name.setText(record.filename)
        stage, detail = _OUTCOME_TEXTS[record.outcome]
        self.stage.setText(stage)
        if record.outcome is TaskOutcome.SUCCEEDED:
            self.bar.setRange(0, 1000)
            self.bar.setValue(1000)
            self.bar.setFormat(percent_text(100.0))
        elif self.bar.maximum() == 0:
            self.bar.setRange(0, 1000)
            self.bar.setValue(0)
            self.bar.setFormat("")
        took = f"{detail} after {human_duration(record.duration_s)}"
        error = f": {record.error}" if record.error and record.outcome is TaskOutcome.FAILED else "."
        self.detail.setText(took + error)
        self.detail.setVisible(True)


class _StatusHeader(QFrame):
    def __init__(self, actions: WorkerActions) -> None:
        super().__init__()
        self.icon = QLabel()
        self.icon.setFixedSize(QSize(48, 48))
        self.title = QLabel()
        font = self.title.font()
        font.setPointSizeF(font.pointSizeF() * 1.35)
        font.setBold(True)
        self.title.setFont(font)
        self.detail = QLabel()
        self.detail.setObjectName("muted")
        self.detail.setWordWrap(True)
        texts = QVBoxLayout()
        texts.setSpacing(2)
        texts.addWidget(self.title)
        texts.addWidget(self.detail)
        buttons = QHBoxLayout()
        buttons.setSpacing(6)
        self.buttons: dict[str, QToolButton] = {}
        shown = (("enter_key", "Enter key…"), ("start", None), ("finish", "Finish and pause"),
                 ("stop_now", "Stop now"), ("snooze", None), ("settings", "Settings"))  # fmt: skip
        for name, label in shown:
            button = QToolButton()
            button.setDefaultAction(getattr(actions, name))
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            if label:
                button.setText(label)
                getattr(actions, name).changed.connect(lambda b=button, text=label: b.setText(text))
            if name == "snooze":
                button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
            if name == "enter_key":  # shown only while the key is the problem
                action = actions.enter_key
                button.setVisible(action.isVisible())
                action.changed.connect(lambda b=button, a=action: b.setVisible(a.isVisible()))
            buttons.addWidget(button)
            self.buttons[name] = button
        self.more_menu = QMenu(self)
        self.more_menu.addActions([actions.open_logs, actions.sign_out, actions.about])
        self.more_menu.addSeparator()
        self.more_menu.addAction(actions.quit)
        more = QToolButton()
        more.setText("More")
        more.setToolTip("Log folder, Sign out, About, Quit")
        more.setMenu(self.more_menu)
        more.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        buttons.addWidget(more)
        self.buttons["more"] = more
        buttons.addStretch(1)
        texts.addSpacing(6)
        texts.addLayout(buttons)
        row = QHBoxLayout(self)
        row.setContentsMargins(12, 10, 12, 6)
        row.setSpacing(12)
        row.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        row.addLayout(texts, 1)


class ProgressWindow(QWidget):
    """The main window: status header, notice banner, and Now / History / Log tabs.

    Args:
        controller: The worker's controller.
        actions: The shared actions (buttons in the header).
        icons: Where icons come from.
        history: The history model (``TrayApp`` fills it from the store).
        clock: Epoch seconds.
    """

    #: The user closed the window while ``quit_on_close`` is set (no tray): quit the app.
    quit_requested = Signal()

    def __init__(
        self,
        controller: WorkerController,
        actions: WorkerActions,
        icons: IconSet,
        history: HistoryModel,
        *,
        clock: Callable[[], float] = time.time,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._controller = controller
        self._icons = icons
        self._clock = clock
        self.quit_on_close = False
        self.rows: dict[str, TaskRow] = {}
        self.finished_row_ms = FINISHED_ROW_MS
        self.setWindowTitle(DISPLAY_NAME)
        self.setWindowIcon(icons.app())
        fit_to_screen(self, QSize(680, 480))
        self.setStyleSheet(
            "QLabel#muted { color: palette(placeholder-text); }"
            "QFrame#taskRow { background: palette(base); border: 1px solid palette(midlight);"
            " border-radius: 6px; }"
            "QLabel#banner { border-radius: 6px; padding: 8px 10px; }"
            'QToolButton[popupMode="2"] { padding-right: 14px; }'
        )

        self.header = _StatusHeader(actions)
        self.banner = QLabel()
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner.hide()

        self.task_list = QWidget()
        self._task_layout = QVBoxLayout(self.task_list)
        self._task_layout.setContentsMargins(8, 8, 8, 8)
        self._task_layout.setSpacing(8)
        self.empty_label = QLabel()
        self.empty_label.setObjectName("muted")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setWordWrap(True)  # a GPU notice is long: wrap, never scroll sideways
        self._task_layout.addWidget(self.empty_label)
        self._task_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.task_list)

        self.history = HistoryView(history)
        self.log_view = LogView(clock=clock)
        self.contribution = ContributionView()

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(scroll, "Now")
        self.tabs.addTab(self.history, "History")
        self.tabs.addTab(self.log_view, "Log")
        self.tabs.addTab(self.contribution, "Contribution")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.setSpacing(8)
        layout.addWidget(self.header)
        layout.addWidget(self.banner)
        layout.addWidget(self.tabs, 1)

        controller.state_changed.connect(self._on_status)
        controller.task_progress.connect(self._on_progress)
        controller.task_finished.connect(self._on_finished)
        controller.task_finished.connect(history.add)
        controller.log_line.connect(self.append_log)
        self._look: TrayLook | None = None
        self._on_status(controller.status)

    # -- notices ------------------------------------------------------------------------------

    def show_notice(self, notice: Notice) -> None:
        """Show ``notice`` in the banner above the tabs."""
        self.banner.setStyleSheet(_BANNER_STYLE[notice.level])
        self.banner.setText(f"<b>{_escape(notice.title)}</b><br>{_escape(notice.message)}")
        self.banner.show()

    def clear_notice(self) -> None:
        self.banner.clear()
        self.banner.hide()

    # -- events -------------------------------------------------------------------------------

    @Slot(object)
    def _on_status(self, status: WorkerStatus) -> None:
        if not presentation(status.state).shows_tasks:
            tasks = self._controller.tasks
            for task_id in [t for t, row in self.rows.items() if t not in tasks and not row.finished]:
                self._remove_row(task_id)
        self._refresh_header()

    @Slot(object)
    def _on_progress(self, progress: TaskProgress) -> None:
        for done in [t for t, r in self.rows.items() if r.finished and t != progress.task_id]:
            self._remove_row(done)  # the next task starts: the last one's outcome has been seen
        row = self.rows.get(progress.task_id)
        if row is None:
            row = TaskRow(progress)
            self.rows[progress.task_id] = row
            self._task_layout.insertWidget(self._task_layout.count() - 1, row)
        else:
            row.update_progress(progress)
        self._refresh_header()

    @Slot(object)
    def _on_finished(self, record: TaskRecord) -> None:
        row = self.rows.get(record.task_id)
        if row is not None:
            row.show_outcome(record)
            QTimer.singleShot(self.finished_row_ms, row, lambda: self._remove_finished(record.task_id))
        self._refresh_header()

    def _remove_finished(self, task_id: str) -> None:
        row = self.rows.get(task_id)
        if row is not None and row.finished:
            self._remove_row(task_id)
            self._refresh_header()

    @Slot(str)
    def append_log(self, line: str) -> None:
        """Add a line of the worker's output to the Log tab (the oldest go beyond 5,000)."""
        self.log_view.add_line(line)

    def _remove_row(self, task_id: str) -> None:
        row = self.rows.pop(task_id, None)
        if row is not None:
            self._task_layout.removeWidget(row)
            row.deleteLater()

    def _refresh_header(self) -> None:
        status = self._controller.status
        tasks = list(self._controller.tasks.values())
        moment = Moment(status, tasks, self._clock())
        shown = presentation(status.state)
        title, detail = shown.header(moment)
        self.header.title.setText(title)
        self.header.detail.setText(detail)
        self.header.detail.setVisible(bool(detail))
        look = shown.look_for(status, bool(tasks))
        if look is not self._look:
            self._look = look
            self.header.icon.setPixmap(self._icons.pixmap(look, 48))
        self.empty_label.setVisible(not self.rows)
        if not self.rows:
            self.empty_label.setText(shown.empty_text(moment))
        self.setWindowTitle(window_title(title))

    def bring_to_front(self) -> None:
        """Show, raise and focus the window."""
        self.show()
        self.setWindowState(self.windowState() & ~Qt.WindowState.WindowMinimized)
        self.raise_()
        self.activateWindow()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.quit_on_close:
            event.ignore()
            emit(self.quit_requested)
            return
        event.accept()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
