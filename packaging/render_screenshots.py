"""Render the tray app's windows and menu to PNG for the README and store listings.

    QT_QPA_PLATFORM=offscreen python packaging/render_screenshots.py [--out docs/screenshots]

Builds the real widgets (TrayApp, SettingsDialog, QuitDialog) with the fake supervisor from
tests/fakes.py and representative data, and grabs each with QWidget.grab(); nothing is
started, no network is used (the key check answers from a stub client). The application is set up
as ``gui.entry`` sets up the live one, with the style's own palette (nothing the live app lacks);
each window keeps the size the live app gives it. A fixed clock and font keep the images the same
from one run to the next. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QEventLoop, QRectF, QTimer  # noqa: E402
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPixmap  # noqa: E402
from PySide6.QtSvg import QSvgRenderer  # noqa: E402
from PySide6.QtWidgets import QApplication, QMenu, QWidget  # noqa: E402

from morag_worker.core.config.credentials import CredentialStore  # noqa: E402
from morag_worker.core.config.history import HistoryStore  # noqa: E402
from morag_worker.core.config.settings import Settings, SettingsStore  # noqa: E402
from morag_worker.core.hub_client import KeyRejected, QueueInfo  # noqa: E402
from morag_worker.core.results import TaskOutcome, TaskRecord  # noqa: E402
from morag_worker.core.supervisor.events import WorkerState  # noqa: E402
from morag_worker.gui.dialogs import QuitDialog  # noqa: E402
from morag_worker.gui.entry import configure_application  # noqa: E402
from morag_worker.gui.icons import TrayLook, read_resource  # noqa: E402
from morag_worker.gui.settings_dialog import SettingsDialog  # noqa: E402
from morag_worker.gui.tray_app import NO_TRAY_NOTICE, Services, TrayApp  # noqa: E402
from tests.fakes import FakeAutostart, FakeGpuProbe, FakeSupervisor, InMemoryKeyring, make_gpu  # noqa: E402

#: Where the key is kept, as the real keychain names itself on this platform.
if sys.platform.startswith("win"):
    KEYCHAIN = "Windows Credential Manager"
elif sys.platform == "darwin":
    KEYCHAIN = "macOS Keychain"
else:
    KEYCHAIN = "Secret Service (GNOME Keyring or compatible)"
NOW = time.mktime((2026, 5, 14, 14, 32, 0, 0, 0, -1))
HUB = "https://hub.morag.example"
MB = 1_000_000


class StubHub:
    """Answers queue_info like the hub would, without a network."""

    def __init__(self, _url: str, key: str) -> None:
        self._key = key

    def queue_info(self) -> QueueInfo:
        if not self._key.startswith("good"):
            raise KeyRejected("the hub rejected the API key")
        return QueueInfo(
            "alice", "gpu-tasks-alice", "cpu-tasks-alice", "celery", "rediss://broker", "worker-alice", ""
        )

    def close(self) -> None:
        return None


def settle(ms: int = 80) -> None:
    """Let queued events (background results, layouts) run."""
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def wait_for(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the widgets")
        settle(20)


def save(widget: QWidget | QPixmap, path: Path) -> None:
    pixmap = widget if isinstance(widget, QPixmap) else widget.grab()
    pixmap.save(str(path), "PNG", 9)
    print(f"{path}  {pixmap.width()}x{pixmap.height()}  {path.stat().st_size // 1024} KiB")


def build_app(tmp: Path) -> tuple[TrayApp, list[FakeSupervisor]]:
    keyring = InMemoryKeyring()
    keyring.passwords[("morag-worker", HUB)] = "good-key"
    supervisors: list[FakeSupervisor] = []

    def factory(listener: object) -> FakeSupervisor:
        supervisors.append(FakeSupervisor(listener, clock=lambda: NOW))  # type: ignore[arg-type]
        return supervisors[-1]

    store = SettingsStore(tmp / "config")
    store.save(Settings(hub_url=HUB, start_working_on_launch=True))
    history = HistoryStore(tmp / "history.jsonl")
    for record in sample_history():
        history.append(record)
    services = Services(
        settings_store=store,
        credentials=CredentialStore(keyring),
        gpu_probe=FakeGpuProbe([make_gpu(0, name="NVIDIA GeForce RTX 4090")]),
        autostart=FakeAutostart(),
        autostart_command=lambda: ["morag-worker"],
        history=history,
        supervisor_factory=factory,
        log_dir=tmp / "logs",
        tray_available=lambda: True,
        open_url=lambda _url: None,
        client_factory=StubHub,
        env={},
        clock=lambda: NOW,
    )
    app = TrayApp(services)
    return app, supervisors


def sample_history() -> list[TaskRecord]:
    rows = [
        ("quarterly-report.pdf", TaskOutcome.SUCCEEDED, 48, None),
        ("interview-2026-05-13.mp3", TaskOutcome.SUCCEEDED, 312, None),
        ("scan-0042.pdf", TaskOutcome.FAILED, 3, "PDF has no trailer: the file is damaged or truncated"),
        ("handbook.docx", TaskOutcome.SUCCEEDED, 21, None),
        ("townhall.mp4", TaskOutcome.REQUEUED, 95, None),
        ("pricing.xlsx", TaskOutcome.SUCCEEDED, 6, None),
        ("https://example.org/blog/post", TaskOutcome.SUCCEEDED, 4, None),
    ]
    records = []
    finished = NOW - 240
    for n, (name, outcome, duration, error) in enumerate(rows):
        records.append(
            TaskRecord(
                f"7f3c{n:02d}a1-5d2e-4c9b-9e1f-{n:012d}",
                outcome,
                started_at=finished - duration,
                finished_at=finished,
                filename=name,
                error=error,
                metadata={"pages": 12} if name.endswith(".pdf") and not error else {},
            )
        )
        finished -= duration + 420
    return records


def sample_log() -> list[str]:
    """What a worker child writes at start-up and for two tasks (the banner, a warning, JSON)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - 300))
    task_a, task_b = "7f3c00a1-5d2e-4c9b-9e1f-000000000001", "9b41e2c7-0a6f-4d3e-8c21-000000000002"

    def event(offset: int, **fields: object) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - 300 + offset))
        return json.dumps({"level": "info", "timestamp": f"{when}.000000Z", **fields})

    return [
        f"celery/platforms.py:893: SecurityWarning: running the worker as root ({stamp})",
        "",
        " -------------- morag-alice@studio v5.7.0 (collider)",
        "--- ***** ----- ",
        event(1, event="Connected to rediss://worker-alice:**@broker.morag.example:6380/0"),
        event(1, event="worker.ready", hostname="morag-alice@studio", user_id="alice"),
        event(60, event=f"Task morag.worker.process_file_task_remote[{task_a}] received"),
        event(61, event="download.start", host="hub.morag.example", expected_size=61_200_000),
        event(75, event=f"Task morag.worker.process_file_task_remote[{task_b}] received"),
        event(76, event="download.done", host="hub.morag.example", bytes=8_400_000, seconds=1.3),
        event(77, event="processing.resolved", processor="pdf"),
        event(
            90, event="download.retry", level="warning", host="hub.morag.example", reason="timeout", wait_s=2
        ),
    ]


