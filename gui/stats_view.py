"""The window's "Contribution" tab: what this machine gave, its GPU, and the history as CSV.

``ContributionView`` only shows what it is handed: ``set_stats`` (from
``HistoryStore.stats``, computed in core) and ``set_gpus`` (from the GPU probe). It asks for
fresh GPU readings every few seconds while it is on screen (``gpu_refresh_wanted``) and never
when hidden, so an idle tray app does no NVML calls. Export is a request
(``export_requested``); ``TrayApp`` asks for the file and writes it in the background.
``stats_cells`` and ``gpu_lines`` are pure, for tests and any other view.

GUI thread only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from morag_worker.core.config.contribution import ContributionStats, Totals
from morag_worker.core.supervisor.gpu import GpuInfo

from .qt_emit import emit

__all__ = ["GPU_REFRESH_MS", "ContributionView", "ExportPathDialog", "gpu_lines", "stats_cells"]

#: How often GPU readings are refreshed while the tab is on screen.
GPU_REFRESH_MS = 5000
_ROWS = ("This week", "All time")
_COLUMNS = ("Tasks", "Hours", "Megabytes")


def _number(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}"


def stats_cells(totals: Totals) -> tuple[str, str, str]:
    """``("12", "3.5", "140.2")``: tasks, hours and megabytes as the table shows them; pure."""
    return _number(totals.tasks, 0), _number(totals.hours, 1), _number(totals.megabytes, 1)


def gpu_lines(gpus: Sequence[GpuInfo]) -> list[str]:
    """One sentence per GPU: name, temperature, utilisation, free memory; what is unknown is left out."""
    lines = []
    for gpu in gpus:
        parts = [gpu.name]
        if gpu.temperature_c is not None:
            parts.append(f"{gpu.temperature_c} °C")
        if gpu.utilization_percent is not None:
            parts.append(f"{gpu.utilization_percent} % busy")
        free = gpu.memory_free_mb
        if free is not None:
            parts.append(f"{free / 1024:,.1f} GiB free of {gpu.memory_total_mb / 1024:,.1f} GiB")
        else:
            parts.append(f"{gpu.memory_total_mb / 1024:,.1f} GiB")
        lines.append(" · ".join(parts))
    return lines


class ContributionView(QWidget):
    """Totals this week and all time, the GPU (only when there is one), and "Export history…"."""

    #: The user asked to save the history as CSV.
    export_requested = Signal()
    #: The tab is on screen and its GPU readings are due for a refresh.
    gpu_refresh_wanted = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.cells: dict[tuple[int, int], QLabel] = {}
        totals = QGroupBox("Your contribution")
        grid = QGridLayout(totals)
        grid.setHorizontalSpacing(24)
        for column, name in enumerate(_COLUMNS, start=1):
            header = QLabel(name)
            header.setObjectName("muted")
            header.setAlignment(Qt.AlignmentFlag.AlignRight)
            grid.addWidget(header, 0, column)
        for row, name in enumerate(_ROWS, start=1):
            grid.addWidget(QLabel(name), row, 0)
            for column in range(1, len(_COLUMNS) + 1):
                cell = QLabel("–")
                cell.setAlignment(Qt.AlignmentFlag.AlignRight)
                cell.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
                grid.addWidget(cell, row, column)
                self.cells[(row - 1, column - 1)] = cell
        grid.setColumnStretch(0, 1)
        self.explanation = QLabel(
            "Tasks and megabytes count the tasks that finished with a result; hours count the time "
            "spent on every task."
        )
        self.explanation.setObjectName("muted")
        self.explanation.setWordWrap(True)
        grid.addWidget(self.explanation, len(_ROWS) + 1, 0, 1, len(_COLUMNS) + 1)

        self.gpu_box = QGroupBox("Graphics card")
        self.gpu_label = QLabel()
        self.gpu_label.setWordWrap(True)
        self.gpu_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        QVBoxLayout(self.gpu_box).addWidget(self.gpu_label)
        self.gpu_box.hide()

        self.export_button = QPushButton("Export history as CSV…")
        self.export_button.setToolTip("Save every task in the history to a CSV file")
        self.export_button.clicked.connect(lambda: emit(self.export_requested))
        buttons = QHBoxLayout()
        buttons.addWidget(self.export_button)
        buttons.addStretch(1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(totals)
        layout.addWidget(self.gpu_box)
        layout.addLayout(buttons)
        layout.addStretch(1)

        self._gpu_timer = QTimer(self)
        self._gpu_timer.setInterval(GPU_REFRESH_MS)
        self._gpu_timer.timeout.connect(lambda: emit(self.gpu_refresh_wanted))

    @property
    def polling_gpus(self) -> bool:
        return self._gpu_timer.isActive()

    def set_stats(self, stats: ContributionStats) -> None:
        for row, totals in enumerate((stats.this_week, stats.all_time)):
            for column, text in enumerate(stats_cells(totals)):
                self.cells[(row, column)].setText(text)

    def set_gpus(self, gpus: Sequence[GpuInfo]) -> None:
        """Show ``gpus``; with none, the GPU box disappears (nothing to say without NVML)."""
        lines = gpu_lines(gpus)
        self.gpu_label.setText("\n".join(lines))
        self.gpu_box.setVisible(bool(lines))

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._gpu_timer.start()
        emit(self.gpu_refresh_wanted)

    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        self._gpu_timer.stop()


class ExportPathDialog:
    """Asks where to save the CSV; tests answer with ``monkeypatch.setattr(ExportPathDialog, "ask", ...)``."""

    @classmethod
    def ask(cls, suggested: Path, parent: QWidget | None = None) -> Path | None:
        """The chosen file (``.csv`` added when the name has no suffix); None when cancelled."""
        name, _filter = QFileDialog.getSaveFileName(
            parent, "Export history", str(suggested), "CSV files (*.csv);;All files (*)"
        )
        if not name:
            return None
        path = Path(name)
        return path if path.suffix else path.with_suffix(".csv")
