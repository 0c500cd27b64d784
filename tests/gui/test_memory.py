"""The idle tray app stays small: PySide6's per-import source check caches nothing, and idle
time gives the cached sources and the C heap's free pages back."""

from __future__ import annotations

import importlib
import linecache
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from morag_worker.core.supervisor.events import WorkerState
from morag_worker.gui import tray_app
from morag_worker.gui.memory import release_free_memory
from morag_worker.gui.tray_app import TrayApp
from tests.gui.conftest import WAIT_MS, Harness

pytestmark = pytest.mark.gui


def test_modules_imported_after_pyside_leave_linecache_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    feature = sys.modules.get("shibokensupport.feature")
    if feature is None:
        pytest.skip("this PySide6 has no per-import feature check")
    source = tmp_path / "morag_memory_probe.py"
    source.write_text("import PySide6\nVALUE = 1\n" + "# padding\n" * 1000, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("morag_memory_probe")
    try:
        assert module.VALUE == 1
        assert str(source) not in linecache.cache
        # The check still answers as PySide6's own does: this module uses PySide6.
        assert feature._mod_uses_pyside(module) is True
        assert feature._mod_uses_pyside(linecache) is False
    finally:
        sys.modules.pop("morag_memory_probe", None)


def test_release_free_memory_drops_cached_sources() -> None:
    linecache.getline(linecache.__file__, 1)
    assert linecache.cache
    released = release_free_memory()
    assert linecache.cache == {}
    assert released is sys.platform.startswith("linux")


def test_the_app_gives_memory_back_once_quiet_and_not_while_working(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(tray_app, "release_free_memory", lambda: calls.append(True) or True)
    app = started()
    app._idle_timer.setInterval(50)
    with qtbot.waitSignal(
        app.controller.state_changed,
        timeout=WAIT_MS,
        check_params_cb=lambda s: s.state is WorkerState.RUNNING,
    ):
        app.actions.start.trigger()
    qtbot.waitUntil(lambda: len(calls) >= 1, timeout=WAIT_MS)
    harness.child.progress("t1", done=1, total=10, percent=10.0)
    qtbot.waitUntil(lambda: app.controller.busy, timeout=WAIT_MS)
    before = len(calls)
    app._idle_timer.start()
    qtbot.waitUntil(lambda: not app._idle_timer.isActive(), timeout=WAIT_MS)
    assert len(calls) == before  # a task in flight: nothing is trimmed under it
    harness.child.end_task("t1")
    qtbot.waitUntil(lambda: len(calls) > before, timeout=WAIT_MS)