def tray_icons_sheet() -> QPixmap:
    looks = list(TrayLook)
    cell, pad = 64, 18
    width = len(looks) * (cell + pad) + pad
    image = QImage(width, 2 * (cell + 2 * pad), QImage.Format.Format_ARGB32)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    for row, (theme, background) in enumerate((("light", "#ececec"), ("dark", "#2b2b30"))):
        y = row * (cell + 2 * pad)
        painter.fillRect(0, y, width, cell + 2 * pad, QColor(background))
        for i, look in enumerate(looks):
            renderer = QSvgRenderer(read_resource("icons", f"tray-{look.value}-{theme}.svg"))
            x = pad + i * (cell + pad)
            renderer.render(painter, QRectF(x, y + pad, cell, cell))
    painter.end()
    return QPixmap.fromImage(image)


def make_application() -> QApplication:
    """The application as ``gui.entry`` sets up the live one, in the style a Linux desktop without
    a platform theme gets, with that style's own palette; a fixed font keeps images stable."""
    qapp = QApplication([sys.argv[0]])
    configure_application(qapp)
    qapp.setStyle("Fusion")
    qapp.setPalette(qapp.style().standardPalette())
    qapp.setFont(QFont("DejaVu Sans", 9))
    return qapp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    _qapp = make_application()  # lives until main returns

    import tempfile

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        app, supervisors = build_app(tmp)
        app.start()
        wait_for(lambda: supervisors and supervisors[-1].state is WorkerState.RUNNING)
        wait_for(lambda: app.history_model.rowCount() == 7)
        supervisor = supervisors[-1]
        supervisor.emit_progress(
            "a1", done=27.4 * MB, total=61.2 * MB, percent=44.8, speed=6.3 * MB, eta_s=6,
            filename="townhall-2026-05.mp4",
        )  # fmt: skip
        supervisor.emit_progress(
            "b2", stage="PROCESSING", done=37, total=52, percent=71.2, speed=2.4, eta_s=7,
            message="page 38 of 52", filename="product-catalogue.pdf",
        )  # fmt: skip
        for line in sample_log():
            supervisor.emit_log(line)
        settle()

        window = app.window
        window.show()
        settle()
        save(window, out / "progress-window.png")

        window.show_notice(NO_TRAY_NOTICE)
        settle()
        save(window, out / "no-tray-window.png")
        window.clear_notice()

        window.tabs.setCurrentWidget(window.history)
        window.history.select_row(2)
        settle()
        save(window, out / "history.png")

        window.tabs.setCurrentWidget(window.log_view)
        settle()
        save(window, out / "log.png")
        window.tabs.setCurrentIndex(0)

        assert app.tray is not None
        menu: QMenu = app.tray.menu
        menu.adjustSize()
        save(menu, out / "tray-menu.png")

        dialog = SettingsDialog(
            app.settings,
            app.services.settings_store,
            app.services.credentials,
            app.services.gpu_probe,
            app.services.autostart,
            app.services.autostart_command,
            app.runner,
            client_factory=StubHub,
        )
        dialog.show()
        wait_for(lambda: app.runner.pending == 0 and dialog.gpu_combo.count() == 3)
        dialog.keychain_label.setText(f"Your key is kept in: {KEYCHAIN}")
        dialog.check_key()
        wait_for(lambda: "accepted" in dialog.status_label.text())
        settle()
        save(dialog, out / "settings.png")
        dialog.close()

        first = SettingsDialog(
            Settings(hub_url=HUB),
            app.services.settings_store,
            CredentialStore(InMemoryKeyring()),
            app.services.gpu_probe,
            app.services.autostart,
            app.services.autostart_command,
            app.runner,
            client_factory=StubHub,
            first_run=True,
        )
        first.show()
        wait_for(lambda: app.runner.pending == 0 and first.gpu_combo.count() == 3)
        first.keychain_label.setText(f"Your key is kept in: {KEYCHAIN}")
        first.hub_edit.setText(HUB)
        first.key_edit.setText("revoked-key-Xb2Qf7pLr9TnW4kZ8vC1sD5gH3jM6yA0")
        first.check_key()
        wait_for(lambda: "did not accept" in first.status_label.text())
        settle()
        save(first, out / "first-run-wrong-key.png")
        first.close()

        question = QuitDialog(1)
        question.show()
        settle()
        save(question, out / "quit-question.png")
        question.close()

        save(tray_icons_sheet(), out / "tray-icons.png")
        app.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
