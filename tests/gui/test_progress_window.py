"""The progress window: live rows, history (kept across restarts), the log, and the no-tray fallback."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from pytestqt.qtbot import QtBot

from morag_worker.core.hub_client import KeyRejected
from morag_worker.core.results import TaskOutcome
from morag_worker.core.supervisor.events import WorkerState
from morag_worker.gui.tray_app import NO_TRAY_NOTICE, TrayApp
from tests.gui.conftest import WAIT_MS, Harness, progress_of

pytestmark = pytest.mark.gui

MiB = 2**20


def _running(app: TrayApp, qtbot: QtBot) -> None:
    with qtbot.waitSignal(
        app.controller.state_changed,
        timeout=WAIT_MS,
        check_params_cb=lambda s: s.state is WorkerState.RUNNING,
    ):
        app.actions.start.trigger()


def test_progress_updates_reach_the_row_within_250_ms(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started()
    app.show_window()
    _running(app, qtbot)
    child = harness.child
    with progress_of(app, qtbot):
        child.progress("t1", done=0, total=40 * MiB, percent=0.0, filename="lecture.mp4")
    row = app.window.rows["t1"]
    latencies = []
    for step in range(1, 21):
        started_at = time.perf_counter()
        with qtbot.waitSignal(row.bar.valueChanged, timeout=WAIT_MS):
            child.progress("t1", done=step * 2 * MiB, total=40 * MiB, percent=step * 5.0)
        app.window.repaint()  # and painted
        latencies.append(time.perf_counter() - started_at)
    assert max(latencies) < 0.25, latencies
    assert row.bar.value() == 1000
    assert row.name.text() == "lecture.mp4"
    assert app.window.header.title.text() == "Working: 100 %"


def test_row_shows_bytes_speed_and_time_left(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started()
    _running(app, qtbot)
    child = harness.child
    # The supervisor measures the speed between two reports, on its own clock.
    with progress_of(app, qtbot, done=8.2 * MiB):
        child.progress("t1", done=8.2 * MiB, total=40 * MiB, percent=20.5, filename="report.pdf")
    harness.advance(1)
    with progress_of(app, qtbot, done=12.3 * MiB):
        child.progress("t1", done=12.3 * MiB, total=40 * MiB, percent=30.75)
    row = app.window.rows["t1"]
    assert row.stage.text() == "Downloading"
    assert row.detail.text() == "12.3 MiB of 40.0 MiB · 4.1 MiB/s · 7 s left"
    assert row.bar.maximum() == 1000 and row.bar.value() == 307

    # Processing in the processor's own units, speed estimated from successive updates.
    with progress_of(app, qtbot, done=2):
        child.progress("t1", stage="PROCESSING", done=2, total=10, message="pages")
    harness.advance(2)
    with progress_of(app, qtbot, done=6):
        child.progress("t1", stage="PROCESSING", done=6, total=10, message="pages")
    assert row.stage.text() == "Processing · pages"
    assert row.detail.text() == "6 of 10 · 2/s · 2 s left"
    assert row.bar.value() == 600

    # Unknown total: a busy bar, no percentage.
    with progress_of(app, qtbot, "t2"):
        child.progress("t2", stage="DOWNLOADING", done=3 * MiB, total=None, filename="stream.wav")
    busy = app.window.rows["t2"]
    assert (busy.bar.minimum(), busy.bar.maximum()) == (0, 0)
    assert busy.detail.text() == "3.0 MiB"
    assert app.tray is not None and app.tray.toolTip() == "MoRAG Worker: Working on 2 tasks: 60 %"


def test_finished_task_leaves_the_list_and_shows_its_error_in_history(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started()
    _running(app, qtbot)
    child = harness.child
    with progress_of(app, qtbot):
        child.progress("t1", done=1, total=2, filename="broken.pdf")
    assert not app.window.empty_label.isVisibleTo(app.window)
    harness.advance(75)
    with qtbot.waitSignal(app.controller.task_finished, timeout=WAIT_MS):
        child.end_task("t1", TaskOutcome.FAILED, error="PDF has no trailer: the file is damaged")
    assert app.window.rows == {}
    assert app.window.empty_label.isVisibleTo(app.window)
    model = app.history_model
    assert model.rowCount() == 1
    assert [model.data(model.index(0, c)) for c in range(1, 4)] == ["broken.pdf", "Failed", "1 min 15 s"]
    app.window.tabs.setCurrentWidget(app.window.history)
    app.window.history.select_row(0)
    details = app.window.history.details.toPlainText()
    assert "broken.pdf: Failed" in details and "PDF has no trailer: the file is damaged" in details


def test_history_persists_across_a_restart(harness: Harness, qtbot: QtBot) -> None:
    harness.store_key()
    first = harness.build()
    with qtbot.waitSignal(first.ready, timeout=WAIT_MS):
        first.start()
    _running(first, qtbot)
    child = harness.child
    for n, outcome in enumerate([TaskOutcome.SUCCEEDED, TaskOutcome.FAILED, TaskOutcome.REQUEUED]):
        with qtbot.waitSignal(first.controller.task_finished, timeout=WAIT_MS):
            child.end_task(f"t{n}", outcome, filename=f"file{n}.txt", error="boom" if n == 1 else None)
    qtbot.waitUntil(lambda: first.runner.pending == 0, timeout=WAIT_MS)
    with qtbot.waitSignal(first.finished, timeout=WAIT_MS):
        first.actions.quit.trigger()
    assert (harness.tmp / "state" / "history.jsonl").is_file()

    second = harness.build()
    with qtbot.waitSignal(second.ready, timeout=WAIT_MS):
        second.start()
    qtbot.waitUntil(lambda: second.history_model.rowCount() == 3, timeout=WAIT_MS)
    records = second.history_model.records()
    assert {r.task_id for r in records} == {"t0", "t1", "t2"}
    assert next(r for r in records if r.task_id == "t1").error == "boom"


def test_log_lines_appear_in_the_log_tab(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started()
    _running(app, qtbot)
    with qtbot.waitSignal(app.controller.log_line, timeout=WAIT_MS):
        harness.child.output('{"event": "worker.ready", "level": "info"}\n')
    assert app.window.log_view.toPlainText() == '{"event": "worker.ready", "level": "info"}'


def test_without_a_system_tray_the_window_opens_and_says_why(harness: Harness, qtbot: QtBot) -> None:
    harness.tray = False
    harness.store_key()
    app = harness.build()
    with qtbot.waitSignal(app.ready, timeout=WAIT_MS):
        app.start()
    assert app.tray is None
    assert app.window.isVisible()
    assert app.window.banner.isVisible()
    assert "No system tray on this desktop" in app.window.banner.text()
    assert NO_TRAY_NOTICE in app.notices
    # The window's own buttons replace the menu.
    with qtbot.waitSignal(
        app.controller.state_changed,
        timeout=WAIT_MS,
        check_params_cb=lambda s: s.state is WorkerState.RUNNING,
    ):
        app.window.header.buttons["start"].click()
    with qtbot.waitSignal(
        app.controller.state_changed,
        timeout=WAIT_MS,
        check_params_cb=lambda s: s.state is WorkerState.STOPPED,
    ):
        app.window.header.buttons["stop_now"].click()
    # Notices go to the banner; closing the window quits.
    harness.fail_hub(KeyRejected("the hub rejected the API key"))
    with qtbot.waitSignal(
        app.controller.state_changed,
        timeout=WAIT_MS,
        check_params_cb=lambda s: s.state is WorkerState.CRASHED,
    ):
        app.window.header.buttons["start"].click()
    assert "API key refused" in app.window.banner.text()
    with qtbot.waitSignal(app.finished, timeout=WAIT_MS):
        app.window.close()
    assert harness.supervisor.calls[-1] == ("close", None)


def test_a_tray_that_appears_later_takes_over_from_the_window(harness: Harness, qtbot: QtBot) -> None:
    tray = {"available": False, "asked": 0}

    def tray_available() -> bool:
        tray["asked"] += 1
        return tray["available"]

    harness.store_key()
    app = harness.build(tray_available=tray_available, tray_retry_ms=10)
    with qtbot.waitSignal(app.ready, timeout=WAIT_MS):
        app.start()
    assert app.window.quit_on_close and app.window.banner.isVisible()
    qtbot.waitUntil(lambda: tray["asked"] >= 2, timeout=WAIT_MS)  # it keeps looking for a tray
    assert app.tray is None and app.window.quit_on_close
    tray["available"] = True
    qtbot.waitUntil(lambda: app.tray is not None, timeout=WAIT_MS)
    assert not app.window.quit_on_close and not app.window.banner.isVisible()
    assert app.window.isVisible()  # left open: the user may be looking at it


def test_the_window_shows_the_queues_consumed_and_a_cpu_notice(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    harness.gpu_probe.gpus = []
    app = started()
    _running(app, qtbot)
    notice = "No usable NVIDIA GPU found: documents convert as usual; audio and video are transcribed"
    assert "gpu-tasks-alice, cpu-tasks-alice" in app.window.header.detail.text()
    assert notice in app.window.empty_label.text()
