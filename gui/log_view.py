"""The Log tab: the worker's output one sentence per event, filterable, with Copy and Save.

Each line of the child's output becomes a ``LogEntry`` (``core.supervisor.log_lines``, shared with
the headless view). By default only entries with a sentence show, as ``14:32:05  Task 6ea70f53
finished in 2 s.``; the level box hides the chatter below warnings or errors; "Details" shows the
raw output instead (Celery's banner, warnings, JSON), unwrapped. Copy and Save take what is shown.
The view follows new lines while it is scrolled to the bottom, and never scrolls sideways.

GUI thread only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import structlog
from PySide6.QtCore import Slot
from PySide6.QtGui import QFont, QGuiApplication, QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from morag_worker.core.config.atomic_file import write_atomically
from morag_worker.core.supervisor.log_lines import LogEntry, LogLevel, read_log_line

__all__ = ["LEVEL_CHOICES", "LogView", "entry_text"]

log = structlog.get_logger(__name__)

#: How many lines the view keeps (the oldest go first).
KEPT_LINES = 5000
#: The level box: its label and the least level it shows.
LEVEL_CHOICES: tuple[tuple[str, LogLevel], ...] = (
    ("Everything", LogLevel.INFO),
    ("Warnings and errors", LogLevel.WARNING),
    ("Errors only", LogLevel.ERROR),
)
_MARKS = {LogLevel.WARNING: "Warning: ", LogLevel.ERROR: "Error: "}


def entry_text(entry: LogEntry, *, details: bool = False) -> str | None:
    """How ``entry`` reads in the view: ``"14:32:05  Task … finished."``, or the raw line with
    ``details``; None when the entry has no sentence (and ``details`` is off)."""
    if details:
        return entry.raw
    if entry.text is None:
        return None
    stamp = time.strftime("%H:%M:%S", time.localtime(entry.time))
    return f"{stamp}  {_MARKS.get(entry.level, '')}{entry.text}"


class LogView(QWidget):
    """The Log tab.

    Args:
        clock: Epoch seconds, to stamp lines that carry no time of their own.
        ask_save_path: Asks where to save (a file dialog); tests answer it directly.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        ask_save_path: Callable[[QWidget], Path | None] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._clock = clock
        self._ask_save_path = ask_save_path or _ask_save_path
        self.entries: deque[LogEntry] = deque(maxlen=KEPT_LINES)

        self.level_box = QComboBox()
        for label, level in LEVEL_CHOICES:
            self.level_box.addItem(label, level)
        self.level_box.setToolTip("Which messages to show")
        self.details = QCheckBox("Details")
        self.details.setToolTip("Show the worker's raw output, as Celery writes it")
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the lines shown to the clipboard")
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("Save the lines shown to a text file")
        self.status = QLabel()
        self.status.setObjectName("muted")
        bar = QHBoxLayout()
        bar.setContentsMargins(0, 0, 0, 0)
        bar.addWidget(QLabel("Show"))
        bar.addWidget(self.level_box)
        bar.addWidget(self.details)
        bar.addStretch(1)
        bar.addWidget(self.status)
        bar.addWidget(self.copy_button)
        bar.addWidget(self.save_button)

        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setMaximumBlockCount(KEPT_LINES)
        self.text.setPlaceholderText("What the worker does appears here.")
        self._mono = QFont("monospace")
        self._mono.setStyleHint(QFont.StyleHint.TypeWriter)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(4)
        layout.addLayout(bar)
        layout.addWidget(self.text, 1)

        self.level_box.currentIndexChanged.connect(self._redraw)
        self.details.toggled.connect(self._redraw)
        self.copy_button.clicked.connect(self.copy)
        self.save_button.clicked.connect(self._on_save_clicked)
        self._redraw()

    # -- reading ----------------------------------------------------------------------------

    @property
    def least_level(self) -> LogLevel:
        level = self.level_box.currentData()
        return level if isinstance(level, LogLevel) else LogLevel.INFO

    def _shown(self, entry: LogEntry) -> str | None:
        if self.details.isChecked():
            return entry_text(entry, details=True)
        if entry.level < self.least_level:
            return None
        return entry_text(entry)

    def shown_lines(self) -> list[str]:
        """The lines the view shows now, oldest first."""
        return [text for entry in self.entries if (text := self._shown(entry)) is not None]

    @Slot(str)
    def add_line(self, line: str) -> None:
        """Read one line of the child's output and show it when the filter lets it through."""
        for part in line.rstrip("\n").split("\n"):
            entry = read_log_line(part, self._clock())
            self.entries.append(entry)
            shown = self._shown(entry)
            if shown is None:
                continue
            bar = self.text.verticalScrollBar()
            following = bar.value() >= bar.maximum() - 2
            self.text.appendPlainText(shown)
            self._keep_in_view(following)

    # -- actions ----------------------------------------------------------------------------

    @Slot()
    def copy(self) -> None:
        """Put the lines shown on the clipboard."""
        QGuiApplication.clipboard().setText("\n".join(self.shown_lines()) + "\n")
        self.status.setText("Copied.")

    @Slot()
    def _on_save_clicked(self) -> None:
        path = self._ask_save_path(self)
        if path is not None:
            self.save_to(path)

    def save_to(self, path: Path) -> bool:
        """Write the lines shown to ``path``; says in the bar whether it worked."""
        try:
            write_atomically(path, "\n".join(self.shown_lines()) + "\n", mode=0o644)
        except OSError as exc:
            log.warning("gui.log_save_failed", error=f"{exc.__class__.__name__}: {exc}")
            self.status.setText(f"Could not save: {exc.strerror or exc}.")
            return False
        self.status.setText(f"Saved to {path.name}.")
        return True

    # -- drawing ----------------------------------------------------------------------------

    @Slot()
    def _redraw(self) -> None:
        details = self.details.isChecked()
        self.level_box.setEnabled(not details)  # the raw output is shown whole
        # Sentences wrap to the width; the raw output keeps its columns (the banner is ASCII art).
        self.text.setLineWrapMode(
            QPlainTextEdit.LineWrapMode.NoWrap if details else QPlainTextEdit.LineWrapMode.WidgetWidth
        )
        self.text.setFont(self._mono if details else QFont())
        self.text.setPlainText("\n".join(self.shown_lines()))
        self.status.clear()
        self._keep_in_view(True)

    def _keep_in_view(self, follow: bool) -> None:
        if follow:
            self.text.verticalScrollBar().setValue(self.text.verticalScrollBar().maximum())
        self.text.horizontalScrollBar().setValue(0)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        self._keep_in_view(True)


def _ask_save_path(parent: QWidget) -> Path | None:
    name, _ = QFileDialog.getSaveFileName(
        parent, "Save the log", str(Path.home() / "morag-worker-log.txt"), "Text files (*.txt)"
    )
    return Path(name) if name else None
