"""Fixtures of the tray app tests: offscreen Qt, a TrayApp on the real ``Supervisor`` in a temp folder.

The supervisor is the real state machine (``morag_worker.core.supervisor.Supervisor``) with a fake
launcher, hub and clock, as in ``tests/unit/test_supervisor.py``: no process starts, the clock moves
only when a test calls ``Harness.advance``, and the worker child is a ``WorkerChild`` that the test
drives (ready, task start, progress, task end, exit) through the same progress channel lines a real
child writes. ``QT_QPA_PLATFORM=offscreen`` is set here, at import, before pytest-qt creates the
QApplication.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import ctypes  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QCoreApplication, QUrl  # noqa: E402
from pytestqt.qtbot import QtBot  # noqa: E402

from morag_worker.core.config.credentials import CredentialStore, resolve_api_key  # noqa: E402
from morag_worker.core.config.history import HistoryStore  # noqa: E402
from morag_worker.core.config.settings import SettingsStore  # noqa: E402
from morag_worker.core.results import TaskOutcome  # noqa: E402
from morag_worker.core.supervisor.child_process import ChildCallbacks  # noqa: E402
from morag_worker.core.supervisor.events import StopMode, SupervisorListener, TaskProgress  # noqa: E402
from morag_worker.core.supervisor.supervisor import Supervisor, SupervisorOptions  # noqa: E402
from morag_worker.core.supervisor.task_tracker import STARTED_STAGE  # noqa: E402
from morag_worker.core.supervisor.worker_command import WorkerCommand  # noqa: E402
from morag_worker.gui.tray_app import Services, TrayApp  # noqa: E402
from tests.fakes import (  # noqa: E402
    FakeAutostart,
    FakeChild,
    FakeClock,
    FakeGpuProbe,
    FakeHub,
    FakeLauncher,
    InMemoryKeyring,
    make_gpu,
    queue_info,
)

#: How long a test waits for a signal or condition before failing.
WAIT_MS = 10_000
#: A fixed "now" for tests that show times: the fake clock's wall time until a test advances it.
NOW = 1_700_000_000.0
HUB = "http://127.0.0.1:8700"
KEY = "k" * 20 + "3" * 23
USER = "alice"
QUEUES = (f"gpu-tasks-{USER}", f"cpu-tasks-{USER}")
#: How often a ready ``WorkerChild`` beats while a test advances the clock (the child's default).
HEARTBEAT_S = 5.0


class WorkerChild(FakeChild):
    """A worker child that behaves as a healthy Celery worker does when the supervisor controls it.

    FINISH exits (status 0) once no task runs, NOW exits at once (the supervisor hands the tasks in
    flight back), KILL exits with -9. The test drives everything else through the progress channel:
    ``ready``, ``start_task``, ``progress``, ``end_task``, ``heartbeat``, ``output``, ``exit``.
    Clear ``obeys`` to make it ignore a stop mode (a child that hangs).
    """

    def __init__(
        self, pid: int, command: WorkerCommand, callbacks: ChildCallbacks, queues: tuple[str, ...]
    ) -> None:
        super().__init__(pid, command, callbacks)
        self.queues = queues
        self.obeys: set[StopMode] = set(StopMode)
        self.tasks: dict[str, str | None] = {}  # task id -> file name
        self.is_ready = False
        self._finishing = False
        self._lock = threading.RLock()  # control() comes from the supervisor's thread

    def ready(self) -> None:
        self.is_ready = True
        self.send("ready", hostname="fake@test", queues=list(self.queues), config={"task_acks_late": True})

    def control(self, mode: StopMode) -> None:
        with self._lock:
            self.controls.append(mode)
            if self.code is not None or mode not in self.obeys:
                return
            if mode is StopMode.FINISH:
                self._finishing = True
                self._exit_when_idle()
            else:
                self.exit(-9 if mode is StopMode.KILL else 0)

    def start_task(self, task_id: str = "t1", filename: str | None = "report.pdf") -> None:
        with self._lock:
            self.tasks[task_id] = filename
        self.send("task_start", task_id=task_id, name="morag.process_file", filename=filename)

    def progress(
        self,
        task_id: str = "t1",
        *,
        stage: str = "DOWNLOADING",
        done: float = 0,
        total: float | None = None,
        percent: float | None = None,
        message: str = "",
        filename: str | None = "report.pdf",
    ) -> None:
        """A progress line; the task's start line first when the task is new."""
        if task_id not in self.tasks:
            self.start_task(task_id, filename)
        self.send(
            "progress", task_id=task_id, stage=stage, done=done, total=total, percent=percent, message=message
        )

    def end_task(
        self,
        task_id: str = "t1",
        outcome: TaskOutcome = TaskOutcome.SUCCEEDED,
        *,
        error: str | None = None,
        filename: str | None = "report.pdf",
    ) -> None:
        """The task's end line (its start line first when the task is new); a finishing child then exits."""
        if task_id not in self.tasks:
            self.start_task(task_id, filename)
        with self._lock:
            self.tasks.pop(task_id, None)
        self.send("task_end", task_id=task_id, outcome=outcome.value, error=error, metadata={})
        with self._lock:
            self._exit_when_idle()

    def beat(self) -> None:
        """A heartbeat listing the tasks in flight, as the child's main process sends every few seconds."""
        with self._lock:
            active = tuple(self.tasks)
        self.heartbeat(reserved=len(active), active=active)

    def _exit_when_idle(self) -> None:
        if self._finishing and not self.tasks and self.code is None:
            self.exit(0)


