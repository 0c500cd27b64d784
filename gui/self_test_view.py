"""The self-test in the tray app: the offer after the first run's Save, and the results box.

Both are non-modal message boxes that delete themselves on close, so nothing waits on them; the
self-test itself runs through ``WorkerController.run_self_test``. GUI thread only.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QMessageBox, QPushButton, QWidget

from morag_worker.core.diagnosis.report import SelfTestReport, render_text

__all__ = ["self_test_offer", "self_test_results"]


def self_test_offer(parent: QWidget | None = None) -> tuple[QMessageBox, QPushButton]:
    """The offer, not yet shown; its "Run the self-test" button is returned for the caller to connect."""
    box = QMessageBox(parent)
    box.setWindowTitle("Run a self-test?")
    box.setIcon(QMessageBox.Icon.Question)
    box.setText("Check that everything a worker needs works on this computer?")
    box.setInformativeText(
        "The self-test checks the keychain, the hub, the broker login, a small conversion, "
        "transcription and the GPU, and says what to do about anything that does not work. "
        "It takes a few seconds; the same check is `morag-worker self-test`."
    )
    run = box.addButton("Run the self-test", QMessageBox.ButtonRole.AcceptRole)
    box.addButton("Not now", QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(run)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setModal(False)
    return box, run


def self_test_results(report: SelfTestReport, parent: QWidget | None = None) -> QMessageBox:
    """The report as the terminal shows it, in a box (shown by the caller)."""
    box = QMessageBox(parent)
    box.setWindowTitle("Self-test")
    box.setIcon(QMessageBox.Icon.Information if report.ok else QMessageBox.Icon.Warning)
    box.setText(
        "Everything a worker needs works."
        if report.ok
        else "Something needs fixing: " + ", ".join(check.title for check in report.failed) + "."
    )
    box.setInformativeText(render_text(report))
    box.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
    box.setTextInteractionFlags(
        Qt.TextInteractionFlag.TextSelectableByMouse | Qt.TextInteractionFlag.TextSelectableByKeyboard
    )
    box.addButton(QMessageBox.StandardButton.Close)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setModal(False)
    return box
