"""``TrayApp``: builds the tray app from its collaborators and runs its flows.

It owns the controller, the shared actions, the tray icon (or, with no system tray, the progress
window in its place, saying why), the progress window, the Settings dialog and the notification
policy. Its flows: start-up (settings, history, key; first run or start working), Quit (asking
when a task runs), notifications, history persistence, opening the log folder.

Every collaborator comes in through ``Services``, so tests build a ``TrayApp`` with fakes and a
temp folder; ``entry.run`` builds the real ones. GUI thread only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import shiboken6
import structlog
from PySide6.QtCore import QObject, Qt, QTimer, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import QMessageBox, QSystemTrayIcon

from morag_worker import __version__
from morag_worker.core.config.autostart import Autostart
from morag_worker.core.config.contribution import ContributionStats
from morag_worker.core.config.credentials import CredentialStore, NoApiKey, resolve_api_key
from morag_worker.core.config.history import HistoryStore
from morag_worker.core.config.settings import Settings, SettingsStore
from morag_worker.core.diagnosis.report import SelfTestReport
from morag_worker.core.diagnosis.selftest import SelfTestSetup
from morag_worker.core.hub_client import HubClientLike, quick_client
from morag_worker.core.results import TaskRecord
from morag_worker.core.supervisor.events import StopMode, WorkerState, WorkerStatus
from morag_worker.core.supervisor.gpu import GpuInfo, GpuProbe

from .about import about_box
from .actions import WorkerActions
from .background import BackgroundOp, BackgroundRunner
from .controller import IDLE_STATES, SupervisorFactory, WorkerController
from .dialogs import (
    QuitChoice,
    QuitDialog,
    RestartDialog,
    StopNowChoice,
    StopNowDialog,
    log_folder_box,
)
from .history_view import HistoryModel
from .icons import IconSet
from .memory import release_free_memory
from .notifications import Level, Notice, NotificationPolicy
from .progress_text import lost_work
from .progress_window import ProgressWindow
from .qt_emit import emit
from .self_test_view import self_test_offer, self_test_results
from .settings_dialog import SettingsDialog, explain
from .sign_out import SignOutDialog
from .state_presentation import key_problem
from .stats_view import ExportPathDialog
from .tray_icon import TrayIcon
from .update_check import latest_release, update_notice

__all__ = ["IN_TRAY_NOTICE", "NOT_SET_UP_NOTICE", "NO_TRAY_NOTICE", "Services", "TrayApp"]

log = structlog.get_logger(__name__)

NO_TRAY_NOTICE = Notice(
    "No system tray on this desktop",
    "MoRAG Worker normally lives in the system tray (notification area), which this desktop does not "
    "offer, so this window stands in for it. Closing the window quits MoRAG Worker.",
    Level.INFO,
)
IN_TRAY_NOTICE = Notice(
    "MoRAG Worker is in your tray",
    "It keeps working in the background. Click its icon in the notification area to see progress, "
    "or right-click it for the menu.",
    Level.INFO,
)
NOT_SET_UP_NOTICE = Notice(
    "MoRAG Worker is not set up yet",
    "It needs the API key from your MoRAG account before it can take tasks. When you have it, "
    "choose Enter key… in its menu.",
    Level.WARNING,
)
HISTORY_SHOWN = 500
#: Quiet this long (no status change, no progress, no task in flight): give freed memory back.
IDLE_TRIM_MS = 10_000


@dataclass
class Services:
    """What the tray app uses; ``entry.run`` passes the real ones, tests pass fakes.

    Attributes:
        settings_store: Loads and saves the settings file.
        credentials: The keychain.
        gpu_probe: Lists GPUs for the Settings dialog.
        autostart: Start-at-login mechanism, or None where unsupported.
        autostart_command: The argv that autostart launches.
        history: The persisted task history.
        supervisor_factory: Builds the supervisor given its listener.
        log_dir: The folder "Open log folder" opens.
        tray_available: Whether a system tray exists (``QSystemTrayIcon.isSystemTrayAvailable``).
        tray_retry_ms: Without a tray at start, how often to look again.
        tray_retries: And how many times (the panel may start after the app at login).
        open_url: Opens a folder in the file manager (``QDesktopServices.openUrl``); a false
            answer means no file manager could be started.
        client_factory: Builds a hub client for the key check.
        env: The environment, for ``MORAG_API_KEY``.
        api_key_file: ``--api-key-file``, when given.
        clock: Epoch seconds.
    """

    settings_store: SettingsStore
    credentials: CredentialStore
    gpu_probe: GpuProbe
    autostart: Autostart | None
    autostart_command: Callable[[], Sequence[str]]
    history: HistoryStore
    supervisor_factory: SupervisorFactory
    log_dir: Path
    tray_available: Callable[[], bool] = QSystemTrayIcon.isSystemTrayAvailable
    tray_retry_ms: int = 2000
    tray_retries: int = 15
    open_url: Callable[[QUrl], object] = QDesktopServices.openUrl
    client_factory: Callable[[str, str], HubClientLike] = quick_client
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    api_key_file: Path | None = None
    clock: Callable[[], float] = time.time


class TrayApp(QObject):
    """The tray app's objects and flows. Call ``start()`` once the event loop may run.

    Attributes:
        controller: The only door to the worker.
        actions: The menu's actions.
        window: The progress window.
        tray: The tray icon; None where there is no system tray.
        settings: The settings last loaded or saved.
        settings_dialog: The open Settings dialog, if any.
        notices: Every notice shown, newest last (the log of what the user was told).
    """

    #: Everything is shut down: the caller may leave the event loop.
    finished = Signal()
    #: Start-up is done (settings, history and key looked at); for "gui.ready" and tests.
    ready = Signal()

    def __init__(self, services: Services, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.runner = BackgroundRunner(self, name="gui")
        self.icons = IconSet()
        self.controller = WorkerController(services.supervisor_factory, clock=services.clock, parent=self)
        self.actions = WorkerActions(self.controller, self)
        self.history_model = HistoryModel(limit=HISTORY_SHOWN, clock=services.clock, parent=self)
        self.window = ProgressWindow(
            self.controller, self.actions, self.icons, self.history_model, clock=services.clock
        )
        self.tray: TrayIcon | None = None
        self.settings = Settings()
        self.settings_dialog: SettingsDialog | None = None
        self.log_folder_box: QMessageBox | None = None
        self.about: QMessageBox | None = None
        self.notices: list[Notice] = []
        #: A newer worker release the hub advertises, once the check found one.
        self.update_version: str | None = None
        self._update_checked = False
        self._policy = NotificationPolicy()
        self._finished = False
        self._set_up = False  # a key was found or saved: the worker can work
        self._tray_checks_left = 0
        self._tray_timer = QTimer(self)
        self._tray_timer.timeout.connect(self._look_for_tray)
        # Restarted by every event; fires once the app has been quiet for a while (see memory.py).
        self._idle_timer = QTimer(self)
        self._idle_timer.setSingleShot(True)
        self._idle_timer.setInterval(IDLE_TRIM_MS)
        self._idle_timer.timeout.connect(self._quiet)
        for event in (
            self.controller.state_changed,
            self.controller.task_progress,
            self.controller.task_finished,
        ):
            event.connect(self._restart_idle_timer)
        self.ready.connect(self._restart_idle_timer)

        self.actions.show_progress.triggered.connect(self.show_window)
        self.actions.settings.triggered.connect(self._open_settings)
        self.actions.enter_key.triggered.connect(self._open_settings)
        self.actions.before_stop_now = self.confirm_stop_now
        self.actions.open_logs.triggered.connect(self.open_log_folder)
        self.actions.about.triggered.connect(self.show_about)
        self.actions.sign_out.triggered.connect(self.request_sign_out)
        self.window.contribution.export_requested.connect(self.export_history)
        self.window.history.export_requested.connect(self.export_history)
        self.window.contribution.gpu_refresh_wanted.connect(self.refresh_gpus)
        self.actions.quit.triggered.connect(self.request_quit)
        self.window.quit_requested.connect(self.request_quit)
        self.controller.state_changed.connect(self._on_status)
        self.controller.task_finished.connect(self._on_task_finished)
        self.controller.failed.connect(self._on_failed)
        self.controller.closed.connect(self._on_closed)

    # -- start-up -----------------------------------------------------------------------------

    def start(self) -> None:
        """Show the tray icon (or the window, saying why), then load settings, history and key."""
        if self.services.tray_available():
            self._show_tray()
        else:
            log.info("gui.no_system_tray")
            self.window.quit_on_close = True
            self.window.show_notice(NO_TRAY_NOTICE)
            self.notices.append(NO_TRAY_NOTICE)
            self.window.bring_to_front()
            # At login the panel may come up after this app (QTBUG-61898): look again for a while.
            self._tray_checks_left = self.services.tray_retries
            self._tray_timer.start(self.services.tray_retry_ms)
        history = self.services.history
        BackgroundOp(
            self.runner,
            lambda: history.load(limit=HISTORY_SHOWN),
            self.history_model.set_records,
            label="history",
        ).failure(lambda exc: log.warning("gui.history_unreadable", error=str(exc))).run()
        self.refresh_stats()
        BackgroundOp(
            self.runner, self.services.settings_store.load, self._settings_loaded, label="settings"
        ).failure(self._settings_unreadable).run()

    @Slot()
    @Slot(object)
    def _restart_idle_timer(self, _event: object = None) -> None:
        self._idle_timer.start()

    @Slot()
    def _quiet(self) -> None:
        if not self._finished and not self.controller.busy and self.runner.pending == 0:
            release_free_memory()

    # -- contribution, GPU, export ------------------------------------------------------------

    def refresh_stats(self) -> None:
        """Recompute this week's and all-time totals from the history (in the background)."""
        history, clock = self.services.history, self.services.clock
        view = self.window.contribution

        def shown(stats: ContributionStats) -> None:
            if shiboken6.isValid(view):
                view.set_stats(stats)

        BackgroundOp(self.runner, lambda: history.stats(clock()), shown, label="stats").failure(
            lambda exc: log.warning("gui.stats_unreadable", error=f"{exc.__class__.__name__}: {exc}")
        ).run()

    @Slot()
    def refresh_gpus(self) -> None:
        """Read the GPUs again (NVML, in the background) for the Contribution tab."""
        probe = self.services.gpu_probe
        view = self.window.contribution

        def shown(gpus: list[GpuInfo]) -> None:
            if shiboken6.isValid(view):
                view.set_gpus(gpus)

        BackgroundOp(self.runner, probe.list_gpus, shown, label="gpus").failure(
            lambda exc: log.info("gui.gpus_unreadable", error=f"{exc.__class__.__name__}: {exc}")
        ).run()

    @Slot()
    def export_history(self) -> None:
        """Ask where to save the history as CSV, then write it in the background."""
        suggested = Path.home() / f"morag-worker-history-{time.strftime('%Y-%m-%d')}.csv"
        target = ExportPathDialog.ask(suggested, self.window if self.window.isVisible() else None)
        if target is None:
            return
        history = self.services.history

        def written(count: int) -> None:
            tasks = "1 task" if count == 1 else f"{count:,} tasks"
            self._notify(Notice("History exported", f"Saved {tasks} to {target}.", Level.INFO))

        BackgroundOp(self.runner, lambda: history.export_csv(target), written, label="export").failure(
            lambda exc: self._notify(
                Notice(
                    "The history was not exported",
                    f"It could not be saved to {target}: {getattr(exc, 'strerror', None) or exc}.",
                    Level.WARNING,
                )
            )
        ).run()

    def _settings_loaded(self, settings: Settings) -> None:
        self.settings = settings
        services = self.services

        def find_key() -> bool:
            try:
                resolve_api_key(
                    env=services.env,
                    api_key_file=services.api_key_file,
                    store=services.credentials,
                    hub_url=settings.hub_url,
                )
            except NoApiKey:
                return False
            return True

        BackgroundOp(self.runner, find_key, self._key_looked_up, label="find key").failure(
            self._key_unavailable
        ).run()

    def _settings_unreadable(self, exc: Exception) -> None:
        problem = explain(exc)
        self._notify(
            Notice(
                "MoRAG Worker cannot read its settings", f"{problem.message} {problem.advice}", Level.ERROR
            )
        )
        self.settings = Settings()
        emit(self.ready)

    def _key_looked_up(self, has_key: bool) -> None:
        self._set_up = has_key
        if not has_key:
            log.info("gui.first_run")
            self.show_settings(first_run=True)
        elif self.settings.start_working_on_launch:
            self.controller.start()
        emit(self.ready)

    def _key_unavailable(self, exc: Exception) -> None:
        # The keychain is missing or locked: the Settings dialog explains it and offers the fix.
        log.warning("gui.key_unavailable", error=f"{exc.__class__.__name__}: {exc}")
        self.show_settings(first_run=True)
        emit(self.ready)

    def _show_tray(self) -> None:
        self.tray = TrayIcon(
            self.controller, self.actions, self.icons, clock=self.services.clock, parent=self
        )
        self.tray.clicked.connect(self.show_window)
        self.tray.show()
        app = QGuiApplication.instance()
        if isinstance(app, QGuiApplication):
            app.styleHints().colorSchemeChanged.connect(self.tray.refresh_theme)

    @Slot()
    def _look_for_tray(self) -> None:
        if self.services.tray_available():
            self._tray_timer.stop()
            log.info("gui.system_tray_appeared")
            self._show_tray()
            self.window.quit_on_close = False
            self.window.clear_notice()
            return
        self._tray_checks_left -= 1
        if self._tray_checks_left <= 0:
            self._tray_timer.stop()

    # -- windows ------------------------------------------------------------------------------

    @Slot()
    def show_window(self) -> None:
        """Show the progress window in front."""
        self.window.bring_to_front()

    @Slot()
    def _open_settings(self) -> None:
        self.show_settings()

    def show_settings(self, first_run: bool = False) -> SettingsDialog:
        """Open the Settings dialog (or bring the open one to the front)."""
        if self.settings_dialog is not None:
            self.settings_dialog.show()
            self.settings_dialog.raise_()
            self.settings_dialog.activateWindow()
            return self.settings_dialog
        services = self.services
        dialog = SettingsDialog(
            self.settings,
            services.settings_store,
            services.credentials,
            services.gpu_probe,
            services.autostart,
            services.autostart_command,
            self.runner,
            client_factory=services.client_factory,
            first_run=first_run,
        )
        dialog.setWindowIcon(self.icons.app())
        dialog.saved.connect(lambda settings: self._settings_saved(settings, first_run))
        dialog.finished.connect(lambda _code: self._settings_closed(first_run))
        self.settings_dialog = dialog
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()
        return dialog

    def _settings_saved(self, settings: Settings, first_run: bool) -> None:
        self.settings = settings
        self._set_up = True
        if key_problem(self.controller.status) is not None:
            # The key was what stopped the worker; a new one was checked and saved: work again,
            # so the error goes without the person pressing Start.
            log.info("gui.key_fixed")
            self.controller.start()
            return
        if first_run:
            self.controller.start()
            if self.tray is not None:  # without a tray the window is already in front
                self._notify(IN_TRAY_NOTICE)
            QTimer.singleShot(0, self, self.offer_self_test)
        elif self.controller.status.state not in IDLE_STATES:
            # Asked once the Settings dialog has closed, not on top of it.
            QTimer.singleShot(0, self, self._offer_restart)

    def _offer_restart(self) -> None:
        if self.controller.status.state in IDLE_STATES or self.controller.quitting:
            return
        parent = self.window if self.window.isVisible() else None
        if RestartDialog.ask(busy=self.controller.busy, parent=parent):
            log.info("gui.restart_for_settings", busy=self.controller.busy)
            self.controller.restart()
        else:
            self._notify(
                Notice(
                    "Settings saved", "The new settings apply the next time the worker starts.", Level.INFO
                )
            )

    # -- the self-test, offered after the first run ----------------------------------------------

    #: The open offer and the last results box (non-modal; tests press their buttons).
    self_test_offer_box: QMessageBox | None = None
    self_test_box: QMessageBox | None = None

    @Slot()
    def offer_self_test(self) -> None:
        """Offer the self-test (after the first run's Save): does everything a worker needs work here?"""
        box, run = self_test_offer(self.window if self.window.isVisible() else None)
        run.clicked.connect(self.run_self_test)
        self.self_test_offer_box = box
        box.show()

    @Slot()
    def run_self_test(self) -> None:
        services = self.services
        setup = SelfTestSetup(
            settings=self.settings,
            env=services.env,
            api_key_file=services.api_key_file,
            credentials=services.credentials,
            hub_client_factory=services.client_factory,
            gpu_probe=services.gpu_probe,
        )
        self.controller.self_test_done.connect(self._show_self_test, Qt.ConnectionType.SingleShotConnection)
        self.controller.run_self_test(setup)

    def _show_self_test(self, report: SelfTestReport) -> None:
        box = self_test_results(report, self.window if self.window.isVisible() else None)
        self.self_test_box = box
        box.show()

    def _settings_closed(self, first_run: bool = False) -> None:
        dialog, self.settings_dialog = self.settings_dialog, None
        if dialog is not None:
            dialog.deleteLater()
        if first_run and not self._set_up and not self._finished:
            # Cancelled before a key was saved: say what is missing and where to enter it.
            self.actions.enter_key.setVisible(True)
            self._notify(NOT_SET_UP_NOTICE)

    @Slot()
    def show_about(self) -> None:
        parent = self.window if self.window.isVisible() else None
        box = about_box(self.icons, parent, hub_url=self.settings.hub_url or None, update=self.update_version)
        self.about = box
        box.show()

    # -- sign out -----------------------------------------------------------------------------

    @Slot()
    def request_sign_out(self) -> None:
        """Ask, then stop the worker and remove the key from the keychain (as ``logout`` does)."""
        hub_url = self.settings.hub_url
        parent = self.window if self.window.isVisible() else None
        if not SignOutDialog.ask(hub_url, busy=self.controller.busy, parent=parent):
            log.info("gui.sign_out_cancelled")
            return
        log.info("gui.sign_out", busy=self.controller.busy)
        if self.controller.status.state not in IDLE_STATES:
            self.controller.stop_now()
        credentials = self.services.credentials

        def signed_out(removed: bool) -> None:
            where = credentials.backend_description
            message = (
                f"Your API key for {hub_url} was removed from {where}. Enter a key in Settings to work again."
                if removed
                else f"No API key for {hub_url} was stored in {where}. Enter a key in Settings to work again."
            )
            self._notify(Notice("Signed out", message, Level.INFO))

        BackgroundOp(self.runner, lambda: credentials.delete(hub_url), signed_out, label="sign out").failure(
            lambda exc: self._notify(
                Notice("The key could not be removed", explain(exc).message, Level.WARNING)
            )
        ).run()

    @Slot()
    def open_log_folder(self) -> None:
        """Create the log folder if needed and open it in the file manager."""
        folder = self.services.log_dir
        open_url = self.services.open_url

        def make() -> Path:
            folder.mkdir(parents=True, exist_ok=True)
            return folder

        def opened(path: Path) -> None:
            log.info("gui.open_log_folder", path=str(path))
            if open_url(QUrl.fromLocalFile(str(path))) is False:
                log.info("gui.no_file_manager", path=str(path))
                self._show_log_folder_path(path)

        BackgroundOp(self.runner, make, opened, label="log folder").failure(
            lambda exc: self._notify(Notice("Cannot open the log folder", f"{folder}: {exc}", Level.WARNING))
        ).run()

    def _show_log_folder_path(self, path: Path) -> None:
        if self.log_folder_box is not None and shiboken6.isValid(self.log_folder_box):
            self.log_folder_box.close()
        box = log_folder_box(path, self.window if self.window.isVisible() else None)
        box.finished.connect(lambda _code: setattr(self, "log_folder_box", None))
        self.log_folder_box = box
        box.show()

    def confirm_stop_now(self) -> bool:
        """Whether "Stop now" goes ahead: asked first when a task is past 10 % (its work is redone).

        "Finish, then pause" in that question finishes instead (and answers False).
        """
        lost = lost_work(list(self.controller.tasks.values()))
        if not lost:
            return True
        parent = self.window if self.window.isVisible() else None
        choice = StopNowDialog.ask(lost, parent)
        log.info("gui.stop_now_asked", choice=choice.value if choice else "cancel", tasks=len(lost))
        if choice is StopNowChoice.FINISH:
            self.controller.finish()
        return choice is StopNowChoice.STOP_NOW

    # -- quitting -----------------------------------------------------------------------------

    @Slot()
    def request_quit(self) -> None:
        """Quit; when a task runs, ask whether to finish it first or hand it back now."""
        if self.controller.busy:
            parent = self.window if self.window.isVisible() else None
            choice = QuitDialog.ask(len(self.controller.tasks), parent)
            if choice is None:
                log.info("gui.quit_cancelled")
                return
            if choice is QuitChoice.FINISH_FIRST:
                self._notify(
                    Notice(
                        "MoRAG Worker will quit soon", "It quits when the current task is done.", Level.INFO
                    )
                )
                self.controller.quit(StopMode.FINISH)
            else:
                self.controller.quit(StopMode.NOW)
            return
        self.controller.quit(StopMode.NOW)

    def shutdown(self) -> None:
        """Quit without asking (SIGTERM, session end): a task in flight is handed back."""
        log.info("gui.shutdown")
        self.controller.quit(StopMode.NOW)

    @Slot()
    def _on_closed(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._tray_timer.stop()
        self._idle_timer.stop()
        if self.tray is not None:
            self.tray.hide()
        if self.settings_dialog is not None:
            self.settings_dialog.close()
        self.window.quit_on_close = False
        self.window.hide()
        self.runner.wait_for_done(5000)
        emit(self.finished)

    def dispose(self) -> None:
        """Delete the top-level widgets now, while the QApplication still exists."""
        self._idle_timer.stop()
        self._tray_timer.stop()
        for widget in (self.settings_dialog, self.window):
            if widget is not None and shiboken6.isValid(widget):
                shiboken6.delete(widget)
        self.settings_dialog = None
        if self.tray is not None and shiboken6.isValid(self.tray):
            self.tray.hide()
            shiboken6.delete(self.tray.menu)
        if shiboken6.isValid(self.actions.snooze_menu):
            shiboken6.delete(self.actions.snooze_menu)

    # -- events -------------------------------------------------------------------------------

    @Slot(object)
    def _on_status(self, status: WorkerStatus) -> None:
        log.info("gui.status", state=status.state.value, message=status.message)
        if status.state is WorkerState.RUNNING and not self._update_checked:
            self._update_checked = True
            self._check_for_update()
        notice = self._policy.on_status(status, expected=self.controller.expected(status.state))
        if notice is not None:
            self._notify(notice)

    @Slot(object)
    def _on_task_finished(self, record: TaskRecord) -> None:
        history = self.services.history
        self.runner.submit(
            lambda: history.append(record),
            on_success=lambda _none: self.refresh_stats(),
            on_failure=lambda exc: log.warning(
                "gui.history_not_saved", error=f"{exc.__class__.__name__}: {exc}"
            ),
            label="save history",
        )
        # Stop now, snooze and quit all expect STOPPING: the task going back is what was asked.
        requeue_expected = self.controller.quitting or self.controller.expected(WorkerState.STOPPING)
        notice = self._policy.on_task_finished(record, requeue_expected=requeue_expected)
        if notice is not None:
            self._notify(notice)

    def _check_for_update(self) -> None:
        services, hub_url = self.services, self.settings.hub_url

        def ask() -> str | None:
            key = resolve_api_key(
                env=services.env,
                api_key_file=services.api_key_file,
                store=services.credentials,
                hub_url=hub_url,
            ).key
            return latest_release(services.client_factory, hub_url, key, __version__)

        def answered(version: str | None) -> None:
            if version is None:
                log.info("gui.up_to_date", version=__version__)
                return
            log.info("gui.update_available", version=version, running=__version__)
            self.update_version = version
            self._notify(update_notice(version))

        BackgroundOp(self.runner, ask, answered, label="update check").failure(
            lambda exc: log.info("gui.update_check_failed", error=f"{exc.__class__.__name__}: {exc}")
        ).run()

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self._notify(self._policy.on_failed(message))

    def _notify(self, notice: Notice) -> None:
        log.info("gui.notice", title=notice.title, level=notice.level.value)
        self.notices.append(notice)
        if self.tray is not None:
            self.tray.notify(notice)
        else:
            self.window.show_notice(notice)
