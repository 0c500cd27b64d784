"""The Settings dialog, also shown on first run: hub, API key, worker options, when to contribute.

The key is checked against the hub in the background (``HubClient.queue_info``), which shows
the user id and queue it maps to; it is stored with ``CredentialStore`` (the OS keychain),
never in the settings file. Saving validates first, unless neither the hub nor the key changed.
Every failure is said in words a contributor understands, with what to do next (``explain``).

Keychain, HTTP, GPU probing, the settings file and autostart all run through the background
helper. GUI thread only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from PySide6.QtCore import QEvent, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from morag_worker import DISPLAY_NAME
from morag_worker.core.config.autostart import Autostart, AutostartError
from morag_worker.core.config.credentials import (
    CredentialError,
    CredentialStore,
    KeychainProblem,
    KeychainUnavailable,
    KeyPlace,
)
from morag_worker.core.config.schedule import ScheduleError, parse_windows
from morag_worker.core.config.settings import (
    DEFAULT_HUB_URL,
    DEFAULT_TEMP_LIMIT_C,
    InvalidHubUrl,
    Settings,
    SettingsError,
    SettingsStore,
    normalise_hub_url,
)
from morag_worker.core.hub_client import (
    HubClientLike,
    HubError,
    HubUnreachable,
    KeyRejected,
    QueueInfo,
    quick_client,
)
from morag_worker.core.naming import WorkerType, consumed_queues
from morag_worker.core.supervisor.gpu import GpuInfo, GpuProbe
from morag_worker.core.wording import error_words, sentence

from .background import BackgroundOp, BackgroundRunner
from .format import window_title
from .qt_emit import emit
from .screen_fit import FittingScrollArea, available_geometry, fit_to_screen

__all__ = ["Explanation", "SettingsDialog", "explain"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Explanation:
    """What went wrong and what to do next, in words for a person (``events.Problem`` says why
    the supervisor stopped; this says what the key dialog shows)."""

    message: str
    advice: str = ""


def explain(exc: BaseException, hub_url: str = "") -> Explanation:
    """Turn an error from checking or saving into an ``Explanation``; pure."""
    where = f" at {hub_url}" if hub_url else ""
    if isinstance(exc, KeyRejected):
        return Explanation(
            "The hub did not accept this API key.",
            "Check that you copied the whole key. If it was revoked or has expired, create a new one "
            "in your MoRAG account or ask your MoRAG admin.",
        )
    if isinstance(exc, HubUnreachable):
        return Explanation(
            f"Cannot reach the hub{where}.",
            "Check the address and your network connection. The hub may also be down: try again later.",
        )
    if isinstance(exc, HubError):
        return Explanation(
            sentence(f"The hub answered with an error: {exc}"),
            "Try again in a few minutes. If it keeps happening, tell your MoRAG admin.",
        )
    if isinstance(exc, InvalidHubUrl) and not str(exc):
        return Explanation(
            "Enter the hub address first.",
            "Use the address your MoRAG admin gave you, such as https://hub.example.org.",
        )
    if isinstance(exc, InvalidHubUrl):
        return Explanation(
            sentence(f"The hub address is not valid: {exc}"),
            "Use the address your MoRAG admin gave you, such as https://hub.example.org.",
        )
    if isinstance(exc, KeychainUnavailable):
        return Explanation(_NO_KEYCHAIN if exc.problem is not KeychainProblem.LOCKED else _LOCKED)
    if isinstance(exc, CredentialError):  # InvalidApiKey, ApiKeyFileError
        return Explanation(sentence(exc.message), sentence(exc.advice))
    if isinstance(exc, SettingsError):
        return Explanation(sentence(exc.message), sentence(exc.advice))
    if isinstance(exc, AutostartError):
        return Explanation(sentence(str(exc)))
    return Explanation(sentence(f"Something went wrong: {error_words(exc)}"), "See the log for details.")


_NO_KEYCHAIN = (
    "This computer has no keychain (the safe store for passwords) that MoRAG Worker can use, "
    "so the key cannot be kept there."
)
_LOCKED = "Your keychain is locked, so the key cannot be kept there until it is unlocked."
_PLACE_TEXT = {
    KeyPlace.KEYCHAIN: "Your key is kept in: {backend}.",
    KeyPlace.SESSION: "Chosen: the key is kept only while MoRAG Worker runs.",
    KeyPlace.FILE: "Chosen: the key is kept in a file in MoRAG Worker's settings folder.",
}
_FILE_WARNING = "Anyone who can use your user account, or read a backup of it, can read the key in that file."

_OK_STYLE = "color:#1e8449;"
_ERROR_STYLE = "color:#c0392b;"


class SettingsDialog(QDialog):
    """Settings and first run.

    Args:
        settings: The current settings (shown; the result replaces them).
        store: Where settings are saved.
        credentials: The keychain.
        gpu_probe: Lists the GPUs for the GPU choice.
        autostart: Start-at-login mechanism; None where unsupported.
        autostart_command: The argv autostart should launch.
        runner: The background helper.
        client_factory: Builds a hub client from (hub URL, key).
        first_run: Welcome text, and "Save and start" instead of "Save".
    """

    #: The settings were saved and the key stored (Settings).
    saved = Signal(object)
    #: A key check finished: True when the hub accepted it (for tests and the status line).
    checked = Signal(bool)

    def __init__(
        self,
        settings: Settings,
        store: SettingsStore,
        credentials: CredentialStore,
        gpu_probe: GpuProbe,
        autostart: Autostart | None,
        autostart_command: Callable[[], Sequence[str]],
        runner: BackgroundRunner,
        *,
        client_factory: Callable[[str, str], HubClientLike] = quick_client,
        first_run: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._settings = settings
        self._store = store
        self._credentials = credentials
        self._probe = gpu_probe
        self._autostart = autostart
        self._autostart_command = autostart_command
        self._runner = runner
        self._client_factory = client_factory
        self._first_run = first_run
        self._stored: tuple[str, str | None] | None = None  # (hub, key) as found in the keychain
        self._verified: tuple[str, str, QueueInfo] | None = None
        self._generation = 0
        self._busy = False
        self._checking = False
        self._no_keychain = False
        #: Where the key was kept by the last save (the keychain, or the person's choice without one).
        self.saved_place: KeyPlace | None = None
        self._backend_name = "the system keychain"
        self.setWindowTitle(f"Welcome to {DISPLAY_NAME}" if first_run else window_title("Settings"))
        self.setMinimumWidth(540)  # lowered by fit_to_screen on a small screen
        self.setStyleSheet("QLabel#muted { color: palette(placeholder-text); }")

        # -- connection --
        self.intro = QLabel(
            "Welcome! MoRAG Worker lets your computer process tasks from your own MoRAG queue. "
            "Paste the API key from your MoRAG account to begin."
            if first_run
            else "Where your tasks come from, and the key that lets this computer take them."
        )
        self.intro.setWordWrap(True)
        # First run: the address is the admin's to give; the built-in default is a developer's hub.
        fresh = first_run and settings.hub_url == DEFAULT_HUB_URL
        self.hub_edit = QLineEdit("" if fresh else settings.hub_url)
        self.hub_edit.setPlaceholderText("https://hub.example.org")
        self.key_edit = QLineEdit()
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_edit.setPlaceholderText("Paste your API key")
        self.show_key = QToolButton()
        self.show_key.setText("Show")
        self.show_key.setCheckable(True)
        self.show_key.setToolTip("Show or hide the key")
        self.show_key.toggled.connect(self._toggle_key_visible)
        self.check_button = QPushButton("Check key")
        self.check_button.clicked.connect(self._on_check_clicked)
        key_row = QHBoxLayout()
        key_row.setSpacing(4)
        key_row.addWidget(self.key_edit, 1)
        key_row.addWidget(self.show_key)
        key_row.addWidget(self.check_button)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status_label.setTextFormat(Qt.TextFormat.RichText)
        self.keychain_label = QLabel("Keychain: looking…")
        self.keychain_label.setObjectName("muted")
        self.keychain_label.setWordWrap(True)
        # Without a keychain: the person chooses, knowingly, where the key goes (shown only then).
        self.place_box = QGroupBox("Where to keep the key")
        self.place_reason = QLabel(_NO_KEYCHAIN)
        self.place_reason.setWordWrap(True)
        self.keep_session = QRadioButton("Only while MoRAG Worker runs (paste it again after a restart)")
        self.keep_file = QRadioButton("In a file in MoRAG Worker's settings folder that only you can read")
        self.keep_session.setChecked(True)
        self.file_warning = QLabel(_FILE_WARNING)
        self.file_warning.setWordWrap(True)
        self.file_warning.setObjectName("muted")
        self.file_warning.setVisible(False)
        self.keep_file.toggled.connect(self.file_warning.setVisible)
        self.keep_file.toggled.connect(self._place_changed)
        place_layout = QVBoxLayout(self.place_box)
        place_layout.addWidget(self.place_reason)
        place_layout.addWidget(self.keep_session)
        place_layout.addWidget(self.keep_file)
        place_layout.addWidget(self.file_warning)
        self.place_box.setVisible(False)
        connection = QGroupBox("Connection")
        form = QFormLayout()
        form.addRow("Hub address", self.hub_edit)
        form.addRow("API key", key_row)
        # The messages sit below the form, full width: a form row sizes a wrapped label by its
        # size hint (a narrow guess), which left gaps and cut sentences; a box layout asks the
        # label its height for the real width.
        connection_layout = QVBoxLayout(connection)
        connection_layout.addLayout(form)
        connection_layout.addWidget(self.status_label)
        connection_layout.addWidget(self.place_box)
        connection_layout.addWidget(self.keychain_label)  # below the choice: says which was chosen

        # -- worker --
        self.concurrency = QSpinBox()
        self.concurrency.setRange(1, 64)
        self.concurrency.setValue(settings.concurrency)
        self.concurrency.setToolTip("How many tasks run at once. One per GPU is recommended.")
        self.gpu_combo = QComboBox()
        self._fill_gpus([])
        self.start_on_launch = QCheckBox("Start working when MoRAG Worker starts")
        # On first run the user is setting up to contribute: offer to keep doing so by default.
        self.start_on_launch.setChecked(settings.start_working_on_launch or first_run)
        self.start_at_login = QCheckBox("Start MoRAG Worker when I log in")
        self.start_at_login.setChecked(settings.start_at_login)
        if autostart is None:
            self.start_at_login.setEnabled(False)
            self.start_at_login.setToolTip("Not available on this system yet.")
        else:
            self.start_at_login.setToolTip(f"Uses {autostart.location}")
        worker = QGroupBox("Worker")
        worker_form = QFormLayout(worker)
        worker_form.addRow("Tasks at once", self.concurrency)
        worker_form.addRow("Use", self.gpu_combo)
        worker_form.addRow("", self.start_on_launch)
        worker_form.addRow("", self.start_at_login)
        rules = self._build_rules(settings)

        # -- buttons --
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        self.save_button = self.buttons.button(QDialogButtonBox.StandardButton.Save)
        if first_run:
            self.save_button.setText("Save and start")
        self.buttons.accepted.connect(self.save)
        self.buttons.rejected.connect(self.reject)

        body = QWidget()
        body_layout = QVBoxLayout(body)
        body_layout.setContentsMargins(0, 0, 0, 0)
        body_layout.addWidget(self.intro)
        body_layout.addWidget(connection)
        body_layout.addWidget(worker)
        body_layout.addWidget(rules)
        body_layout.addStretch(1)
        # The dialog grows for a long message; where the screen ends, the body scrolls instead.
        self.body = FittingScrollArea(body)
        layout = QVBoxLayout(self)
        layout.addWidget(self.body, 1)
        layout.addWidget(self.buttons)

        self.hub_edit.textEdited.connect(self._inputs_changed)
        self.key_edit.textEdited.connect(self._inputs_changed)
        fit_to_screen(self, self.sizeHint())
        self._load()

    def _build_rules(self, settings: Settings) -> QGroupBox:
        """The compact "When to contribute" section: each rule a check box and its value."""
        self.temp_rule = QCheckBox("Pause new tasks when the GPU reaches")
        self.temp_limit = QSpinBox()
        self.temp_limit.setRange(40, 110)
        self.temp_limit.setSuffix(" °C")
        self.temp_limit.setValue(settings.gpu_temp_limit_c or DEFAULT_TEMP_LIMIT_C)
        self.temp_rule.setChecked(settings.gpu_temp_limit_c is not None)
        self.temp_rule.setToolTip(
            "A task in hand always finishes; new ones are taken again once the GPU is 5 °C cooler."
        )
        self.idle_rule = QCheckBox("Only after no keyboard or mouse input for")
        self.idle_minutes = QSpinBox()
        self.idle_minutes.setRange(1, 1440)
        self.idle_minutes.setSuffix(" min")
        self.idle_minutes.setValue(settings.idle_minutes or 10)
        self.idle_rule.setChecked(settings.idle_minutes > 0)
        self.battery_rule = QCheckBox("Not on battery")
        self.battery_rule.setChecked(settings.pause_on_battery)
        self.fullscreen_rule = QCheckBox("Not while a full-screen app or game runs")
        self.fullscreen_rule.setToolTip(
            "Read on Windows, and on Linux with X11; a Wayland desktop does not say which window is active."
        )
        self.fullscreen_rule.setChecked(settings.pause_when_fullscreen)
        self.time_windows = QLineEdit(settings.time_windows)
        self.time_windows.setPlaceholderText("Any time, or e.g. Mon-Fri 18:00-08:00, Sat-Sun all day")
        self.time_windows.setToolTip(
            "Days and hours in your local time; a range that ends before it starts runs past midnight "
            "into the same day's early hours."
        )
        self.temp_rule.toggled.connect(self.temp_limit.setEnabled)
        self.idle_rule.toggled.connect(self.idle_minutes.setEnabled)
        self.temp_limit.setEnabled(self.temp_rule.isChecked())
        self.idle_minutes.setEnabled(self.idle_rule.isChecked())
        # Compact: two rules a row, so the dialog stays short on a small screen.
        box = QGroupBox("When to contribute")
        grid = QGridLayout(box)
        grid.addWidget(self.temp_rule, 0, 0)
        grid.addWidget(self.temp_limit, 0, 1)
        grid.addWidget(self.idle_rule, 1, 0)
        grid.addWidget(self.idle_minutes, 1, 1)
        times = QHBoxLayout()
        times.setSpacing(8)
        times.addWidget(QLabel("Only at these times"))
        times.addWidget(self.time_windows, 1)
        grid.addLayout(times, 2, 0, 1, 2)
        grid.addWidget(self.battery_rule, 3, 0, 1, 2)
        grid.addWidget(self.fullscreen_rule, 4, 0, 1, 2)
        grid.setVerticalSpacing(2)
        grid.setColumnStretch(0, 1)
        return box

    def _with_rules(self, settings: Settings) -> Settings:
        """``settings`` with the "When to contribute" fields as the form shows them.

        Raises:
            SettingsError: The times are not understood (the message quotes the part).
        """
        try:
            windows = parse_windows(self.time_windows.text())
        except ScheduleError as exc:
            raise SettingsError(
                f"the times to work are not understood: {exc}",
                advice="write them like Mon-Fri 18:00-08:00, Sat-Sun all day, or leave the field empty "
                "to work at any time",
            ) from None
        limit = self.temp_limit.value() if self.temp_rule.isChecked() else None
        resume = self._settings.gpu_temp_resume_c
        if resume is not None and (limit is None or resume >= limit):
            resume = None  # a resume temperature from the file that no longer fits: the default
        return dataclasses.replace(
            settings,
            gpu_temp_limit_c=limit,
            gpu_temp_resume_c=resume,
            idle_minutes=self.idle_minutes.value() if self.idle_rule.isChecked() else 0,
            pause_on_battery=self.battery_rule.isChecked(),
            time_windows=windows.text if windows is not None else "",
            pause_when_fullscreen=self.fullscreen_rule.isChecked(),
        )

    # -- size ------------------------------------------------------------------------------

    def event(self, event: QEvent) -> bool:
        handled = super().event(event)
        if event.type() in (QEvent.Type.LayoutRequest, QEvent.Type.Show):
            self.grow_for_contents()  # a message changed: make room for all of it
        return handled

    def grow_for_contents(self) -> None:
        """Grow (never past the screen) until every wrapped message shows whole; never shrink,
        except to keep the window's frame on a screen that the body alone would fill."""
        layout = self.layout()
        if layout is None:
            return
        width = self.width()
        needed = layout.totalMinimumSize().height()
        if layout.hasHeightForWidth():
            needed = max(needed, layout.totalHeightForWidth(width))
        available = available_geometry(self)
        cap = None
        if available is not None and not available.isEmpty():
            frame = max(0, self.frameGeometry().height() - self.height())  # known once shown
            cap = available.height() - frame
            needed = min(needed, cap)
        if needed > self.height():
            self.resize(width, needed)
        elif cap is not None and self.height() > cap:
            self.resize(width, cap)

    # -- loading -----------------------------------------------------------------------------

    def _load(self) -> None:
        hub = self._settings.hub_url
        credentials = self._credentials

        def read_keychain() -> tuple[str, str | None, KeyPlace | None]:
            place = credentials.place(hub)
            return credentials.backend_description, credentials.get(hub), place

        BackgroundOp(
            self._runner, read_keychain, self._show_stored_key, parent=self, label="read key"
        ).failure(self._show_keychain_problem).run()
        BackgroundOp(
            self._runner, self._probe.list_gpus, self._fill_gpus, parent=self, label="list GPUs"
        ).run()
        if self._autostart is not None:
            autostart = self._autostart
            BackgroundOp(
                self._runner, autostart.is_enabled, self._show_autostart, parent=self, label="autostart state"
            ).run()

    def _show_stored_key(self, found: tuple[str, str | None, KeyPlace | None]) -> None:
        backend, key, place = found
        self._backend_name = backend
        if place in (KeyPlace.FILE, KeyPlace.SESSION):
            # Kept there because there is no keychain: the same choice stays on offer.
            self._offer_places(KeychainUnavailable("", "", KeychainProblem.NO_KEYCHAIN))
            (self.keep_file if place is KeyPlace.FILE else self.keep_session).setChecked(True)
        else:
            self.keychain_label.setText(_PLACE_TEXT[KeyPlace.KEYCHAIN].format(backend=backend))
        self._stored = (self._settings.hub_url, key)
        if key and not self.key_edit.text():
            self.key_edit.setText(key)
        elif not key:
            self.key_edit.setFocus()

    def _show_keychain_problem(self, exc: Exception) -> None:
        self._stored = (self._settings.hub_url, None)
        if isinstance(exc, KeychainUnavailable):
            self._offer_places(exc)
            return
        problem = explain(exc)
        self.keychain_label.setText(f"{problem.message} {problem.advice}".strip())

    def _offer_places(self, exc: KeychainUnavailable) -> None:
        """No usable keychain: say so once, in the choice of where the key goes instead."""
        self._no_keychain = True
        self.place_reason.setText(explain(exc).message)
        self.place_box.setVisible(True)
        self._place_changed()

    def _place_changed(self) -> None:
        self.keychain_label.setText(_PLACE_TEXT[self.chosen_place()])

    def chosen_place(self) -> KeyPlace:
        """Where Save keeps the key: the keychain, or what the person chose without one."""
        if not self._no_keychain:
            return KeyPlace.KEYCHAIN
        return KeyPlace.FILE if self.keep_file.isChecked() else KeyPlace.SESSION

    def _show_autostart(self, enabled: bool) -> None:
        self.start_at_login.setChecked(enabled or self._settings.start_at_login)

    def _fill_gpus(self, gpus: list[GpuInfo]) -> None:
        current = self._settings
        self.gpu_combo.clear()
        self.gpu_combo.addItem(
            "The first GPU (or the CPU when there is none)"
            if gpus
            else "A GPU when one is found, else the CPU",
            (WorkerType.GPU, None),
        )
        for gpu in gpus:
            memory = f", {gpu.memory_total_mb / 1024:.0f} GB" if gpu.memory_total_mb else ""
            self.gpu_combo.addItem(f"GPU {gpu.index}: {gpu.name}{memory}", (WorkerType.GPU, gpu.index))
        self.gpu_combo.addItem("The CPU only", (WorkerType.CPU, None))
        wanted = (current.worker_type, current.gpu_index)
        for i in range(self.gpu_combo.count()):
            if self.gpu_combo.itemData(i) == wanted:
                self.gpu_combo.setCurrentIndex(i)
                break
        if current.gpu_index is not None and self.gpu_combo.currentData() != wanted and gpus:
            self.gpu_combo.addItem(f"GPU {current.gpu_index} (not found now)", wanted)
            self.gpu_combo.setCurrentIndex(self.gpu_combo.count() - 1)

    # -- checking ----------------------------------------------------------------------------

    def _toggle_key_visible(self, visible: bool) -> None:
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Normal if visible else QLineEdit.EchoMode.Password)
        self.show_key.setText("Hide" if visible else "Show")

    def _inputs_changed(self) -> None:
        if self._checking:  # the answer would be about other inputs: stop waiting for it
            self._set_checking(False)
            self._set_busy(False)
        self._generation += 1
        self._verified = None
        self.status_label.clear()

    def _inputs(self) -> tuple[str, str]:
        """(normalised hub URL, key); raises InvalidHubUrl or CredentialError-like problems."""
        if not self.hub_edit.text().strip():
            raise InvalidHubUrl("")
        hub = normalise_hub_url(self.hub_edit.text())
        key = self.key_edit.text().strip()
        return hub, key

    @Slot()
    def _on_check_clicked(self) -> None:
        if self._checking:
            self.cancel_check()
        else:
            self.check_key()

    def cancel_check(self) -> None:
        """Stop waiting for the hub's answer (it is ignored when it comes)."""
        if not self._checking:
            return
        self._generation += 1
        self._set_checking(False)
        self._set_busy(False)
        self.status_label.setStyleSheet("")
        self.status_label.setText("Key check cancelled. Choose Check key to try again.")
        log.info("settings.key_check_cancelled")
        emit(self.checked, False)

    def _set_checking(self, checking: bool) -> None:
        self._checking = checking
        self.check_button.setText("Cancel" if checking else "Check key")
        self.check_button.setToolTip("Stop waiting for the hub" if checking else "")

    def check_key(self, then: Callable[[], None] | None = None) -> None:
        """Ask the hub who the key belongs to; show the user id and queue, or what is wrong.

        Args:
            then: Called after a successful check (used by ``save``).
        """
        try:
            hub, key = self._inputs()
        except InvalidHubUrl as exc:
            self._show_problem(explain(exc))
            emit(self.checked, False)
            return
        if not key:
            self._show_problem(Explanation("Paste your API key first.", "You find it in your MoRAG account."))
            emit(self.checked, False)
            return
        self._generation += 1
        generation = self._generation
        self._set_checking(True)  # the check button turns into Cancel
        self._set_busy(True, "Checking the key with the hub…")
        factory = self._client_factory

        def ask_hub() -> QueueInfo:
            client = factory(hub, key)
            try:
                return client.queue_info()
            finally:
                client.close()

        def accepted(info: QueueInfo) -> None:
            if generation != self._generation:
                return
            self._set_checking(False)
            self._set_busy(False)
            self._verified = (hub, key, info)
            queues = consumed_queues(info.user_id, self._chosen_worker()[0])
            label = "Queue" if len(queues) == 1 else "Queues"
            # Each name on one piece: a queue name wrapped at its hyphen reads as two names.
            names = " and ".join(f'<b style="white-space:nowrap">{q}</b>' for q in queues)
            self.status_label.setStyleSheet(_OK_STYLE)
            self.status_label.setText(f"✓ Key accepted: user <b>{info.user_id}</b><br>{label}: {names}")
            log.info("settings.key_checked", hub=hub, user_id=info.user_id)
            emit(self.checked, True)
            if then is not None:
                then()

        def refused(exc: Exception) -> None:
            if generation != self._generation:
                return
            self._set_checking(False)
            self._set_busy(False)
            log.info("settings.key_check_failed", hub=hub, error=exc.__class__.__name__)
            self._show_problem(explain(exc, hub))
            emit(self.checked, False)

        BackgroundOp(self._runner, ask_hub, accepted, parent=self, label="check key").failure(refused).run()

    def _show_problem(self, problem: Explanation) -> None:
        self.status_label.setStyleSheet("")
        advice = f"<br>{_escape(problem.advice)}" if problem.advice else ""
        self.status_label.setText(
            f'<span style="{_ERROR_STYLE}"><b>✗ {_escape(problem.message)}</b></span>{advice}'
        )

    def _set_busy(self, busy: bool, text: str = "") -> None:
        self._busy = busy
        self.check_button.setEnabled(not busy or self._checking)
        self.save_button.setEnabled(not busy)
        if text:
            self.status_label.setStyleSheet("")
            self.status_label.setText(_escape(text))

    def _chosen_worker(self) -> tuple[WorkerType, int | None]:
        data = self.gpu_combo.currentData()
        if isinstance(data, tuple):
            return data[0], data[1]
        return WorkerType.GPU, None

    # -- saving ------------------------------------------------------------------------------

    def result_settings(self) -> Settings:
        """The settings as the form shows them (hub URL normalised).

        Raises:
            SettingsError: A value is not allowed.
        """
        worker_type, gpu_index = self._chosen_worker()
        settings = dataclasses.replace(
            self._settings,
            hub_url=self.hub_edit.text().strip(),
            worker_type=worker_type,
            gpu_index=gpu_index,
            concurrency=self.concurrency.value(),
            start_working_on_launch=self.start_on_launch.isChecked(),
            start_at_login=self.start_at_login.isChecked(),
        )
        return self._with_rules(settings)

    def save(self) -> None:
        """Check the key when the hub or key changed, then store the key and save the settings."""
        if self._busy:
            return
        try:
            hub, key = self._inputs()
            settings = self.result_settings()
        except (InvalidHubUrl, SettingsError) as exc:
            self._show_problem(explain(exc))
            return
        if not key:
            self._show_problem(Explanation("Paste your API key first.", "You find it in your MoRAG account."))
            return
        unchanged = self._stored is not None and self._stored == (hub, key)
        verified = self._verified is not None and self._verified[:2] == (hub, key)
        if not (unchanged or verified):
            self.check_key(then=self.save)
            return
        # A place chosen without a keychain is kept even when the key did not change.
        store_key = not unchanged or self.chosen_place() is not KeyPlace.KEYCHAIN
        self._store_all(settings, key, store_key=store_key)

    def _store_all(self, settings: Settings, key: str, *, store_key: bool) -> None:
        self._set_busy(True, "Saving…")
        place = self.chosen_place()
        credentials, store, autostart = self._credentials, self._store, self._autostart
        command = list(self._autostart_command()) if autostart is not None and settings.start_at_login else []

        def write() -> Settings:
            # The key first: settings that point at a hub without a stored key would not start.
            if store_key:
                credentials.set(settings.hub_url, key, place)
            store.save(settings)
            if autostart is not None:
                # Both are idempotent; enabling again refreshes the command after a reinstall.
                if settings.start_at_login:
                    autostart.enable(command)
                else:
                    autostart.disable()
            return settings

        def done(saved: Settings) -> None:
            self._set_busy(False)
            self._settings = saved
            self._stored = (saved.hub_url, key)
            log.info("settings.saved_from_dialog", hub=saved.hub_url, key_stored=store_key, place=place.value)
            self.saved_place = place
            emit(self.saved, saved)
            self.accept()

        def failed(exc: Exception) -> None:
            self._set_busy(False)
            log.warning("settings.save_failed", error=f"{exc.__class__.__name__}: {exc}")
            if isinstance(exc, KeychainUnavailable) and not self._no_keychain:
                # The key check passed; only the keychain failed: offer the other places.
                self._offer_places(exc)
                self._show_problem(
                    Explanation(
                        "The key is fine, but the keychain could not keep it.",
                        "Choose where to keep it, then save again.",
                    )
                )
                return
            self._show_problem(explain(exc, settings.hub_url))

        BackgroundOp(self._runner, write, done, parent=self, label="save settings").failure(failed).run()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
