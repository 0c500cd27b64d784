"""The tray icon: its menu reaches the worker; icon, tooltip and enabled actions follow the state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QApplication, QMenu, QMessageBox
from pytestqt.qtbot import QtBot

from morag_worker.core.hub_client import HubUnreachable, KeyRejected
from morag_worker.core.results import TaskOutcome
from morag_worker.core.supervisor.events import Problem, StopMode, WorkerState, WorkerStatus
from morag_worker.gui.icons import TrayLook
from morag_worker.gui.notifications import Level
from morag_worker.gui.tray_app import TrayApp
from morag_worker.gui.tray_icon import tray_tooltip
from tests.gui.conftest import NOW, WAIT_MS, Harness, progress_of

pytestmark = pytest.mark.gui

MENU_TEXTS = [
    "Start",
    "Finish current task and pause",
    "Stop now (the task goes back to the queue)",
    "Snooze",
    "",
    "Show progress",
    "Settings…",
    "Open log folder",
    "Sign out…",
    "",
    "About MoRAG Worker",
    "Quit",
]


def _menu_action(menu: QMenu, text: str) -> QAction:
    for action in menu.actions():
        if action.text() == text:
            return action
        if action.menu() is not None:
            sub = action.menu()
            assert isinstance(sub, QMenu)
            for child in sub.actions():
                if child.text() == text:
                    return child
    raise AssertionError(f"no menu item {text!r}; have {[a.text() for a in menu.actions()]}")


def _status(app: TrayApp, qtbot: QtBot, state: WorkerState, emit: Callable[[], object]) -> None:
    with qtbot.waitSignal(
        app.controller.state_changed, timeout=WAIT_MS, check_params_cb=lambda s: s.state is state
    ):
        emit()


def test_menu_has_every_item_in_order(started: Callable[..., TrayApp]) -> None:
    app = started()
    assert app.tray is not None
    status_line, separator, *commands = app.tray.menu.actions()
    assert not status_line.isEnabled() and status_line.text()  # the state in words, not a command
    assert separator.isSeparator()
    assert [a.text() for a in commands if a.isVisible()] == MENU_TEXTS
    assert not app.actions.enter_key.isVisible()  # shown only while the key is the problem
    sub = app.actions.snooze_menu
    assert [a.text() for a in sub.actions()] == ["For 30 minutes", "For 1 hour", "Until I resume"]


def test_every_worker_menu_action_reaches_the_supervisor(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started()
    assert app.tray is not None
    menu = app.tray.menu
    supervisor = harness.supervisor

    _status(app, qtbot, WorkerState.RUNNING, _menu_action(menu, "Start").trigger)
    assert supervisor.calls == [("start", None)]

    _status(app, qtbot, WorkerState.SNOOZED, _menu_action(menu, "For 30 minutes").trigger)
    _status(app, qtbot, WorkerState.RUNNING, _menu_action(menu, "Resume").trigger)
    _status(app, qtbot, WorkerState.SNOOZED, _menu_action(menu, "For 1 hour").trigger)
    _status(app, qtbot, WorkerState.RUNNING, _menu_action(menu, "Resume").trigger)
    _status(app, qtbot, WorkerState.SNOOZED, _menu_action(menu, "Until I resume").trigger)
    assert supervisor.calls_named("snooze") == [NOW + 1800, NOW + 3600, None]

    _status(app, qtbot, WorkerState.RUNNING, _menu_action(menu, "Resume").trigger)
    _status(app, qtbot, WorkerState.STOPPED, _menu_action(menu, "Finish current task and pause").trigger)
    _status(app, qtbot, WorkerState.RUNNING, _menu_action(menu, "Start").trigger)
    _status(
        app,
        qtbot,
        WorkerState.STOPPED,
        _menu_action(menu, "Stop now (the task goes back to the queue)").trigger,
    )
    assert supervisor.calls_named("stop") == [StopMode.FINISH, StopMode.NOW]
    assert [name for name, _ in supervisor.calls] == [
        "start", "snooze", "start", "snooze", "start", "snooze", "start", "stop", "start", "stop"
    ]  # fmt: skip
    assert app.notices == []  # all of it was asked for


def test_app_menu_actions_open_windows_and_the_log_folder(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started()
    assert app.tray is not None
    menu = app.tray.menu
    _menu_action(menu, "Show progress").trigger()
    qtbot.waitUntil(app.window.isVisible, timeout=WAIT_MS)

    _menu_action(menu, "Settings…").trigger()
    assert app.settings_dialog is not None
    qtbot.waitUntil(app.settings_dialog.isVisible, timeout=WAIT_MS)
    app.settings_dialog.reject()
    qtbot.waitUntil(lambda: app.settings_dialog is None, timeout=WAIT_MS)

    _menu_action(menu, "Open log folder").trigger()
    qtbot.waitUntil(lambda: len(harness.opened) == 1, timeout=WAIT_MS)
    assert Path(harness.opened[0].toLocalFile()) == harness.tmp / "logs"
    assert (harness.tmp / "logs").is_dir()

    _menu_action(menu, "About MoRAG Worker").trigger()
    qtbot.waitUntil(
        lambda: any(
            isinstance(w, QMessageBox) and w.windowTitle() == "About MoRAG Worker" and w.isVisible()
            for w in QApplication.topLevelWidgets()
        ),
        timeout=WAIT_MS,
    )


def _stop_hanging(harness: Harness) -> None:
    harness.child.obeys.discard(StopMode.NOW)


def _ask(app: TrayApp, name: str) -> Callable[[], object]:
    return getattr(app.actions, name).trigger  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("state", "busy", "look", "tooltip", "enabled"),
    [
        (WorkerState.STOPPED, False, TrayLook.STOPPED, "Stopped", {"start", "snooze"}),
        (WorkerState.STARTING, False, TrayLook.CONNECTING, "Connecting…", {"finish", "stop_now", "snooze"}),
        (
            WorkerState.RUNNING,
            False,
            TrayLook.WAITING,
            "Waiting for work on gpu-tasks-alice, cpu-tasks-alice",
            {"finish", "stop_now", "snooze"},
        ),
        (
            WorkerState.RUNNING,
            True,
            TrayLook.WORKING,
            "Working on report.pdf: 42 %",
            {"finish", "stop_now", "snooze"},
        ),
        (
            WorkerState.FINISHING,
            True,
            TrayLook.FINISHING,
            "Finishing the current task, then pausing (42 %)",
            {"start", "stop_now", "snooze"},
        ),
        (WorkerState.STOPPING, False, TrayLook.FINISHING, "Stopping; the task goes back to the queue", set()),
        (WorkerState.SNOOZED, False, TrayLook.SNOOZED, "Snoozed until you resume", {"start", "snooze"}),
        (
            WorkerState.BACKOFF,
            False,
            TrayLook.ERROR,
            "Cannot connect; retrying at * The worker stopped unexpectedly (exit status 1); retrying in 1 s"
            " (attempt 2)",
            {"start", "stop_now", "snooze"},
        ),
        (
            WorkerState.CRASHED,
            False,
            TrayLook.ERROR,
            "API key refused",
            {"start", "snooze"},
        ),
    ],
)
def test_state_sets_icon_tooltip_and_enabled_actions(
    started: Callable[..., TrayApp],
    harness: Harness,
    qtbot: QtBot,
    state: WorkerState,
    busy: bool,
    look: TrayLook,
    tooltip: str,
    enabled: set[str],
) -> None:
    harness.auto = state is not WorkerState.STARTING
    app = started()
    tray = app.tray
    assert tray is not None
    before = tray.icon().cacheKey()
    # Each state is reached the way the real supervisor reaches it.
    if state is WorkerState.STARTING:
        _status(app, qtbot, state, _ask(app, "start"))
        qtbot.waitUntil(lambda: len(harness.launcher.children) == 1, timeout=WAIT_MS)
    else:
        _status(app, qtbot, WorkerState.RUNNING, _ask(app, "start"))
    if busy:
        with progress_of(app, qtbot):
            harness.child.progress("t1", done=42, total=100, percent=42.0)
    if state is WorkerState.STOPPED:
        _status(app, qtbot, state, _ask(app, "stop_now"))
    elif state is WorkerState.FINISHING:
        _status(app, qtbot, state, _ask(app, "finish"))
    elif state is WorkerState.STOPPING:
        _stop_hanging(harness)
        _status(app, qtbot, state, _ask(app, "stop_now"))
    elif state is WorkerState.SNOOZED:
        _status(app, qtbot, state, app.actions.snooze_resume.trigger)
    elif state is WorkerState.BACKOFF:
        _status(app, qtbot, state, lambda: harness.child.exit(1))
    elif state is WorkerState.CRASHED:
        harness.fail_hub(KeyRejected("the hub refused the key"))
        _status(app, qtbot, WorkerState.BACKOFF, lambda: harness.child.exit(1))
        _status(app, qtbot, state, lambda: harness.advance(1))
    assert tray.look is look
    head, _, tail = f"MoRAG Worker: {tooltip}".partition("*")
    assert tray.toolTip().startswith(head) and tray.toolTip().endswith(tail)
    assert app.actions.enabled_worker_actions() == enabled
    assert not tray.icon().isNull()
    if look is not TrayLook.STOPPED:
        assert tray.icon().cacheKey() != before
    # The window's header shows the same state.
    assert app.window.header.buttons["start"].isEnabled() == ("start" in enabled)


def test_tooltips_for_times_and_many_tasks() -> None:
    snoozed = WorkerStatus(WorkerState.SNOOZED, snoozed_until=NOW + 1800)
    assert tray_tooltip(snoozed, [], NOW).startswith("MoRAG Worker: Snoozed until ")
    from morag_worker.core.supervisor.events import TaskProgress

    tasks = [TaskProgress("a", "PROCESSING", 1, 4, 25.0), TaskProgress("b", "DOWNLOADING", 3, 4, 75.0)]
    assert (
        tray_tooltip(WorkerStatus(WorkerState.RUNNING), tasks, NOW)
        == "MoRAG Worker: Working on 2 tasks: 50 %"
    )
    long = tray_tooltip(WorkerStatus(WorkerState.CRASHED, "x" * 300), [], NOW)
    assert len(long) == 127 and long.endswith("…")


def test_unrequested_changes_and_failures_notify_successes_do_not(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started()
    assert app.tray is not None
    app.tray.messageClicked.connect(lambda: None)
    _status(app, qtbot, WorkerState.RUNNING, app.actions.start.trigger)
    child = harness.child
    with progress_of(app, qtbot):
        child.progress("t1", done=1, total=2, filename="ok.pdf")
    with qtbot.waitSignal(app.controller.task_finished, timeout=WAIT_MS):
        child.end_task("t1", TaskOutcome.SUCCEEDED)
    assert app.notices == []

    with qtbot.waitSignal(app.controller.task_finished, timeout=WAIT_MS):
        child.end_task("t2", TaskOutcome.FAILED, error="corrupt PDF", filename="bad.pdf")
    assert [(n.title, n.level) for n in app.notices] == [("Task failed: bad.pdf", Level.WARNING)]
    assert app.notices[-1].message == "corrupt PDF"

    # The child dies, and the hub is unreachable for the first retry: one outage, one notice.
    harness.fail_hub(HubUnreachable("hub unreachable"))
    _status(app, qtbot, WorkerState.BACKOFF, lambda: child.exit(1))
    _status(app, qtbot, WorkerState.BACKOFF, lambda: harness.advance(1))  # retry 1: the hub is down
    assert harness.supervisor.status.problem is Problem.HUB_UNREACHABLE
    harness.heal_hub()
    _status(app, qtbot, WorkerState.RUNNING, lambda: harness.advance(2))  # retry 2: a new child
    titles = [n.title for n in app.notices[1:]]
    assert titles == ["MoRAG Worker cannot connect", "MoRAG Worker is connected again"]  # one per outage

    # The key is revoked: the next start ends in CRASHED with KEY_REJECTED, even though it was asked.
    _status(app, qtbot, WorkerState.STOPPED, app.actions.stop_now.trigger)
    harness.fail_hub(KeyRejected("the hub rejected the API key (unknown, revoked or expired)"))
    _status(app, qtbot, WorkerState.CRASHED, app.actions.start.trigger)
    crash = app.notices[-1]
    assert crash.title == "MoRAG Worker stopped: API key refused" and crash.level is Level.ERROR
    assert "revoked" in crash.message and "Enter key…" in crash.message
    assert "login" not in crash.message and "--" not in crash.message
    assert len(app.notices) == 4
