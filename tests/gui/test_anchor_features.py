"""What the anchors (Maestral, BOINC) have: a status line in the menu, contribution totals, the GPU,
history export, sign out, About, and an "update available" notice. On the real supervisor with
fakes (tests/gui/conftest.py)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from morag_worker import __version__
from morag_worker.core.config.contribution import Totals
from morag_worker.core.config.history import HistoryStore
from morag_worker.core.results import TaskOutcome, TaskRecord
from morag_worker.core.supervisor.events import WorkerState
from morag_worker.gui.about import about_text
from morag_worker.gui.sign_out import SignOutDialog
from morag_worker.gui.stats_view import ExportPathDialog, gpu_lines, stats_cells
from morag_worker.gui.tray_app import TrayApp
from tests.fakes import FakeHub, make_gpu, queue_info
from tests.gui.conftest import HUB, KEY, NOW, USER, WAIT_MS, Harness

pytestmark = pytest.mark.gui


def _running(app: TrayApp, qtbot: QtBot) -> None:
    with qtbot.waitSignal(
        app.controller.state_changed,
        timeout=WAIT_MS,
        check_params_cb=lambda s: s.state is WorkerState.RUNNING,
    ):
        app.actions.start.trigger()


def _seed_history(harness: Harness) -> None:
    store = HistoryStore(harness.tmp / "state" / "history.jsonl")
    store.append(
        TaskRecord("old", TaskOutcome.SUCCEEDED, NOW - 30 * 86400 - 3600, NOW - 30 * 86400, "old.pdf", None,
                   {"source_size": 4_000_000})
    )  # fmt: skip
    store.append(
        TaskRecord(
            "new", TaskOutcome.SUCCEEDED, NOW - 7200, NOW - 3600, "new.pdf", None, {"source_size": 1_500_000}
        )
    )


def test_menu_starts_with_the_state_in_words(started: Callable[..., TrayApp], qtbot: QtBot) -> None:
    app = started()
    assert app.tray is not None
    line = app.tray.status_action
    assert app.tray.menu.actions()[0] is line and not line.isEnabled()
    assert line.text() == "Stopped"
    _running(app, qtbot)
    qtbot.waitUntil(lambda: line.text().startswith("Waiting for work on gpu-tasks-alice"), timeout=WAIT_MS)


def test_contribution_tab_shows_this_week_and_all_time(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    _seed_history(harness)
    app = started()
    view = app.window.contribution
    qtbot.waitUntil(lambda: view.cells[(1, 0)].text() == "2", timeout=WAIT_MS)
    assert [view.cells[(0, c)].text() for c in range(3)] == ["1", "1.0", "1.5"]
    assert [view.cells[(1, c)].text() for c in range(3)] == ["2", "2.0", "5.5"]
    # A task finishing through the worker counts at once.
    _running(app, qtbot)
    harness.child.end_task("t9")
    qtbot.waitUntil(lambda: view.cells[(1, 0)].text() == "3", timeout=WAIT_MS)
    assert view.cells[(0, 0)].text() == "2"


def test_stats_cells_round_as_the_table_shows_them() -> None:
    assert stats_cells(Totals(1234, 5.26 * 3600, 1_234_567_890)) == ("1,234", "5.3", "1,234.6")


def test_gpu_readings_show_while_the_tab_is_on_screen_only(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    harness.gpu_probe.gpus = [replace(make_gpu(0, name="NVIDIA GeForce RTX 4090"), temperature_c=61,
                                      utilization_percent=87, memory_used_mb=20480)]  # fmt: skip
    app = started()
    view = app.window.contribution
    assert not view.polling_gpus
    app.show_window()
    app.window.tabs.setCurrentWidget(view)
    qtbot.waitUntil(lambda: view.gpu_box.isVisible(), timeout=WAIT_MS)
    assert view.gpu_label.text() == "NVIDIA GeForce RTX 4090 · 61 °C · 87 % busy · 4.0 GiB free of 24.0 GiB"
    assert view.polling_gpus
    app.window.tabs.setCurrentIndex(0)
    assert not view.polling_gpus  # hidden: no NVML calls at idle


def test_no_gpu_box_without_nvml(started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot) -> None:
    harness.gpu_probe.gpus = []
    app = started()
    view = app.window.contribution
    calls = harness.gpu_probe.calls
    app.show_window()
    app.window.tabs.setCurrentWidget(view)
    qtbot.waitUntil(lambda: harness.gpu_probe.calls > calls, timeout=WAIT_MS)
    app.runner.wait_for_done(WAIT_MS)
    qtbot.waitUntil(lambda: app.runner.pending == 0, timeout=WAIT_MS)
    assert not view.gpu_box.isVisible()
    assert gpu_lines([]) == []


def test_export_writes_the_history_as_csv(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed_history(harness)
    target = harness.tmp / "export" / "mine.csv"
    target.parent.mkdir()
    asked: list[Path] = []
    monkeypatch.setattr(ExportPathDialog, "ask", classmethod(lambda cls, suggested, parent=None: (
        asked.append(suggested), target)[1]))  # fmt: skip
    app = started()
    qtbot.mouseClick(app.window.contribution.export_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: any(n.title == "History exported" for n in app.notices), timeout=WAIT_MS)
    # The History tab has the same button.
    qtbot.mouseClick(app.window.history.export_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: [n.title for n in app.notices].count("History exported") == 2, timeout=WAIT_MS)
    assert len(asked) == 2
    assert asked[0].suffix == ".csv"
    with target.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["task_id"], r["filename"], r["input_bytes"]) for r in rows] == [
        ("old", "old.pdf", "4000000"),
        ("new", "new.pdf", "1500000"),
    ]
    assert app.notices[-1].message == f"Saved 2 tasks to {target}."


def test_export_to_an_unwritable_place_says_so(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = harness.tmp / "no-such-folder" / "mine.csv"
    monkeypatch.setattr(ExportPathDialog, "ask", classmethod(lambda cls, suggested, parent=None: target))
    app = started()
    app.window.contribution.export_button.click()
    qtbot.waitUntil(
        lambda: any(n.title == "The history was not exported" for n in app.notices), timeout=WAIT_MS
    )
    assert str(target) in app.notices[-1].message
    assert "Traceback" not in app.notices[-1].message


def test_sign_out_asks_then_stops_and_removes_the_key(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = [False, True]
    asked: list[tuple[str, bool]] = []

    def ask(cls: type[SignOutDialog], hub_url: str, *, busy: bool, parent: object = None) -> bool:
        asked.append((hub_url, busy))
        return answers.pop(0)

    monkeypatch.setattr(SignOutDialog, "ask", classmethod(ask))
    app = started()
    _running(app, qtbot)
    harness.child.progress("t1", done=10, total=100, percent=10.0)
    qtbot.waitUntil(lambda: app.controller.busy, timeout=WAIT_MS)

    app.actions.sign_out.trigger()  # cancelled: nothing happens
    assert asked == [(HUB, True)]
    assert harness.keyring.passwords[("morag-worker", HUB)] == KEY
    assert app.controller.status.state is WorkerState.RUNNING

    app.actions.sign_out.trigger()
    qtbot.waitUntil(lambda: any(n.title == "Signed out" for n in app.notices), timeout=WAIT_MS)
    assert ("morag-worker", HUB) not in harness.keyring.passwords
    qtbot.waitUntil(lambda: app.controller.status.state is WorkerState.STOPPED, timeout=WAIT_MS)
    assert "removed" in app.notices[-1].message and "Settings" in app.notices[-1].message
    assert harness.supervisor.calls_named("stop")[-1].value == "now"  # the task went back to the queue


def test_sign_out_dialog_says_what_happens() -> None:
    dialog = SignOutDialog(HUB, busy=True)
    assert dialog.text() == f"Sign out from {HUB}?"
    assert "goes back to your queue" in dialog.informativeText()
    assert "keychain" in dialog.informativeText()
    assert dialog.defaultButton() is dialog.cancel_button
    dialog.deleteLater()


def test_about_names_version_licence_and_links(started: Callable[..., TrayApp], qtbot: QtBot) -> None:
    text = about_text("6.9.0", hub_url=HUB)
    assert f"Version {__version__}" in text and "MIT licence" in text
    assert 'href="https://github.com/mattes337/MoRAG"' in text and HUB in text
    app = started()
    app.show_about()
    assert app.about is not None
    qtbot.waitUntil(app.about.isVisible, timeout=WAIT_MS)
    assert __version__ in app.about.text() and "MIT" in app.about.informativeText()
    app.about.close()


def test_a_newer_worker_on_the_hub_is_announced_once(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    hub = FakeHub(replace(queue_info(USER), worker_version="99.0.0"))
    app = started(client_factory=hub)
    _running(app, qtbot)
    title = "MoRAG Worker 99.0.0 is available"
    qtbot.waitUntil(lambda: any(n.title == title for n in app.notices), timeout=WAIT_MS)
    assert hub.calls == [(HUB, KEY)] and hub.closed == 1
    assert app.update_version == "99.0.0"
    assert f"version {__version__}" in app.notices[-1].message
    app.show_about()
    assert app.about is not None and "Version 99.0.0 is available" in app.about.informativeText()
    app.about.close()
    # Stop and start again: not announced twice in one session.
    app.actions.stop_now.trigger()
    qtbot.waitUntil(lambda: app.controller.status.state is WorkerState.STOPPED, timeout=WAIT_MS)
    _running(app, qtbot)
    app.runner.wait_for_done(WAIT_MS)
    assert [n.title for n in app.notices].count(title) == 1


@pytest.mark.parametrize("advertised", [__version__, "0.0.1", None])
def test_no_update_notice_when_the_hub_has_nothing_newer(
    started: Callable[..., TrayApp], qtbot: QtBot, advertised: str | None
) -> None:
    hub = FakeHub(replace(queue_info(USER), worker_version=advertised))
    app = started(client_factory=hub)
    _running(app, qtbot)
    qtbot.waitUntil(lambda: hub.closed == 1, timeout=WAIT_MS)
    app.runner.wait_for_done(WAIT_MS)
    assert app.update_version is None
    assert not any("is available" in n.title for n in app.notices)
