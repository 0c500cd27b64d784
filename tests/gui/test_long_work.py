"""Long work in the tray app (issue 11, points 7 and 11): what "Stop now", "Finish and pause",
Snooze and Resume do while tasks run, and what the person reads meanwhile.

The real supervisor on a fake child (``tests/gui/conftest.py``); the "Stop now?" question is
answered through ``StopNowDialog.ask``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pytestqt.qtbot import QtBot

from morag_worker.core.results import INPUT_PROBLEM, TaskOutcome
from morag_worker.core.supervisor.events import StopMode, WorkerState
from morag_worker.gui.dialogs import StopNowChoice, StopNowDialog
from morag_worker.gui.progress_text import lost_work
from morag_worker.gui.state_presentation import Moment, presentation
from morag_worker.gui.tray_app import TrayApp
from tests.gui.conftest import NOW, WAIT_MS, Harness, progress_of

pytestmark = pytest.mark.gui


def _status(app: TrayApp, qtbot: QtBot, match: Callable[[object], bool], act: Callable[[], object]) -> None:
    with qtbot.waitSignal(app.controller.state_changed, timeout=WAIT_MS, check_params_cb=match):
        act()


def _in(state: WorkerState, then: WorkerState | None = None) -> Callable[[object], bool]:
    def match(status: object) -> bool:
        wanted_then = then is None or getattr(status, "then", None) is then
        return getattr(status, "state", None) is state and wanted_then

    return match


def _header(app: TrayApp) -> tuple[str, str]:
    status = app.controller.status
    moment = Moment(status, list(app.controller.tasks.values()), NOW)
    return presentation(status.state).header(moment)


def _working(app: TrayApp, harness: Harness, qtbot: QtBot, *pages: tuple[str, int, int]) -> None:
    """Start, then run one PDF task per ``(task id, page, of pages)``."""
    _status(app, qtbot, _in(WorkerState.RUNNING), app.actions.start.trigger)
    for task_id, page, total in pages:
        with progress_of(app, qtbot, task_id):
            harness.child.progress(
                task_id,
                stage="PROCESSING",
                done=page,
                total=total,
                message=f"page {page} of {total}",
                filename="big.pdf",
            )


def test_lost_work_names_the_share_and_the_size() -> None:
    from morag_worker.core.supervisor.events import TaskProgress

    big = TaskProgress("t1", "PROCESSING", 1572, 4764, None, "page 1572 of 4764", "big.pdf")
    small = TaskProgress("t2", "PROCESSING", 4, 100, None, "page 4 of 100", "small.pdf")
    assert lost_work([big, small]) == ["33 % of big.pdf, a 4,764-page PDF, will be redone from the start."]
    assert lost_work([small]) == []


def test_stop_now_past_ten_percent_asks_first_and_cancel_keeps_working(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = started()
    _working(app, harness, qtbot, ("t1", 1572, 4764))
    asked: list[list[str]] = []

    def cancel(lost: list[str], parent: object = None) -> StopNowChoice | None:
        asked.append(lost)
        return None

    monkeypatch.setattr(StopNowDialog, "ask", cancel)
    app.actions.stop_now.trigger()
    assert asked == [["33 % of big.pdf, a 4,764-page PDF, will be redone from the start."]]
    assert harness.supervisor.calls_named("stop") == []
    assert app.controller.status.state is WorkerState.RUNNING

    # "Finish, then pause" in the question finishes instead of dropping the work.
    monkeypatch.setattr(StopNowDialog, "ask", lambda lost, parent=None: StopNowChoice.FINISH)
    _status(app, qtbot, _in(WorkerState.FINISHING), app.actions.stop_now.trigger)
    assert harness.supervisor.calls_named("stop") == [StopMode.FINISH]

    monkeypatch.setattr(StopNowDialog, "ask", lambda lost, parent=None: StopNowChoice.STOP_NOW)
    _status(app, qtbot, _in(WorkerState.STOPPED), app.actions.stop_now.trigger)
    assert harness.supervisor.calls_named("stop") == [StopMode.FINISH, StopMode.NOW]


def test_stop_now_early_in_a_task_does_not_ask(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = started()
    _working(app, harness, qtbot, ("t1", 40, 4764))

    def never(lost: list[str], parent: object = None) -> StopNowChoice | None:
        raise AssertionError("asked although under 10 % would be lost")

    monkeypatch.setattr(StopNowDialog, "ask", never)
    _status(app, qtbot, _in(WorkerState.STOPPED), app.actions.stop_now.trigger)


def test_finish_and_pause_can_be_undone_and_ends_in_paused(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started()
    _working(app, harness, qtbot, ("t1", 10, 100), ("t2", 20, 100))
    _status(app, qtbot, _in(WorkerState.FINISHING), app.actions.finish.trigger)
    assert _header(app)[0] == "Finishing 2 tasks"  # not "the current task" while two run
    assert "pauses" in _header(app)[1]
    assert app.actions.start.isEnabled() and app.actions.start.text() == "Resume"

    # Resume while finishing: the tasks finish, and the worker then starts again by itself.
    _status(app, qtbot, _in(WorkerState.FINISHING, WorkerState.STARTING), app.actions.start.trigger)
    assert "restarts" in _header(app)[1]
    assert not app.actions.start.isEnabled() and app.actions.finish.isEnabled()
    first = harness.child
    with qtbot.waitSignal(app.controller.task_finished, timeout=WAIT_MS):
        first.end_task("t1")
    _status(app, qtbot, _in(WorkerState.RUNNING), lambda: first.end_task("t2"))
    assert harness.child is not first  # a new child: the worker works again

    # Finish and pause without undoing it ends in "Paused", not "Stopped".
    _status(app, qtbot, _in(WorkerState.STOPPED), app.actions.finish.trigger)
    assert _header(app)[0] == "Paused"
    assert app.tray is not None and "Paused" in app.tray.toolTip()


def test_a_snooze_chosen_mid_task_shows_at_once_and_can_be_undone(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started()
    _working(app, harness, qtbot, ("t1", 10, 100))
    _status(app, qtbot, _in(WorkerState.FINISHING, WorkerState.SNOOZED), app.actions.snooze_30.trigger)
    title, detail = _header(app)
    assert title == "Finishing the current task" and "snoozes until" in detail
    # A snooze chosen while already finishing is shown at once too.
    _status(app, qtbot, _in(WorkerState.FINISHING, WorkerState.STOPPED), app.actions.finish.trigger)
    _status(app, qtbot, _in(WorkerState.FINISHING, WorkerState.SNOOZED), app.actions.snooze_resume.trigger)
    assert "until you resume" in _header(app)[1]
    _status(app, qtbot, _in(WorkerState.FINISHING, WorkerState.STARTING), app.actions.start.trigger)
    _status(app, qtbot, _in(WorkerState.RUNNING), lambda: harness.child.end_task("t1"))


def test_a_restart_says_it_restarts(started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot) -> None:
    app = started()
    _working(app, harness, qtbot, ("t1", 10, 100))
    _status(app, qtbot, _in(WorkerState.FINISHING, WorkerState.STARTING), app.controller.restart)
    title, detail = _header(app)
    assert "restarts" in detail and "pauses" not in detail
    assert app.tray is not None and "restarting" in app.tray.toolTip()


def test_an_uploaders_broken_file_is_in_history_but_no_balloon(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started()
    _working(app, harness, qtbot)
    child = harness.child
    child.start_task("t9", "broken.pdf")
    with qtbot.waitSignal(app.controller.task_finished, timeout=WAIT_MS) as finished:
        child.send(
            "task_end",
            task_id="t9",
            outcome=TaskOutcome.FAILED.value,
            error="the PDF file is damaged or not a PDF file (the PDF data ends too early or is garbled)",
            metadata={INPUT_PROBLEM: True},
        )
    assert finished.args is not None and finished.args[0].outcome is TaskOutcome.FAILED
    assert app.notices == []
    qtbot.waitUntil(lambda: app.history_model.rowCount() == 1, timeout=WAIT_MS)


class _HungHub:
    """A hub client factory whose queue-info hangs until released (a hub that never answers)."""

    def __init__(self) -> None:
        import threading

        from tests.fakes import queue_info

        self.release = threading.Event()
        self.asked = threading.Event()
        self._info = queue_info("alice")

    def __call__(self, hub_url: str, api_key: str) -> _HungHub:
        return self

    def queue_info(self) -> object:
        self.asked.set()
        self.release.wait(30)
        return self._info

    def close(self) -> None:
        pass


def test_the_starts_hub_wait_can_be_cancelled(harness: Harness, qtbot: QtBot) -> None:
    hung = _HungHub()
    harness.hub = hung  # type: ignore[assignment]
    harness.store_key()
    app = harness.build()
    with qtbot.waitSignal(app.ready, timeout=WAIT_MS):
        app.start()
    try:
        _status(app, qtbot, _in(WorkerState.STARTING), app.actions.start.trigger)
        qtbot.waitUntil(hung.asked.is_set, timeout=WAIT_MS)
        assert app.controller.status.message == "Connecting to the hub at http://127.0.0.1:8700"
        assert app.actions.stop_now.isEnabled()
        assert _header(app) == (
            "Connecting…",
            "Connecting to the hub at http://127.0.0.1:8700. Choose Stop now to stop waiting.",
        )
        _status(app, qtbot, _in(WorkerState.STOPPED), app.actions.stop_now.trigger)  # at once, hub or not
    finally:
        hung.release.set()
    for thread in list(harness.supervisor._machine.prepare_threads):
        thread.join(timeout=10)  # the late answer is in; the machine drops it
    assert harness.launcher.children == [] and app.controller.status.state is WorkerState.STOPPED
