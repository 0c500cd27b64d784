"""Fixtures of the tray app tests: offscreen Qt, a TrayApp built from fakes in a temp folder.

``QT_QPA_PLATFORM=offscreen`` is set here, at import, before pytest-qt creates the QApplication.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import ctypes  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QUrl  # noqa: E402
from pytestqt.qtbot import QtBot  # noqa: E402

from morag_worker.core.credentials import CredentialStore  # noqa: E402
from morag_worker.core.history import HistoryStore  # noqa: E402
from morag_worker.core.settings import SettingsStore  # noqa: E402
from morag_worker.core.worker_state import SupervisorListener  # noqa: E402
from morag_worker.gui.tray_app import Services, TrayApp  # noqa: E402
from tests.fakes import FakeAutostart, FakeGpuProbe, FakeSupervisor, InMemoryKeyring, make_gpu  # noqa: E402

#: How long a test waits for a signal or condition before failing.
WAIT_MS = 10_000
#: A fixed "now" for tests that show times.
NOW = 1_700_000_000.0
HUB = "http://127.0.0.1:8700"
KEY = "k" * 20 + "3" * 23


@dataclass
class Harness:
    """The fakes behind a TrayApp, and the app once built."""

    tmp: Path
    keyring: InMemoryKeyring = field(default_factory=InMemoryKeyring)
    gpu_probe: FakeGpuProbe = field(default_factory=lambda: FakeGpuProbe([make_gpu(0), make_gpu(1)]))
    autostart: FakeAutostart = field(default_factory=FakeAutostart)
    opened: list[QUrl] = field(default_factory=list)
    supervisors: list[FakeSupervisor] = field(default_factory=list)
    tray: bool = True
    auto: bool = True
    apps: list[TrayApp] = field(default_factory=list)

    @property
    def supervisor(self) -> FakeSupervisor:
        return self.supervisors[-1]

    def store_key(self, hub: str = HUB, key: str = KEY) -> None:
        self.keyring.passwords[("morag-worker", hub)] = key

    def services(self, **overrides: object) -> Services:
        def factory(listener: SupervisorListener) -> FakeSupervisor:
            supervisor = FakeSupervisor(listener, auto=self.auto, clock=lambda: NOW)
            self.supervisors.append(supervisor)
            return supervisor

        values: dict[str, object] = {
            "settings_store": SettingsStore(self.tmp / "config"),
            "credentials": CredentialStore(self.keyring),
            "gpu_probe": self.gpu_probe,
            "autostart": self.autostart,
            "autostart_command": lambda: ["/usr/bin/morag-worker"],
            "history": HistoryStore(self.tmp / "state" / "history.jsonl"),
            "supervisor_factory": factory,
            "log_dir": self.tmp / "logs",
            "tray_available": lambda: self.tray,
            "open_url": self.opened.append,
            "env": {},
            "clock": lambda: NOW,
        }
        values.update(overrides)
        return Services(**values)  # type: ignore[arg-type]

    def build(self, **overrides: object) -> TrayApp:
        app = TrayApp(self.services(**overrides))
        self.apps.append(app)
        return app


_incref = ctypes.PYFUNCTYPE(None, ctypes.py_object)(("Py_IncRef", ctypes.pythonapi))


@pytest.fixture(autouse=True)
def _keep_true_alive() -> Iterator[None]:
    """Give back the references to ``True`` that PySide6 6.12's ``SignalInstance.disconnect`` drops.

    pytest-qt's ``waitSignal`` disconnects its slots when it ends, and that binding's
    ``disconnect`` (like its ``emit``, see ``morag_worker.gui.qt_emit``) returns ``True`` without a
    reference. Left alone, a few hundred waits abort the interpreter ("bool_dealloc"). Giving back
    too many is harmless: ``True`` is never freed.
    """
    before = sys.getrefcount(True)
    yield
    for _ in range(max(0, before - sys.getrefcount(True))):
        _incref(True)


@pytest.fixture
def harness(tmp_path: Path, qapp: object) -> Iterator[Harness]:
    result = Harness(tmp_path)
    yield result
    for app in result.apps:
        app.runner.wait_for_done(WAIT_MS)
        app.dispose()


@pytest.fixture
def started(harness: Harness, qtbot: QtBot) -> Callable[..., TrayApp]:
    """Build a TrayApp with a stored key and start it; returns once start-up is done."""

    def start(**overrides: object) -> TrayApp:
        harness.store_key()
        app = harness.build(**overrides)
        with qtbot.waitSignal(app.ready, timeout=WAIT_MS):
            app.start()
        return app

    return start