class WorkerLauncher(FakeLauncher):
    """Hands out ``WorkerChild``ren; with ``auto_ready`` each says it is ready as soon as it starts."""

    def __init__(self, queues: tuple[str, ...], auto_ready: bool = True) -> None:
        super().__init__()
        self.queues = queues
        self.auto_ready = auto_ready

    def launch(self, command: WorkerCommand, callbacks: ChildCallbacks) -> WorkerChild:
        if self.error is not None:
            raise self.error
        child = WorkerChild(4000 + len(self.children), command, callbacks, self.queues)
        self.children.append(child)
        if self.auto_ready:
            child.ready()
        return child


class RecordedSupervisor(Supervisor):
    """The real ``Supervisor``, keeping the calls the controller makes as ``(name, argument)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._calls_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _record(self, name: str, arg: Any) -> None:
        with self._calls_lock:
            self.calls.append((name, arg))

    def calls_named(self, name: str) -> list[Any]:
        with self._calls_lock:
            return [arg for call, arg in self.calls if call == name]

    def start(self) -> None:
        self._record("start", None)
        super().start()

    def stop(self, mode: StopMode = StopMode.FINISH) -> None:
        self._record("stop", mode)
        super().stop(mode)

    def snooze(self, until: float | None) -> None:
        self._record("snooze", until)
        super().snooze(until)

    def close(self, timeout: float | None = None) -> None:
        self._record("close", None)
        super().close(timeout)


def progress_of(app: TrayApp, qtbot: QtBot, task_id: str = "t1", done: float | None = None) -> Any:
    """Wait for ``task_id``'s progress report (with ``done`` when given), not its start line's."""

    def match(progress: TaskProgress) -> bool:
        wanted = done is None or progress.done == done
        return progress.task_id == task_id and progress.stage != STARTED_STAGE and wanted

    return qtbot.waitSignal(app.controller.task_progress, timeout=WAIT_MS, check_params_cb=match)


@dataclass
class Harness:
    """The fakes behind a TrayApp and its real supervisor, and the app once built.

    Attributes:
        hub: Answers the supervisor's queue-info (set ``hub.answers`` to make it fail).
        launcher: Hands out the worker children (``child`` is the latest).
        clock: The supervisor's clock; the app's clock reads its wall time.
        auto: Whether each child says it is ready as soon as it starts.
    """

    tmp: Path
    keyring: InMemoryKeyring = field(default_factory=InMemoryKeyring)
    gpu_probe: FakeGpuProbe = field(default_factory=lambda: FakeGpuProbe([make_gpu(0), make_gpu(1)]))
    autostart: FakeAutostart = field(default_factory=FakeAutostart)
    opened: list[QUrl] = field(default_factory=list)
    hub: FakeHub = field(default_factory=lambda: FakeHub(queue_info(USER)))
    launcher: WorkerLauncher = field(default_factory=lambda: WorkerLauncher(QUEUES))
    clock: FakeClock = field(default_factory=lambda: FakeClock(wall=NOW))
    supervisors: list[RecordedSupervisor] = field(default_factory=list)
    tray: bool = True
    apps: list[TrayApp] = field(default_factory=list)

    @property
    def auto(self) -> bool:
        return self.launcher.auto_ready

    @auto.setter
    def auto(self, value: bool) -> None:
        self.launcher.auto_ready = value

    @property
    def supervisor(self) -> RecordedSupervisor:
        return self.supervisors[-1]

    @property
    def child(self) -> WorkerChild:
        child = self.launcher.last
        assert isinstance(child, WorkerChild)
        return child

    def store_key(self, hub: str = HUB, key: str = KEY) -> None:
        self.keyring.passwords[("morag-worker", hub)] = key

    def fail_hub(self, error: Exception) -> None:
        """Every queue-info from now on raises ``error``."""
        self.hub.answers = [error]

    def heal_hub(self) -> None:
        self.hub.answers = [queue_info(USER)]

    def advance(self, seconds: float) -> None:
        """Move the clock by ``seconds``; ready children beat every ``HEARTBEAT_S`` on the way."""
        left = seconds
        while left > 0:
            step = min(HEARTBEAT_S, left)
            left -= step
            self.clock.advance(step)
            for child in self.launcher.children:
                if isinstance(child, WorkerChild) and child.is_ready and child.code is None:
                    child.beat()
            self.supervisor.tick()

    def supervisor_factory(
        self, settings_store: SettingsStore, credentials: CredentialStore
    ) -> Callable[[SupervisorListener], RecordedSupervisor]:
        """Builds the real supervisor on the fakes, wired as ``supervisor_for`` wires production."""

        def resolve_key() -> str:  # as in production (supervisor_for): the keychain, for the hub now set
            hub_url = settings_store.load().hub_url
            return resolve_api_key(env={}, api_key_file=None, store=credentials, hub_url=hub_url).key

        def factory(listener: SupervisorListener) -> RecordedSupervisor:
            supervisor = RecordedSupervisor(
                settings_store.load(),
                key_resolver=resolve_key,
                hub_client_factory=self.hub,
                listener=listener,
                launcher=self.launcher,
                clock=self.clock,
                gpu_probe=self.gpu_probe,
                env={"PATH": "/usr/bin"},
                options=SupervisorOptions(backoff_jitter=0.0),
                rng=lambda: 0.0,
                settings_source=settings_store.load,
            )
            self.supervisors.append(supervisor)
            return supervisor

        return factory

    def services(self, **overrides: object) -> Services:
        settings_store = SettingsStore(self.tmp / "config")
        credentials = CredentialStore(self.keyring)
        values: dict[str, object] = {
            "settings_store": settings_store,
            "credentials": credentials,
            "gpu_probe": self.gpu_probe,
            "autostart": self.autostart,
            "autostart_command": lambda: ["/usr/bin/morag-worker"],
            "history": HistoryStore(self.tmp / "state" / "history.jsonl"),
            "supervisor_factory": self.supervisor_factory(settings_store, credentials),
            "log_dir": self.tmp / "logs",
            "tray_available": lambda: self.tray,
            "open_url": self.opened.append,
            "client_factory": self.hub,  # the key check and the update check: no real network
            "env": {},
            "clock": self.clock.time,
        }
        values.update(overrides)
        return Services(**values)  # type: ignore[arg-type]

    def build(self, **overrides: object) -> TrayApp:
        app = TrayApp(self.services(**overrides))
        self.apps.append(app)
        return app

    def close(self) -> None:
        """Close every supervisor, its children obeying whatever stop it sends."""
        for child in self.launcher.children:
            if isinstance(child, WorkerChild):
                child.obeys = set(StopMode)
                if child.controls and child.code is None:
                    child.control(child.controls[-1])  # a stop it ignored: obey it now
        for supervisor in self.supervisors:
            Supervisor.close(supervisor, timeout=10)
            assert not supervisor._thread.is_alive()


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
    result.close()
    # The supervisors' last reports (closing: STOPPED) are queued to the GUI thread; deliver them
    # while the widgets still exist. Every supervisor thread has ended, so nothing else comes.
    QCoreApplication.processEvents()
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A GUI test stuck inside Qt's event loop is not reached by pytest-timeout's signal; its
    thread method dumps every thread's stack and ends the run, so a hang is seen, not waited out."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(300, method="thread"))
