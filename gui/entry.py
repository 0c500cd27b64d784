"""``run(args) -> int``: the tray app's entry point, called by ``morag_worker.__main__`` after parsing.

It creates the ``QApplication``, makes sure one instance runs per user and config folder (a second
launch asks the first to show its window and exits 0), turns SIGTERM/SIGINT into a clean quit
(the task in flight is handed back), adds a log file, builds the real collaborators, including
the core ``Supervisor``, and runs ``tray_app.TrayApp``.

Runs on the main thread; signal handlers only write to a socket that the Qt loop watches.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

import structlog
from PySide6.QtCore import (
    QMessageLogContext,
    QObject,
    QSocketNotifier,
    QTimer,
    QtMsgType,
    Signal,
    Slot,
    qInstallMessageHandler,
)
from PySide6.QtWidgets import QApplication

from morag_worker import APP_NAME, DISPLAY_NAME, __version__
from morag_worker.core.config.autostart import autostart_for_platform, launch_command
from morag_worker.core.config.credentials import CredentialStore, key_file_path
from morag_worker.core.config.history import HISTORY_FILE_NAME, HistoryStore, default_history_path
from morag_worker.core.config.settings import SettingsStore, default_log_dir
from morag_worker.core.supervisor.events import SupervisorListener
from morag_worker.core.supervisor.gpu import NvmlProbe

from .controller import SupervisorFactory, SupervisorLike
from .qt_emit import emit
from .single_instance import SingleInstance, server_name
from .tray_app import Services, TrayApp

__all__ = ["AppPaths", "SignalWakeup", "configure_application", "make_supervisor_factory", "run"]

log = structlog.get_logger(__name__)
READY_EVENT = "gui.ready"


@dataclass(frozen=True)
class AppPaths:
    """Where the tray app keeps its files.

    With ``--config-dir`` everything stays inside that folder (tests, portable and dev runs);
    otherwise the platform's per-user folders (``platformdirs``).
    """

    config_dir: Path | None
    history_file: Path
    log_dir: Path

    @classmethod
    def for_config_dir(cls, config_dir: Path | None) -> AppPaths:
        if config_dir is None:
            return cls(None, default_history_path(), default_log_dir())
        return cls(config_dir, config_dir / "state" / HISTORY_FILE_NAME, config_dir / "logs")


def make_supervisor_factory(
    settings_store: SettingsStore, credentials: CredentialStore, api_key_file: Path | None
) -> SupervisorFactory:
    """A factory of the core ``Supervisor`` in its production wiring (imported when first built)."""

    def build(listener: SupervisorListener) -> SupervisorLike:
        from morag_worker.core.supervisor.supervisor import supervisor_for

        return supervisor_for(
            listener, settings_store=settings_store, credentials=credentials, api_key_file=api_key_file
        )

    return build


class SignalWakeup(QObject):
    """Delivers SIGTERM/SIGINT to the Qt loop: the C handler writes to a socket a notifier watches.

    Python runs signal handlers only between bytecodes, which never happens while Qt waits in C;
    ``signal.set_wakeup_fd`` makes the wait end. Only on the main thread.
    """

    #: A signal arrived (its number).
    received = Signal(int)

    def __init__(
        self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT), parent: QObject | None = None
    ):
        super().__init__(parent)
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, self._ignore) for sig in signals}
        self._notifier = QSocketNotifier(self._read.fileno(), QSocketNotifier.Type.Read, self)
        self._notifier.activated.connect(self._drain)

    @staticmethod
    def _ignore(signum: int, frame: FrameType | None) -> None:
        # The wake-up byte carries the signal; _drain acts on it in the Qt loop.
        return None

    @Slot()
    def _drain(self) -> None:
        try:
            data = self._read.recv(64)
        except BlockingIOError:
            return
        for signum in data:
            log.info("gui.signal", signal=signal.Signals(signum).name)
            emit(self.received, signum)

    def close(self) -> None:
        """Restore the previous handlers and wake-up fd."""
        self._notifier.setEnabled(False)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._old_fd)
        self._read.close()
        self._write.close()


def _add_log_file(log_dir: Path) -> logging.Handler | None:
    root = logging.getLogger()
    formatter = root.handlers[0].formatter if root.handlers else None
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            log_dir / "tray.log", maxBytes=2_000_000, backupCount=3, encoding="utf-8"
        )
    except OSError as exc:
        log.warning("gui.log_file_unavailable", path=str(log_dir), error=str(exc))
        return None
    if formatter is not None:
        handler.setFormatter(formatter)
    root.addHandler(handler)
    return handler


_QT_LEVELS = {
    QtMsgType.QtDebugMsg: logging.DEBUG,
    QtMsgType.QtInfoMsg: logging.INFO,
    QtMsgType.QtWarningMsg: logging.WARNING,
    QtMsgType.QtCriticalMsg: logging.ERROR,
    QtMsgType.QtFatalMsg: logging.CRITICAL,
}


def _log_qt_message(kind: QtMsgType, context: QMessageLogContext, message: str) -> None:
    # Qt's own warnings go through the same pipeline as everything else (JSON off a terminal).
    log.log(_QT_LEVELS.get(kind, logging.WARNING), "qt.message", message=message, category=context.category)


def _log_unhandled(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    # Exceptions raised in Qt slots land here; they are logged, never printed and forgotten.
    log.error("gui.unhandled_exception", error=f"{kind.__name__}: {value}", exc_info=(kind, value, tb))


def build_services(
    config_dir: Path | None,
    paths: AppPaths,
    api_key_file: Path | None,
    clock: Callable[[], float] = time.time,
) -> Services:
    """The real collaborators for ``TrayApp``."""
    store = SettingsStore(config_dir)
    credentials = CredentialStore(key_file=key_file_path(config_dir))
    extra = ["--config-dir", str(config_dir.resolve())] if config_dir is not None else []
    return Services(
        settings_store=store,
        credentials=credentials,
        gpu_probe=NvmlProbe(),
        autostart=autostart_for_platform(),
        autostart_command=lambda: launch_command(extra_args=extra),
        history=HistoryStore(paths.history_file),
        supervisor_factory=make_supervisor_factory(store, credentials, api_key_file),
        log_dir=paths.log_dir,
        env=dict(os.environ),
        api_key_file=api_key_file,
        clock=clock,
    )


def configure_application(app: QApplication) -> None:
    """Names and behaviour of the live app (``render_screenshots`` sets its app up the same way)."""
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName(DISPLAY_NAME)
    app.setApplicationVersion(__version__)
    app.setDesktopFileName(APP_NAME)
    app.setQuitOnLastWindowClosed(False)


def run(args: object) -> int:
    """Run the tray app until Quit or SIGTERM; the exit code (0 after a clean quit or a hand-off)."""
    config_dir: Path | None = getattr(args, "config_dir", None)
    api_key_file: Path | None = getattr(args, "api_key_file", None)
    paths = AppPaths.for_config_dir(config_dir)

    existing = QApplication.instance()
    app = existing if isinstance(existing, QApplication) else QApplication([sys.argv[0]])
    configure_application(app)

    instance = SingleInstance(server_name(config_dir))
    if instance.hand_off():
        log.info("gui.already_running", name=instance.name)
        return 0
    instance.listen()

    file_handler = _add_log_file(paths.log_dir)
    previous_qt_handler = qInstallMessageHandler(_log_qt_message)
    previous_hook = sys.excepthook
    sys.excepthook = _log_unhandled
    wakeup = SignalWakeup()
    tray_app = TrayApp(build_services(config_dir, paths, api_key_file))
    app.setWindowIcon(tray_app.icons.app())
    instance.show_requested.connect(tray_app.show_window)
    wakeup.received.connect(lambda _signum: tray_app.shutdown())
    tray_app.finished.connect(app.quit)
    tray_app.ready.connect(lambda: log.info("gui.started", tray=tray_app.tray is not None))

    def started() -> None:
        tray_app.start()
        log.info(
            READY_EVENT, pid=os.getpid(), tray=tray_app.tray is not None, config_dir=str(config_dir or "")
        )

    QTimer.singleShot(0, started)
    try:
        code = app.exec()
    finally:
        tray_app.dispose()
        wakeup.close()
        instance.close()
        sys.excepthook = previous_hook
        qInstallMessageHandler(previous_qt_handler)
        if file_handler is not None:
            logging.getLogger().removeHandler(file_handler)
            file_handler.close()
    log.info("gui.exited", code=code)
    return int(code)
