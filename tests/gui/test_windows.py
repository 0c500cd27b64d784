"""The tray app's windows as a person meets them: titles, sizes on a small high-DPI screen, the
log folder without a file manager, the first-run form, and restarting for changed settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtCore import QUrl
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QWidget
from pytestqt.qtbot import QtBot

from morag_worker import DISPLAY_NAME
from morag_worker.core.supervisor.events import StopMode, WorkerState
from morag_worker.gui import dialogs
from morag_worker.gui.about import about_box
from morag_worker.gui.dialogs import QuitDialog, RestartDialog
from morag_worker.gui.format import window_title
from morag_worker.gui.tray_app import TrayApp
from tests.gui.conftest import WAIT_MS, Harness, progress_of

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parents[2]


def shown_title(widget: QWidget) -> str:
    """The title as the window manager shows it: Qt appends the app's display name unless the
    title already ends with it (``QPlatformWindow::formatWindowTitle``)."""
    title = widget.windowTitle()
    return title if title.endswith(DISPLAY_NAME) else f"{title} \u2014 {DISPLAY_NAME}"


def test_window_title_names_the_app_once_at_the_end() -> None:
    assert window_title("Settings") == "Settings \u2014 MoRAG Worker"
    assert window_title("Working: 31 %") == "Working: 31 % \u2014 MoRAG Worker"
    assert window_title("About MoRAG Worker") == "About MoRAG Worker"
    assert window_title("") == window_title(DISPLAY_NAME) == DISPLAY_NAME


def test_no_title_repeats_the_app_name(started: Callable[..., TrayApp], harness: Harness) -> None:
    app = started()
    app.show_window()
    windows: list[QWidget] = [app.window, app.show_settings(), QuitDialog(1), RestartDialog(busy=True)]
    windows.append(about_box(app.icons))
    windows.append(dialogs.log_folder_box(harness.tmp / "logs"))
    assert app.settings_dialog is not None
    app.settings_dialog.reject()
    first = harness.build()
    windows.append(first.show_settings(first_run=True))
    for window in windows:
        assert shown_title(window).count(DISPLAY_NAME) == 1, window.windowTitle()
    for window in windows[2:6]:
        window.deleteLater()


def test_open_log_folder_without_a_file_manager_shows_the_path_to_copy(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    asked: list[QUrl] = []

    def no_file_manager(url: QUrl) -> bool:
        asked.append(url)
        return False  # what QDesktopServices.openUrl answers when nothing could open it

    app = started(open_url=no_file_manager)
    app.actions.open_logs.trigger()
    qtbot.waitUntil(lambda: app.log_folder_box is not None, timeout=WAIT_MS)
    box = app.log_folder_box
    assert box is not None and box.isVisible()
    folder = str(harness.tmp / "logs")
    assert len(asked) == 1 and box.informativeText() == folder
    copy = next(b for b in box.buttons() if b.text() == "Copy path")
    copy.click()
    assert QGuiApplication.clipboard().text() == folder


def test_first_run_leaves_the_hub_address_to_the_person(harness: Harness, qtbot: QtBot) -> None:
    app = harness.build()  # no key: first run
    with qtbot.waitSignal(app.ready, timeout=WAIT_MS):
        app.start()
    dialog = app.settings_dialog
    assert dialog is not None
    assert dialog.hub_edit.text() == ""
    assert dialog.hub_edit.placeholderText() == "https://hub.example.org"
    dialog.key_edit.setText("some-key")
    dialog.save()
    assert "Enter the hub address first." in dialog.status_label.text()
    assert harness.supervisor.calls == []


def test_changed_settings_offer_restart_now_and_restart_after_the_task(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[bool] = []

    def restart(*, busy: bool, parent: QWidget | None = None) -> bool:
        asked.append(busy)
        return True

    monkeypatch.setattr(RestartDialog, "ask", restart)
    app = started()
    with qtbot.waitSignal(
        app.controller.state_changed,
        timeout=WAIT_MS,
        check_params_cb=lambda s: s.state is WorkerState.RUNNING,
    ):
        app.actions.start.trigger()
    first_child = harness.child
    with progress_of(app, qtbot):
        first_child.progress("t1", done=1, total=4, filename="a.pdf")
    dialog = app.show_settings()
    qtbot.waitUntil(lambda: dialog._stored is not None, timeout=WAIT_MS)  # the key was read
    dialog.concurrency.setValue(2)
    dialog.save()
    qtbot.waitUntil(lambda: asked == [True], timeout=WAIT_MS)
    qtbot.waitUntil(lambda: harness.supervisor.calls_named("stop") == [StopMode.FINISH], timeout=WAIT_MS)
    assert harness.supervisor.calls_named("start")[-1] is None
    # Nothing is lost: the task finishes, then a new child starts with the new settings.
    first_child.end_task("t1", filename="a.pdf")
    qtbot.waitUntil(lambda: harness.child is not first_child, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: app.controller.status.state is WorkerState.RUNNING, timeout=WAIT_MS)
    assert (
        "-c" in harness.child.command.argv
        and harness.child.command.argv[harness.child.command.argv.index("-c") + 1] == "2"
    )


SMALL_SCREEN = {
    "screens": [{"name": "laptop", "x": 0, "y": 0, "width": 1280, "height": 800, "logicalDpi": 96, "dpr": 1}]
}
SIZES_SCRIPT = """
import json, sys, tempfile
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/packaging"]
from PySide6.QtWidgets import QApplication
qapp = QApplication([])
import render_screenshots as shots
from morag_worker.gui.settings_dialog import SettingsDialog
from morag_worker.core.hub_client import HubUnreachable
from morag_worker.gui.settings_dialog import explain
app, supervisors = shots.build_app(Path(tempfile.mkdtemp()))
app.window.show()
dialog = app.show_settings(first_run=True)
shots.wait_for(lambda: app.runner.pending == 0)
dialog._show_problem(explain(HubUnreachable("down"), "https://hub.example.org"))
shots.settle()
screen = qapp.primaryScreen().availableGeometry()
sizes = {name: [w.frameGeometry().width(), w.frameGeometry().height()]
         for name, w in (("window", app.window), ("settings", dialog))}
print(json.dumps({"screen": [screen.width(), screen.height()], "sizes": sizes}))
app.dispose()
"""


def test_windows_fit_a_1280x800_screen_at_scale_factor_2(tmp_path: Path) -> None:
    config = tmp_path / "screen.json"
    config.write_text(json.dumps(SMALL_SCREEN), encoding="utf-8")
    env = {**os.environ, "QT_QPA_PLATFORM": f"offscreen:configfile={config}", "QT_SCALE_FACTOR": "2"}
    done = subprocess.run(
        [sys.executable, "-c", SIZES_SCRIPT, str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    width, height = found["screen"]
    assert (width, height) == (640, 400)  # 1280×800 device pixels at scale 2
    for name, (w, h) in found["sizes"].items():
        assert w <= width and h <= height, (name, w, h)
