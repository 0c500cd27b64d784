"""The history of finished tasks as a table (time, input, outcome, duration) with a details pane.

``HistoryModel`` holds ``TaskRecord``s newest first; ``HistoryView`` shows them and, for the
selected row, the task's details and error message. Persistence is not here: ``TrayApp``
loads and appends through ``core.history.HistoryStore`` in the background.

GUI thread only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from morag_worker.core.results import TaskOutcome, TaskRecord
from morag_worker.core.units import human_duration

from .format import clock_time
from .qt_emit import emit

__all__ = ["OUTCOME_TEXT", "HistoryModel", "HistoryView", "record_details"]

OUTCOME_TEXT = {
    TaskOutcome.SUCCEEDED: "Done",
    TaskOutcome.FAILED: "Failed",
    TaskOutcome.REQUEUED: "Handed back",
}
_OUTCOME_COLOUR = {
    TaskOutcome.SUCCEEDED: "#1e8449",
    TaskOutcome.FAILED: "#c0392b",
    TaskOutcome.REQUEUED: "#7f8c8d",
}
_COLUMNS = ("Finished", "Input", "Outcome", "Duration")
_Index = QModelIndex | QPersistentModelIndex


def record_details(record: TaskRecord) -> str:
    """The details pane text for ``record``; pure."""
    lines = [f"{record.filename or record.task_id}: {OUTCOME_TEXT[record.outcome]}"]
    if record.error:
        lines += [f"Error: {record.error}"]
    lines += [
        "",
        f"Duration: {human_duration(record.duration_s)}",
        "Started: " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started_at)),
        "Finished: " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.finished_at)),
        f"Task id: {record.task_id}",
    ]
    if record.metadata:
        lines += ["", "Details:", json.dumps(record.metadata, indent=2, ensure_ascii=False, default=str)]
    return "\n".join(lines)


class HistoryModel(QAbstractTableModel):
    """Task records, newest first, at most ``limit`` of them."""

    def __init__(
        self, *, limit: int = 500, clock: Callable[[], float] = time.time, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self._records: list[TaskRecord] = []
        self._limit = limit
        self._clock = clock

    def records(self) -> list[TaskRecord]:
        return list(self._records)

    def set_records(self, records: Sequence[TaskRecord]) -> None:
        """Replace the rows (``records`` newest first), keeping any added since in front."""
        known = {r.task_id: r for r in self._records}
        merged = list(self._records) + [r for r in records if r.task_id not in known]
        merged.sort(key=lambda r: r.finished_at, reverse=True)
        self.beginResetModel()
        self._records = merged[: self._limit]
        self.endResetModel()

    def add(self, record: TaskRecord) -> None:
        """Insert ``record`` at the top."""
        self.beginInsertRows(QModelIndex(), 0, 0)
        self._records.insert(0, record)
        self.endInsertRows()
        if len(self._records) > self._limit:
            last = len(self._records) - 1
            self.beginRemoveRows(QModelIndex(), self._limit, last)
            del self._records[self._limit :]
            self.endRemoveRows()

    def record_at(self, row: int) -> TaskRecord | None:
        return self._records[row] if 0 <= row < len(self._records) else None

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008 (Qt's signature)
        return 0 if parent.isValid() else len(self._records)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008 (Qt's signature)
        return 0 if parent.isValid() else len(_COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return _COLUMNS[section]
        return None

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        record = self.record_at(index.row())
        if record is None:
            return None
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return clock_time(record.finished_at, self._clock())
            if column == 1:
                return record.filename or record.task_id
            if column == 2:
                return OUTCOME_TEXT[record.outcome]
            return human_duration(record.duration_s)
        if role == Qt.ItemDataRole.ForegroundRole and column == 2:
            return QColor(_OUTCOME_COLOUR[record.outcome])
        if role == Qt.ItemDataRole.ToolTipRole:
            return record.error or None
        if role == Qt.ItemDataRole.TextAlignmentRole and column == 3:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class HistoryView(QWidget):
    """The history table and, below it, the selected task's details and "Export as CSV…"."""

    #: The user asked to save the history as CSV (``TrayApp`` asks where and writes it).
    export_requested = Signal()

    def __init__(self, model: HistoryModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.table = QTableView()
        self.table.setModel(model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(24)
        header = self.table.horizontalHeader()
        header.setHighlightSections(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.ResizeToContents)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setPlaceholderText("Select a task to see its details and any error message.")
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.TypeWriter)
        self.details.setFont(mono)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.details)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([240, 160])
        self.export_button = QPushButton("Export as CSV…")
        self.export_button.setToolTip("Save every task in the history to a CSV file")
        self.export_button.clicked.connect(lambda: emit(self.export_requested))
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 4, 0, 0)
        buttons.addStretch(1)
        buttons.addWidget(self.export_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)
        layout.addLayout(buttons)
        self.table.selectionModel().currentRowChanged.connect(self._show_details)
        model.modelReset.connect(self._clear_details)

    def select_row(self, row: int) -> None:
        """Select ``row`` (as a click does) and show its details."""
        self.table.selectRow(row)

    def _show_details(self, current: QModelIndex, _previous: QModelIndex) -> None:
        record = self.model.record_at(current.row())
        self.details.setPlainText(record_details(record) if record else "")

    def _clear_details(self) -> None:
        self.details.clear()
