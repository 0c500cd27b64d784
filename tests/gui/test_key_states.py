"""The key as a person meets it in the tray app (issue 11, points 1, 2 and 4): missing after
``morag-worker logout``, fixed from the window, and a first run cancelled before it was set up.

The real supervisor on a fake child and hub (``tests/gui/conftest.py``); the key lives in the
harness's in-memory keyring, which ``logout`` empties as the CLI would.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from morag_worker.core.config.credentials import CredentialStore
from morag_worker.core.hub_client import KeyRejected
from morag_worker.core.supervisor.events import Problem, WorkerState
from morag_worker.gui.state_presentation import Moment, presentation
from morag_worker.gui.tray_app import NOT_SET_UP_NOTICE, TrayApp
from tests.gui.conftest import HUB, NOW, WAIT_MS, Harness

pytestmark = pytest.mark.gui

_CLI_WORDS = ("morag-worker login", "MORAG_API_KEY", "--api-key-file", "api-key-file", "log in again")


def _wait_state(app: TrayApp, qtbot: QtBot, state: WorkerState, act: Callable[[], object]) -> None:
    with qtbot.waitSignal(
        app.controller.state_changed, timeout=WAIT_MS, check_params_cb=lambda s: s.state is state
    ):
        act()


def _window_texts(app: TrayApp) -> str:
    status = app.controller.status
    title, detail = presentation(status.state).header(Moment(status, [], NOW))
    return f"{title}\n{detail}"


def test_after_logout_the_key_is_missing_not_refused_and_enter_key_is_offered(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started()
    _wait_state(app, qtbot, WorkerState.RUNNING, app.actions.start.trigger)
    assert "Signed in as alice" in _window_texts(app)
    _wait_state(app, qtbot, WorkerState.STOPPED, app.actions.stop_now.trigger)

    CredentialStore(harness.keyring).delete(HUB)  # what `morag-worker logout` does
    _wait_state(app, qtbot, WorkerState.CRASHED, app.actions.start.trigger)
    assert app.controller.status.problem is Problem.NO_API_KEY

    texts = _window_texts(app)
    notice = app.notices[-1]
    assert texts.startswith("API key missing") and "missing" in notice.title
    for shown in (texts, notice.title, notice.message):
        assert "refused" not in shown.lower()
        assert "Signed in as" not in shown
        for cli in _CLI_WORDS:
            assert cli not in shown
    assert app.tray is not None and "API key missing" in app.tray.toolTip()
    assert app.actions.enter_key.isVisible()
    assert app.window.header.buttons["enter_key"].isVisibleTo(app.window)


def test_a_new_key_saved_clears_the_error_without_pressing_start(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    app = started(client_factory=harness.hub)
    harness.fail_hub(KeyRejected("the hub rejected the API key (unknown, revoked or expired)"))
    _wait_state(app, qtbot, WorkerState.CRASHED, app.actions.start.trigger)
    assert _window_texts(app).startswith("API key refused")
    starts = len(harness.supervisor.calls_named("start"))

    harness.heal_hub()
    app.actions.enter_key.trigger()
    dialog = app.settings_dialog
    assert dialog is not None
    qtbot.waitUntil(lambda: app.runner.pending == 0, timeout=WAIT_MS)
    dialog.key_edit.setText("n" * 43)
    dialog.key_edit.textEdited.emit("n" * 43)
    with qtbot.waitSignal(
        app.controller.state_changed,
        timeout=WAIT_MS,
        check_params_cb=lambda s: s.state is WorkerState.RUNNING,
    ):
        qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    assert len(harness.supervisor.calls_named("start")) == starts + 1  # the app started it, not a person
    assert "error" not in _window_texts(app).lower() and not app.actions.enter_key.isVisible()
    assert harness.keyring.passwords[("morag-worker", HUB)] == "n" * 43


def test_a_cancelled_first_run_leaves_a_hint(harness: Harness, qtbot: QtBot) -> None:
    app = harness.build()
    with qtbot.waitSignal(app.ready, timeout=WAIT_MS):
        app.start()
    dialog = app.settings_dialog
    assert dialog is not None  # no key: first run
    dialog.reject()
    qtbot.waitUntil(lambda: NOT_SET_UP_NOTICE in app.notices, timeout=WAIT_MS)
    assert app.actions.enter_key.isVisible()
    assert "Enter key…" in NOT_SET_UP_NOTICE.message


@pytest.mark.parametrize("keep_in_file", [False, True])
def test_first_run_without_a_keychain_can_be_finished(
    harness: Harness, qtbot: QtBot, keep_in_file: bool
) -> None:
    from morag_worker.core.config.credentials import KeyPlace, key_file_path
    from morag_worker.core.config.settings import SettingsStore
    from tests.fakes import FakePlaintextKeyring

    config = harness.tmp / "config"
    settings_store = SettingsStore(config)
    credentials = CredentialStore(FakePlaintextKeyring(), key_file=key_file_path(config))  # no keychain
    app = harness.build(
        settings_store=settings_store,
        credentials=credentials,
        supervisor_factory=harness.supervisor_factory(settings_store, credentials),
        client_factory=harness.hub,
    )
    with qtbot.waitSignal(app.ready, timeout=WAIT_MS):
        app.start()
    dialog = app.settings_dialog
    assert dialog is not None
    qtbot.waitUntil(lambda: dialog.place_box.isVisible(), timeout=WAIT_MS)
    (dialog.keep_file if keep_in_file else dialog.keep_session).setChecked(True)
    dialog.hub_edit.setText(HUB)
    dialog.key_edit.setText("f" * 43)
    dialog.key_edit.textEdited.emit("f" * 43)
    with qtbot.waitSignal(
        app.controller.state_changed,
        timeout=WAIT_MS,
        check_params_cb=lambda s: s.state is WorkerState.RUNNING,
    ):
        qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)  # the check, then the save
    assert credentials.place(HUB) is (KeyPlace.FILE if keep_in_file else KeyPlace.SESSION)
    assert key_file_path(config).exists() is keep_in_file
    assert NOT_SET_UP_NOTICE not in app.notices


def test_no_working_colours_while_the_broker_is_lost(
    started: Callable[..., TrayApp], harness: Harness, qtbot: QtBot
) -> None:
    from morag_worker.core.supervisor.events import RECONNECTING
    from morag_worker.gui.state_presentation import TrayLook

    app = started()
    _wait_state(app, qtbot, WorkerState.RUNNING, app.actions.start.trigger)
    assert app.tray is not None and app.tray.look is TrayLook.WAITING
    with qtbot.waitSignal(
        app.controller.state_changed, timeout=WAIT_MS, check_params_cb=lambda s: s.message == RECONNECTING
    ):
        harness.child.heartbeat(consumer="connecting", since_poll_s=None)  # a revoked key looks so at first
    assert app.tray.look is TrayLook.CONNECTING and "Reconnecting" in app.tray.toolTip()
    assert _window_texts(app).startswith("Reconnecting…")
