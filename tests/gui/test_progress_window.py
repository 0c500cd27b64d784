"""The progress window: live rows, history (kept across restarts), the log, and the no-tray fallback."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtGui import QGuiApplication
from pytestqt.qtbot import QtBot

from morag_worker.core.hub_client import KeyRejected
from morag_worker.core.results import TaskOutcome
from morag_worker.core.supervisor.events import TaskProgress, WorkerState
from morag_worker.gui.progress_text import row_texts
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
    # The bar and the header round the same way (Qt's own "%p%" would say 30%).
    assert row.bar.text() == "31 %" and app.window.header.title.text() == "Working: 31 %"

    # Processing in the processor's own units (the PDF processor's message names them), speed
    # estimated from successive updates: one count, with its unit in the rate too.
    with progress_of(app, qtbot, done=2):
        child.progress("t1", stage="PROCESSING", done=2, total=1588, message="page 3 of 1588")
    harness.advance(2)
    with progress_of(app, qtbot, done=488):
        child.progress("t1", stage="PROCESSING", done=488, total=1588, message="page 489 of 1588")
    assert row.stage.text() == "Processing"
    assert row.detail.text() == "Page 489 of 1,588 · 243 pages/s · 5 s left"
    assert row.bar.text() == "31 %" and app.window.header.title.text() == "Working: 31 %"

    # Unknown total: a busy bar, no percentage.
    with progress_of(app, qtbot, "t2"):
        child.progress("t2", stage="DOWNLOADING", done=3 * MiB, total=None, filename="stream.wav")
    busy = app.window.rows["t2"]
    assert (busy.bar.minimum(), busy.bar.maximum()) == (0, 0)
    assert busy.detail.text() == "3.0 MiB downloaded"
    assert app.tray is not None and app.tray.toolTip() == "MoRAG Worker: Working on 2 tasks: 31 %"

    # An indeterminate stage says what it does, never a lone "0".
    with progress_of(app, qtbot, "t3"):
        child.progress("t3", stage="PROCESSING", done=0, total=None, message="loading the speech model")
    loading = app.window.rows["t3"]
    assert (loading.bar.minimum(), loading.bar.maximum()) == (0, 0)
    assert loading.detail.text() == "Loading the speech model"


def test_a_finished_task_stays_in_now_with_its_outcome_until_the_next_starts(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started()
    app.window.finished_row_ms = 60_000  # longer than the test: only the next task removes it
    _running(app, qtbot)
    child = harness.child
    with progress_of(app, qtbot):
        child.progress("t1", stage="PROCESSING", done=3, total=4, message="page 4 of 4", filename="a.pdf")
    harness.advance(12)
    with qtbot.waitSignal(app.controller.task_finished, timeout=WAIT_MS):
        child.end_task("t1", TaskOutcome.SUCCEEDED, filename="a.pdf")
    row = app.window.rows["t1"]
    assert row.stage.text() == "Done" and row.detail.text() == "Finished after 12 s."
    assert row.bar.value() == 1000 and row.bar.text() == "100 %"
    with progress_of(app, qtbot, "t2"):
        child.progress("t2", done=1, total=10, filename="b.pdf")
    assert set(app.window.rows) == {"t2"}


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
        app.window.finished_row_ms = 50
        child.end_task("t1", TaskOutcome.FAILED, error="PDF has no trailer: the file is damaged")
    # The row stays a moment and says how the task ended, then goes.
    row = app.window.rows["t1"]
    assert row.stage.text() == "Failed"
    assert row.detail.text() == "Stopped after 1 min 15 s: PDF has no trailer: the file is damaged"
    qtbot.waitUntil(lambda: app.window.rows == {}, timeout=WAIT_MS)
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


#: What a real Celery worker child writes at start-up and for one task (recorded, shortened).
CHILD_OUTPUT = [
    "/venv/lib/python3.11/site-packages/celery/platforms.py:893: SecurityWarning: You're running the "
    "worker with superuser privileges: this is",
    "absolutely not recommended!",
    "",
    "Please specify a different user using the --uid option.",
    "",
    "  _warn_or_raise_security_error(egid, euid, gid, uid,",
    " ",
    " -------------- test@vm v5.7.0 (collider)",
    "--- ***** ----- ",
    "- ** ---------- .> transport:   morag_worker.core.execution.broker_transport:Transport://:**@127.0.0.1:6491/0",
    "",
    "[tasks]",
    "  . morag.worker.process_file_task",
    "",
    '{"event": "Connected to redis://:[REDACTED]@127.0.0.1:6491/0", "level": "info", '
    '"logger": "celery.worker.consumer.connection", "timestamp": "2026-12-06T08:58:18.071909Z"}',
    '{"hostname": "test@vm", "user_id": "alice", "event": "worker.ready", "level": "info", '
    '"logger": "morag_worker.core.worker", "timestamp": "2026-12-06T08:58:18.104307Z"}',
    '{"event": "test@vm ready.", "level": "info", "logger": "celery.apps.worker", '
    '"timestamp": "2026-12-06T08:58:18.105092Z"}',
    '{"event": "Task morag.worker.process_file_task_remote[6ea70f53-5eab-48c6-ae02-367d9e63a6b4] received", '
    '"level": "info", "logger": "celery.worker.strategy", "timestamp": "2026-12-06T08:58:24.438088Z"}',
    '{"host": "hub.example", "error": "ReadTimeout", "message": "the hub stopped answering", '
    '"event": "download.failed", "level": "warning", "timestamp": "2026-12-06T08:58:30.000000Z"}',
    '{"task_id": "6ea70f53-5eab-48c6-ae02-367d9e63a6b4", "success": true, "seconds": 2.2, '
    '"event": "task.done", "level": "info", "timestamp": "2026-12-06T08:58:34.519304Z"}',
]


def _stamp(iso: str) -> str:
    from datetime import datetime

    return time.strftime("%H:%M:%S", time.localtime(datetime.fromisoformat(iso).timestamp()))


def test_the_log_tab_reads_as_sentences_with_the_raw_output_behind_details(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot, tmp_path: Path
) -> None:
    app = started()
    _running(app, qtbot)
    view = app.window.log_view
    with qtbot.waitSignal(app.controller.log_line, timeout=WAIT_MS):
        harness.child.output("\n".join(CHILD_OUTPUT) + "\n")
    qtbot.waitUntil(lambda: len(view.entries) >= len(CHILD_OUTPUT), timeout=WAIT_MS)
    sentences = [
        f"{_stamp('2026-12-06T08:58:18.071909+00:00')}  Connected to the broker at 127.0.0.1:6491.",
        f"{_stamp('2026-12-06T08:58:18.104307+00:00')}  "
        "The worker is ready and waiting for tasks from alice's queues.",
        f"{_stamp('2026-12-06T08:58:24.438088+00:00')}  Task 6ea70f53 received: a file to convert.",
        f"{_stamp('2026-12-06T08:58:30+00:00')}  "
        "Warning: The download from hub.example failed: the hub stopped answering.",
        f"{_stamp('2026-12-06T08:58:34.519304+00:00')}  Task 6ea70f53 finished in 2 s.",
    ]
    # One line per event, in words: no banner, no SecurityWarning, no JSON, no blank line.
    assert view.text.toPlainText().splitlines() == sentences

    view.level_box.setCurrentIndex(1)  # warnings and errors
    assert view.text.toPlainText().splitlines() == [sentences[3]]
    view.level_box.setCurrentIndex(0)

    view.copy()
    assert QGuiApplication.clipboard().text().splitlines() == sentences
    saved = tmp_path / "log.txt"
    view._ask_save_path = lambda _parent: saved
    view.save_button.click()
    assert saved.read_text(encoding="utf-8").splitlines() == sentences

    view.details.setChecked(True)
    raw = view.text.toPlainText()
    assert (
        "SecurityWarning" in raw and "-------------- test@vm v5.7.0" in raw and '"event": "task.done"' in raw
    )
    assert view.text.horizontalScrollBar().value() == 0
    assert not view.level_box.isEnabled()
    view.details.setChecked(False)
    assert view.level_box.isEnabled() and view.text.toPlainText().splitlines() == sentences


def test_the_log_opens_scrolled_to_the_newest_line_and_the_left_edge(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started()
    app.show_window()
    app.window.tabs.setCurrentWidget(app.window.log_view)
    view = app.window.log_view
    for n in range(300):
        view.add_line(f'{{"event": "task.requeued", "task_id": "{n:08d}{"x" * 300}", "level": "info"}}')
    view.details.setChecked(True)  # unwrapped: long lines could scroll it sideways
    for _ in range(5):
        view.add_line("y" * 2000)
    text = view.text
    qtbot.waitUntil(lambda: text.verticalScrollBar().maximum() > 0, timeout=WAIT_MS)
    assert text.horizontalScrollBar().value() == 0
    assert text.verticalScrollBar().value() == text.verticalScrollBar().maximum()


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


@pytest.mark.parametrize(
    ("message", "done", "total", "speed", "detail"),
    [
        ("page 489 of 1588", 488, 1588, 47.66, "Page 489 of 1,588 · 47.7 pages/s · 20 s left"),
        ("sheet 2 of 5: Sales", 1, 5, 0.5, "Sheet 2 of 5: Sales · 0.5 sheets/s · 20 s left"),
        ("transcribed 12:34", 754, 2700, 2.5, "Transcribed 12:34 · 2.5× real time · 20 s left"),
        # A unit nobody named: the message alone, no rate without its unit, no bare count.
        ("converting the PDF file", 0, 1, 0.2, "Converting the PDF file · 20 s left"),
        ("", 0, None, None, "20 s left"),
    ],
)
def test_row_texts_give_every_rate_its_unit(
    message: str, done: float, total: float | None, speed: float | None, detail: str
) -> None:
    progress = TaskProgress("t", "PROCESSING", done, total, None, message=message, speed=speed, eta_s=20.0)
    assert row_texts(progress).detail == detail
