"""Quitting: during a task the app asks (finish first, or hand back now) and honours the answer."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QMessageBox, QWidget
from pytestqt.qtbot import QtBot

from morag_worker.core.results import TaskOutcome
from morag_worker.core.supervisor.events import StopMode, WorkerState
from morag_worker.gui.dialogs import QuitChoice, QuitDialog
from morag_worker.gui.qt_emit import emit
from morag_worker.gui.tray_app import TrayApp
from tests.gui.conftest import WAIT_MS, Harness, progress_of

pytestmark = pytest.mark.gui


class Answers:
    """Answers QuitDialog.ask and records that it was asked."""

    def __init__(self, choice: QuitChoice | None) -> None:
        self.choice = choice
        self.asked: list[int] = []

    def __call__(self, task_count: int, parent: QWidget | None = None) -> QuitChoice | None:
        self.asked.append(task_count)
        return self.choice


def _working(app: TrayApp, harness: Harness, qtbot: QtBot) -> None:
    with qtbot.waitSignal(
        app.controller.state_changed,
        timeout=WAIT_MS,
        check_params_cb=lambda s: s.state is WorkerState.RUNNING,
    ):
        app.actions.start.trigger()
    with progress_of(app, qtbot):
        harness.child.progress("t1", done=10, total=100, percent=10.0)


def test_quit_when_idle_does_not_ask(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = Answers(QuitChoice.FINISH_FIRST)
    monkeypatch.setattr(QuitDialog, "ask", answers)
    app = started()
    with qtbot.waitSignal(app.finished, timeout=WAIT_MS):
        app.actions.quit.trigger()
    assert answers.asked == []
    assert harness.supervisor.calls == [("close", None)]


def test_quit_during_a_task_and_finish_it_first(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = Answers(QuitChoice.FINISH_FIRST)
    monkeypatch.setattr(QuitDialog, "ask", answers)
    app = started()
    _working(app, harness, qtbot)
    finished: list[bool] = []
    app.finished.connect(lambda: finished.append(True))
    with qtbot.waitSignal(
        app.controller.state_changed,
        timeout=WAIT_MS,
        check_params_cb=lambda s: s.state is WorkerState.FINISHING,
    ):
        app.actions.quit.trigger()
    assert answers.asked == [1]
    assert harness.supervisor.calls_named("stop") == [StopMode.FINISH]
    assert not finished and app.controller.busy
    assert app.notices[-1].title == "MoRAG Worker will quit soon"
    assert not app.actions.start.isEnabled()  # Resume would keep the app from quitting
    with qtbot.waitSignal(app.finished, timeout=WAIT_MS):
        harness.child.end_task("t1", TaskOutcome.SUCCEEDED)  # the finishing child then exits
    assert harness.supervisor.calls[-1] == ("close", None)
    assert [r.outcome for r in app.history_model.records()] == [TaskOutcome.SUCCEEDED]


def test_quit_during_a_task_and_hand_it_back(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = Answers(QuitChoice.HAND_BACK)
    monkeypatch.setattr(QuitDialog, "ask", answers)
    app = started()
    _working(app, harness, qtbot)
    with qtbot.waitSignal(app.finished, timeout=WAIT_MS):
        app.actions.quit.trigger()
    assert answers.asked == [1]
    assert harness.supervisor.calls_named("stop") == [StopMode.NOW]
    assert harness.supervisor.calls[-1] == ("close", None)
    assert [r.outcome for r in app.history_model.records()] == [TaskOutcome.REQUEUED]
    assert all("handed back" not in n.title for n in app.notices)  # the user asked for it


def test_quit_cancelled_keeps_working(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = Answers(None)
    monkeypatch.setattr(QuitDialog, "ask", answers)
    app = started()
    _working(app, harness, qtbot)
    app.actions.quit.trigger()
    assert answers.asked == [1]
    assert harness.supervisor.calls_named("stop") == [] and not app.controller.quitting
    assert app.controller.busy


def test_quit_dialog_buttons_map_to_choices(qtbot: QtBot) -> None:
    dialog = QuitDialog(2)
    qtbot.addWidget(dialog)
    assert "2 tasks are still running" in dialog.text()
    dialog.show()
    with qtbot.waitSignal(dialog.finished, timeout=WAIT_MS):
        dialog.hand_back_button.click()
    assert dialog.choice() is QuitChoice.HAND_BACK
    other = QuitDialog(1)
    qtbot.addWidget(other)
    other.show()
    with qtbot.waitSignal(other.finished, timeout=WAIT_MS):
        other.finish_button.click()
    assert other.choice() is QuitChoice.FINISH_FIRST
    assert isinstance(other, QMessageBox)


def test_emit_keeps_true_alive(qtbot: QtBot) -> None:
    class Probe(QObject):
        ping = Signal()

    probe = Probe()
    before = sys.getrefcount(True)
    for _ in range(2000):
        emit(probe.ping)
    assert sys.getrefcount(True) >= before - 5
