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

from PySide6.QtCore import QSize, Qt, Signal, Slot
from PySide6.QtGui import QCloseEvent, QFont
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPlainTextEdit,
    QProgressBar,
    QScrollArea,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from morag_worker import DISPLAY_NAME
from morag_worker.core.results import TaskRecord
from morag_worker.core.supervisor.events import TaskProgress, WorkerStatus
from morag_worker.core.units import human_bytes, human_count, human_duration, human_rate

from .actions import WorkerActions
from .controller import WorkerController
from .history_view import HistoryModel, HistoryView
from .icons import IconSet
from .qt_emit import emit
from .state_presentation import Level, Moment, Notice, TrayLook, presentation, task_percent

__all__ = ["ProgressWindow", "TaskRow", "status_texts"]

_STAGE_NAMES = {"DOWNLOADING": "Downloading", "PROCESSING": "Processing"}
_LOG_LINES = 5000
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
        self.name.setText(p.filename or p.task_id)
        stage = _STAGE_NAMES.get(p.stage, p.stage.title())
        self.stage.setText(f"{stage} · {p.message}" if p.message else stage)
        percent = task_percent(p)
        if percent is None:
            self.bar.setRange(0, 0)  # busy: the total is unknown
        else:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(max(0.0, min(100.0, percent)) * 10))
        in_bytes = p.stage == "DOWNLOADING"
        amount = human_bytes if in_bytes else human_count
        parts = [f"{amount(p.done)} of {amount(p.total)}" if p.total else amount(p.done)]
        if p.speed:
            parts.append(human_rate(p.speed, unit="bytes" if in_bytes else None))
        if p.eta_s is not None:
            parts.append(f"{human_duration(p.eta_s)} left")
        self.detail.setText(" · ".join(parts))


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
        for name, label in (("start", None), ("finish", "Finish and pause"), ("stop_now", "Stop now"),
                            ("snooze", None), ("settings", "Settings")):  # fmt: skip
            button = QToolButton()
            button.setDefaultAction(getattr(actions, name))
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            if label:
                button.setText(label)
                getattr(actions, name).changed.connect(lambda b=button, text=label: b.setText(text))
            if name == "snooze":
                button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
            buttons.addWidget(button)
            self.buttons[name] = button
        self.more_menu = QMenu(self)
        self.more_menu.addActions([actions.open_logs, actions.about])
        self.more_menu.addSeparator()
        self.more_menu.addAction(actions.quit)
        more = QToolButton()
        more.setText("More")
        more.setToolTip("Log folder, About, Quit")
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
        self.setWindowTitle(DISPLAY_NAME)
        self.setWindowIcon(icons.app())
        self.resize(680, 480)
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
        self._task_layout.addWidget(self.empty_label)
        self._task_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.task_list)

        self.history = HistoryView(history)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(_LOG_LINES)
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.log_view.setPlaceholderText("The worker's log appears here.")
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.TypeWriter)
        self.log_view.setFont(mono)

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(scroll, "Now")
        self.tabs.addTab(self.history, "History")
        self.tabs.addTab(self.log_view, "Log")

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
            for task_id in [t for t in self.rows if t not in self._controller.tasks]:
                self._remove_row(task_id)
        self._refresh_header()

    @Slot(object)
    def _on_progress(self, progress: TaskProgress) -> None:
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
        self._remove_row(record.task_id)
        self._refresh_header()

    @Slot(str)
    def append_log(self, line: str) -> None:
        """Add a line to the Log tab (the oldest lines go beyond 5,000)."""
        self.log_view.appendPlainText(line.rstrip("\n"))

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
        look = shown.busy_look if tasks else shown.look
        if look is not self._look:
            self._look = look
            self.header.icon.setPixmap(self._icons.pixmap(look, 48))
        self.empty_label.setVisible(not self.rows)
        if not self.rows:
            self.empty_label.setText(shown.empty_text(moment))
        self.setWindowTitle(f"{title} · {DISPLAY_NAME}")

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
