"""The Settings / first-run dialog against a real hub: good key, wrong key, no hub, no keychain."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Callable, Iterator

import pytest
import redis.asyncio as aioredis
from keyring.backend import KeyringBackend
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QLineEdit
from pytestqt.qtbot import QtBot

from morag_worker.core.auth import APIKeyService
from morag_worker.core.config.credentials import CredentialStore, KeyPlace, key_file_path
from morag_worker.core.config.settings import Settings, SettingsStore, normalise_hub_url
from morag_worker.core.supervisor.events import WorkerState
from morag_worker.gui.background import BackgroundRunner
from morag_worker.gui.settings_dialog import SettingsDialog
from morag_worker.gui.tray_app import IN_TRAY_NOTICE
from tests.conftest import Stack
from tests.fakes import FakePlaintextKeyring
from tests.gui.conftest import WAIT_MS, Harness
from tests.processes import free_port

pytestmark = pytest.mark.gui

MakeDialog = Callable[..., SettingsDialog]


def hub_key(stack: Stack, user_id: str) -> str:
    """A key the real hub accepts for ``user_id``.

    Created without the Redis ACL hook: the dialog only asks the hub (queue-info), which never
    logs in to the broker, and ``stack.key()`` fails on Redis 7.0 while core/acl.py's allowlist
    names ``client|setinfo`` (a Redis 7.2 subcommand).
    """

    async def create() -> str:
        client = aioredis.Redis.from_url(stack.redis.url)
        try:
            return await APIKeyService(client).create_api_key(user_id, "gui test")
        finally:
            await client.aclose()

    return asyncio.run(create())


@pytest.fixture
def make_dialog(harness: Harness, qtbot: QtBot) -> Iterator[MakeDialog]:
    runner = BackgroundRunner(max_threads=2)

    def make(
        hub_url: str, *, keyring: KeyringBackend | None = None, first_run: bool = False
    ) -> SettingsDialog:
        dialog = SettingsDialog(
            Settings(hub_url=hub_url),
            SettingsStore(harness.tmp / "config"),
            CredentialStore(keyring if keyring is not None else harness.keyring),
            harness.gpu_probe,
            harness.autostart,
            lambda: ["/usr/bin/morag-worker", "--config-dir", str(harness.tmp / "config")],
            runner,
            first_run=first_run,
        )
        qtbot.addWidget(dialog)
        dialog.show()
        qtbot.waitUntil(lambda: runner.pending == 0, timeout=WAIT_MS)  # keychain, GPUs, autostart read
        return dialog

    yield make
    runner.wait_for_done(WAIT_MS)


def _check(qtbot: QtBot, dialog: SettingsDialog, ok: bool) -> str:
    with qtbot.waitSignal(dialog.checked, timeout=WAIT_MS, check_params_cb=lambda accepted: accepted is ok):
        qtbot.mouseClick(dialog.check_button, Qt.MouseButton.LeftButton)
    return dialog.status_label.text()


def test_good_key_shows_user_and_queue_and_is_stored_in_the_keychain(
    stack: Stack, harness: Harness, make_dialog: MakeDialog, qtbot: QtBot
) -> None:
    key = hub_key(stack, "alice-gui")
    dialog = make_dialog(stack.hub_url)
    assert dialog.keychain_label.text() == "Your key is kept in: tests.fakes.InMemoryKeyring."
    assert dialog.key_edit.echoMode() is QLineEdit.EchoMode.Password
    qtbot.keyClicks(dialog.key_edit, key)
    qtbot.mouseClick(dialog.show_key, Qt.MouseButton.LeftButton)
    assert dialog.key_edit.echoMode() is QLineEdit.EchoMode.Normal
    qtbot.mouseClick(dialog.show_key, Qt.MouseButton.LeftButton)
    assert dialog.key_edit.echoMode() is QLineEdit.EchoMode.Password

    text = _check(qtbot, dialog, ok=True)
    assert "Key accepted" in text and "alice-gui" in text
    assert (
        "Queues: " in text and ">gpu-tasks-alice-gui</b> and " in text and ">cpu-tasks-alice-gui</b>" in text
    )

    dialog.gpu_combo.setCurrentIndex(2)  # GPU 1
    dialog.concurrency.setValue(2)
    qtbot.mouseClick(dialog.start_at_login, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(dialog.saved, timeout=WAIT_MS) as saved:
        qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    settings = saved.args[0]
    hub = normalise_hub_url(stack.hub_url)
    assert harness.keyring.passwords == {("morag-worker", hub): key}
    assert (settings.gpu_index, settings.concurrency, settings.start_at_login) == (1, 2, True)
    on_disk = (harness.tmp / "config" / "settings.json").read_text()
    assert key not in on_disk
    assert json.loads(on_disk)["hub_url"] == hub and json.loads(on_disk)["gpu_index"] == 1
    assert harness.autostart.command == ["/usr/bin/morag-worker", "--config-dir", str(harness.tmp / "config")]
    assert not dialog.isVisible()


def test_wrong_key_is_explained_and_not_stored(
    stack: Stack, harness: Harness, make_dialog: MakeDialog, qtbot: QtBot
) -> None:
    dialog = make_dialog(stack.hub_url)
    qtbot.keyClicks(dialog.key_edit, "n0t-a-real-key-" + "x" * 28)
    text = _check(qtbot, dialog, ok=False)
    assert "The hub did not accept this API key." in text
    assert "revoked or has expired" in text
    with qtbot.waitSignal(dialog.checked, timeout=WAIT_MS):
        qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)  # saving checks first, and refuses
    assert harness.keyring.passwords == {}
    assert not (harness.tmp / "config" / "settings.json").exists()
    assert dialog.isVisible()


def test_unreachable_hub_is_explained(make_dialog: MakeDialog, qtbot: QtBot) -> None:
    hub = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    dialog = make_dialog(hub)
    qtbot.keyClicks(dialog.key_edit, "k" * 43)
    text = _check(qtbot, dialog, ok=False)
    assert f"Cannot reach the hub at {hub}." in text
    assert "Check the address and your network connection" in text


def test_the_dialog_grows_until_every_message_shows_whole(make_dialog: MakeDialog, qtbot: QtBot) -> None:
    hub = f"http://127.0.0.1:{free_port()}/a/rather/long/path/to/the/hub"  # nothing listens there
    dialog = make_dialog(hub)
    height = dialog.height()
    dialog.keychain_label.setText(
        "Keychain: the system keychain is locked. Unlock it with your login password, or sign out "
        "and in again, then open Settings again so that the key can be kept there."
    )
    qtbot.keyClicks(dialog.key_edit, "k" * 43)
    _check(qtbot, dialog, ok=False)

    def whole(label: QLabel) -> bool:
        return label.height() >= label.heightForWidth(label.width())

    # Both messages show every line (none is cut mid-sentence), and nothing needs scrolling.
    qtbot.waitUntil(lambda: whole(dialog.status_label) and whole(dialog.keychain_label), timeout=WAIT_MS)
    content = dialog.body.widget()
    assert content is not None
    qtbot.waitUntil(lambda: content.height() <= dialog.body.viewport().height(), timeout=WAIT_MS)
    assert not dialog.body.verticalScrollBar().isVisible()
    assert dialog.height() > height
    screen = dialog.screen().availableGeometry()
    assert dialog.height() <= screen.height()


def test_invalid_address_and_empty_key_are_explained_without_a_request(
    make_dialog: MakeDialog, qtbot: QtBot
) -> None:
    dialog = make_dialog("http://127.0.0.1:8700")
    text = _check(qtbot, dialog, ok=False)
    assert "Paste your API key first." in text
    dialog.hub_edit.setText("ftp://hub")
    qtbot.keyClicks(dialog.key_edit, "k" * 43)
    text = _check(qtbot, dialog, ok=False)
    assert "The hub address is not valid" in text


def _no_keychain_dialog(
    stack: Stack, harness: Harness, qtbot: QtBot
) -> tuple[SettingsDialog, CredentialStore]:
    runner = BackgroundRunner(max_threads=2)
    credentials = CredentialStore(FakePlaintextKeyring(), key_file=key_file_path(harness.tmp / "config"))
    dialog = SettingsDialog(
        Settings(hub_url=stack.hub_url),
        SettingsStore(harness.tmp / "config"),
        credentials,
        harness.gpu_probe,
        harness.autostart,
        lambda: ["/usr/bin/morag-worker"],
        runner,
        first_run=True,
    )
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(lambda: runner.pending == 0, timeout=WAIT_MS)
    return dialog, credentials


def _words_for_a_person(text: str) -> None:
    for developer in ("dbus", "D-Bus", "MORAG_API_KEY", "--api-key-file", "keyrings.alt", "PYTHON_KEYRING"):
        assert developer not in text


def test_without_a_keychain_the_key_can_be_kept_for_this_session(
    stack: Stack, harness: Harness, qtbot: QtBot
) -> None:
    dialog, credentials = _no_keychain_dialog(stack, harness, qtbot)
    assert dialog.place_box.isVisible() and dialog.keep_session.isChecked()
    explanation = dialog.place_reason.text()
    assert "no keychain" in explanation
    _words_for_a_person(explanation + dialog.keychain_label.text() + dialog.status_label.text())
    assert explanation not in dialog.keychain_label.text() + dialog.status_label.text()  # said once
    assert dialog.keychain_label.text() == "Chosen: the key is kept only while MoRAG Worker runs."
    key = hub_key(stack, "bob-gui")
    qtbot.keyClicks(dialog.key_edit, key)
    with qtbot.waitSignal(dialog.saved, timeout=WAIT_MS):
        qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    assert dialog.saved_place is KeyPlace.SESSION
    assert credentials.get(stack.hub_url) == key
    assert not key_file_path(harness.tmp / "config").exists()
    assert (harness.tmp / "config" / "settings.json").exists()


def test_without_a_keychain_the_key_can_be_kept_in_a_private_file(
    stack: Stack, harness: Harness, qtbot: QtBot
) -> None:
    dialog, _credentials = _no_keychain_dialog(stack, harness, qtbot)
    dialog.keep_file.setChecked(True)
    assert dialog.file_warning.isVisible() and "can read the key" in dialog.file_warning.text()
    assert (
        dialog.keychain_label.text() == "Chosen: the key is kept in a file in MoRAG Worker's settings folder."
    )
    key = hub_key(stack, "carol-gui")
    qtbot.keyClicks(dialog.key_edit, key)
    with qtbot.waitSignal(dialog.saved, timeout=WAIT_MS):
        qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    assert dialog.saved_place is KeyPlace.FILE
    path = key_file_path(harness.tmp / "config")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Another process (the headless worker) reads it with a fresh store.
    fresh = CredentialStore(FakePlaintextKeyring(), key_file=path)
    assert fresh.get(stack.hub_url) == key and fresh.place(stack.hub_url) is KeyPlace.FILE


def test_the_key_check_can_be_cancelled(harness: Harness, make_dialog: MakeDialog, qtbot: QtBot) -> None:
    import socket

    with socket.socket() as hung:  # accepts connections and never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(1)
        dialog = make_dialog(f"http://127.0.0.1:{hung.getsockname()[1]}")
        qtbot.keyClicks(dialog.key_edit, "k" * 43)
        qtbot.mouseClick(dialog.check_button, Qt.MouseButton.LeftButton)
        assert dialog.status_label.text() == "Checking the key with the hub…"
        assert dialog.check_button.text() == "Cancel" and dialog.check_button.isEnabled()
        with qtbot.waitSignal(dialog.checked, timeout=WAIT_MS, check_params_cb=lambda ok: ok is False):
            qtbot.mouseClick(dialog.check_button, Qt.MouseButton.LeftButton)
        assert "cancelled" in dialog.status_label.text()
        assert dialog.check_button.text() == "Check key" and dialog.save_button.isEnabled()


def test_gpu_choices_come_from_the_probe(stack: Stack, make_dialog: MakeDialog, qtbot: QtBot) -> None:
    dialog = make_dialog(stack.hub_url)
    items = [dialog.gpu_combo.itemText(i) for i in range(dialog.gpu_combo.count())]
    assert items == [
        "The first GPU (or the CPU when there is none)",
        "GPU 0: NVIDIA Fake 24GB, 24 GB",
        "GPU 1: NVIDIA Fake 24GB, 24 GB",
        "The CPU only",
    ]
    dialog.gpu_combo.setCurrentIndex(3)
    qtbot.keyClicks(dialog.key_edit, hub_key(stack, "carol-gui"))
    text = _check(qtbot, dialog, ok=True)
    assert "Queue: " in text and ">cpu-tasks-carol-gui</b>" in text and "gpu-tasks" not in text


def test_first_run_asks_for_a_key_then_saves_and_starts(stack: Stack, harness: Harness, qtbot: QtBot) -> None:
    app = harness.build()
    with qtbot.waitSignal(app.ready, timeout=WAIT_MS):
        app.start()
    dialog = app.settings_dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.save_button.text() == "Save and start"
    assert "Welcome" in dialog.intro.text()
    assert harness.supervisor.calls == []
    assert dialog.hub_edit.text() == ""  # the admin gives the address; a placeholder shows its form
    qtbot.keyClicks(dialog.hub_edit, stack.hub_url)
    qtbot.keyClicks(dialog.key_edit, hub_key(stack, "dave-gui"))
    with qtbot.waitSignal(
        app.controller.state_changed,
        timeout=WAIT_MS,
        check_params_cb=lambda s: s.state is WorkerState.RUNNING,
    ):
        qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    assert harness.supervisor.calls == [("start", None)]
    assert app.settings.hub_url == normalise_hub_url(stack.hub_url)
    assert ("morag-worker", normalise_hub_url(stack.hub_url)) in harness.keyring.passwords
    qtbot.waitUntil(lambda: app.settings_dialog is None, timeout=WAIT_MS)
    # The dialog went away: the person is told where the app is now.
    assert IN_TRAY_NOTICE in app.notices


def test_when_to_contribute_shows_the_rules_and_returns_what_the_person_chose(
    make_dialog: MakeDialog, qtbot: QtBot
) -> None:
    dialog = make_dialog("http://127.0.0.1:8700")
    # The defaults: heat limit on at 83 °C, battery on, idle off, any time.
    assert dialog.temp_rule.isChecked() and dialog.temp_limit.value() == 83
    assert dialog.battery_rule.isChecked() and not dialog.idle_rule.isChecked()
    assert not dialog.idle_minutes.isEnabled() and dialog.time_windows.text() == ""
    dialog.temp_limit.setValue(78)
    dialog.idle_rule.setChecked(True)
    assert dialog.idle_minutes.isEnabled()
    dialog.idle_minutes.setValue(15)
    dialog.battery_rule.setChecked(False)
    dialog.time_windows.setText("mon-fri 18:00-08:00 ,  Sat-Sun all day")
    chosen = dialog.result_settings()
    assert (chosen.gpu_temp_limit_c, chosen.temp_resume_c, chosen.idle_minutes) == (78, 73, 15)
    assert chosen.pause_on_battery is False and chosen.time_windows == "mon-fri 18:00-08:00, Sat-Sun all day"
    dialog.temp_rule.setChecked(False)
    assert dialog.result_settings().gpu_temp_limit_c is None and not dialog.temp_limit.isEnabled()


def test_times_that_are_not_understood_are_explained_without_a_request(
    make_dialog: MakeDialog, qtbot: QtBot
) -> None:
    dialog = make_dialog("http://127.0.0.1:8700")
    qtbot.keyClicks(dialog.key_edit, "k" * 43)
    dialog.time_windows.setText("Mon 9-5")
    dialog.save()
    text = dialog.status_label.text()
    assert "The times to work are not understood" in text and "'9' is not a time like 18:00" in text
    assert "Mon-Fri 18:00-08:00, Sat-Sun all day" in text and dialog.isVisible()
