"""The controller on the real supervisor (fake launcher, hub and clock) and the background helper."""

from __future__ import annotations

import threading

import pytest
from PySide6.QtCore import QObject, QThread
from pytestqt.qtbot import QtBot

from morag_worker.core.config.credentials import CredentialStore
from morag_worker.core.config.settings import SettingsStore
from morag_worker.core.results import TaskOutcome
from morag_worker.core.supervisor.events import StopMode, WorkerState
from morag_worker.gui import controller as controller_module
from morag_worker.gui.background import BackgroundOp, BackgroundRunner
from morag_worker.gui.controller import WorkerController
from tests.fakes import FakeSupervisor
from tests.gui.conftest import NOW, WAIT_MS, Harness, RecordedSupervisor

pytestmark = pytest.mark.gui


def _controller(harness: Harness) -> tuple[WorkerController, RecordedSupervisor]:
    """A controller on the real supervisor (fake launcher, hub and clock), with a stored key."""
    harness.store_key()
    factory = harness.supervisor_factory(
        SettingsStore(harness.tmp / "config"), CredentialStore(harness.keyring)
    )
    controller = WorkerController(factory, clock=harness.clock.time)
    return controller, harness.supervisor


def _running(controller: WorkerController, qtbot: QtBot) -> None:
    with qtbot.waitSignal(
        controller.state_changed, timeout=WAIT_MS, check_params_cb=lambda s: s.state is WorkerState.RUNNING
    ):
        controller.start()


def _progress(controller: WorkerController, qtbot: QtBot, harness: Harness) -> None:
    with qtbot.waitSignal(
        controller.task_progress, timeout=WAIT_MS, check_params_cb=lambda p: p.stage == "DOWNLOADING"
    ):
        harness.child.progress("t1", done=5, total=10)


def test_supervisor_events_arrive_as_signals_on_the_gui_thread(harness: Harness, qtbot: QtBot) -> None:
    controller, _supervisor = _controller(harness)
    gui_thread = QThread.currentThread()
    seen: list[tuple[str, bool]] = []
    controller.state_changed.connect(lambda s: seen.append(("status", QThread.currentThread() is gui_thread)))
    controller.task_progress.connect(
        lambda p: seen.append(("progress", QThread.currentThread() is gui_thread))
    )
    controller.task_finished.connect(
        lambda r: seen.append(("finished", QThread.currentThread() is gui_thread))
    )
    controller.log_line.connect(lambda line: seen.append(("log", QThread.currentThread() is gui_thread)))

    caller = threading.get_ident()
    _running(controller, qtbot)
    child = harness.child
    with qtbot.waitSignal(controller.log_line, timeout=WAIT_MS):
        child.progress("t1", done=10, total=100, percent=10.0)
        child.end_task("t1")
        child.output("worker.ready")
    assert threading.get_ident() == caller
    assert all(on_gui_thread for _, on_gui_thread in seen)
    kinds = [kind for kind, _ in seen]
    assert kinds.index("progress") < kinds.index("finished") < kinds.index("log")
    assert controller.status.state is WorkerState.RUNNING and not controller.busy


def test_requests_reach_the_supervisor_in_order(harness: Harness, qtbot: QtBot) -> None:
    controller, supervisor = _controller(harness)
    controller.start()
    controller.finish()
    controller.stop_now()
    controller.snooze_for(1800)
    controller.snooze(None)
    expected = [
        ("start", None),
        ("stop", StopMode.FINISH),
        ("stop", StopMode.NOW),
        ("snooze", NOW + 1800),
        ("snooze", None),
    ]
    qtbot.waitUntil(lambda: supervisor.calls == expected, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: controller.status.state is WorkerState.SNOOZED, timeout=WAIT_MS)


def test_a_failing_request_becomes_failed_with_a_sentence(qtbot: QtBot) -> None:
    # The real supervisor's requests only queue an event and never raise; this guards against a
    # broken one, so a stand-in that raises is the only way to reach it.
    made: list[FakeSupervisor] = []

    def factory(listener: object) -> FakeSupervisor:
        made.append(FakeSupervisor(listener))  # type: ignore[arg-type]
        return made[-1]

    controller = WorkerController(factory, clock=lambda: NOW)
    made[0].errors["start"] = RuntimeError("the hub refused the key")
    with qtbot.waitSignal(controller.failed, timeout=WAIT_MS) as blocker:
        controller.start()
    assert blocker.args == ["Could not start the worker: the hub refused the key."]


def test_quit_when_idle_closes_without_stopping(harness: Harness, qtbot: QtBot) -> None:
    controller, supervisor = _controller(harness)
    with qtbot.waitSignal(controller.closed, timeout=WAIT_MS):
        controller.quit()
    assert supervisor.calls == [("close", None)]


def test_quit_hand_back_stops_now_then_closes(harness: Harness, qtbot: QtBot) -> None:
    controller, supervisor = _controller(harness)
    _running(controller, qtbot)
    _progress(controller, qtbot, harness)
    finished: list[TaskOutcome] = []
    controller.task_finished.connect(lambda r: finished.append(r.outcome))
    with qtbot.waitSignal(controller.closed, timeout=WAIT_MS):
        controller.quit(StopMode.NOW)
    assert supervisor.calls == [("start", None), ("stop", StopMode.NOW), ("close", None)]
    assert finished == [TaskOutcome.REQUEUED]


def test_quit_finish_first_waits_for_the_task(harness: Harness, qtbot: QtBot) -> None:
    controller, supervisor = _controller(harness)
    _running(controller, qtbot)
    _progress(controller, qtbot, harness)
    closed: list[bool] = []
    controller.closed.connect(lambda: closed.append(True))
    with qtbot.waitSignal(
        controller.state_changed, timeout=WAIT_MS, check_params_cb=lambda s: s.state is WorkerState.FINISHING
    ):
        controller.quit(StopMode.FINISH)
    assert not closed and supervisor.calls_named("close") == []
    with qtbot.waitSignal(controller.closed, timeout=WAIT_MS):
        harness.child.end_task("t1")  # the finishing child then exits
    assert supervisor.calls == [("start", None), ("stop", StopMode.FINISH), ("close", None)]


def test_hand_back_that_hangs_escalates_to_kill(
    harness: Harness, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controller_module, "HAND_BACK_DEADLINE_MS", 50)
    controller, supervisor = _controller(harness)
    _running(controller, qtbot)
    harness.child.obeys.discard(StopMode.NOW)  # the child does not hand back
    with qtbot.waitSignal(controller.closed, timeout=WAIT_MS):
        controller.quit(StopMode.NOW)
    assert supervisor.calls == [
        ("start", None),
        ("stop", StopMode.NOW),
        ("stop", StopMode.KILL),
        ("close", None),
    ]
    assert harness.child.controls == [StopMode.NOW, StopMode.KILL] and harness.child.code == -9


def test_background_op_delivers_success_and_failure_on_the_gui_thread(qtbot: QtBot) -> None:
    runner = BackgroundRunner(max_threads=2)
    gui_thread = QThread.currentThread()
    results: list[object] = []

    def op() -> int:
        assert QThread.currentThread() is not gui_thread
        return 42

    def boom() -> int:
        raise ValueError("no")

    with qtbot.waitSignal(runner.idle, timeout=WAIT_MS):
        BackgroundOp(runner, op, lambda v: results.append((v, QThread.currentThread() is gui_thread))).run()
        BackgroundOp(runner, boom, results.append).failure(
            lambda exc: results.append((str(exc), QThread.currentThread() is gui_thread))
        ).run()
    assert len(results) == 2 and set(results) == {(42, True), ("no", True)}
    assert runner.pending == 0


def test_background_op_skips_callbacks_of_a_deleted_parent(qtbot: QtBot) -> None:
    runner = BackgroundRunner()
    parent = QObject()
    release = threading.Event()
    called: list[object] = []
    BackgroundOp(runner, lambda: release.wait(WAIT_MS / 1000), called.append, parent=parent).run()
    import shiboken6

    shiboken6.delete(parent)
    with qtbot.waitSignal(runner.idle, timeout=WAIT_MS):
        release.set()
    assert called == []
