"""CredentialStore against a real Secret Service (private bus + gnome-keyring-daemon), and with none."""

from __future__ import annotations

import shutil
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from morag_worker.core.config.credentials import (
    CredentialStore,
    KeychainProblem,
    KeychainUnavailable,
    KeySource,
    NoApiKey,
    resolve_api_key,
)
from tests.keychain import SecretServiceSession

pytestmark = pytest.mark.integration

HUB = "https://hub.example.org:8443/morag"
KEY = "mk_SW50ZWdyYXRpb25LZXlfMTIzNDU2Nzg5MGFiY2Rl"


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def test_default_backend_is_the_secret_service(keychain_env: Path) -> None:
    store = CredentialStore()
    assert "Secret Service" in store.backend_description
    try:
        assert store.get(HUB) is None
        store.set(HUB, KEY)
        assert store.get(HUB + "/") == KEY
        # Another instance (as a later run of the app would) finds the same key.
        assert CredentialStore().get(HUB) == KEY
        resolved = resolve_api_key(env={}, api_key_file=None, store=CredentialStore(), hub_url=HUB)
        assert (resolved.key, resolved.source) == (KEY, KeySource.KEYCHAIN)
    finally:
        store.delete(HUB)
    assert store.get(HUB) is None
    assert store.delete(HUB) is False
    with pytest.raises(NoApiKey):
        resolve_api_key(env={}, api_key_file=None, store=store, hub_url=HUB)


def test_the_key_is_in_the_secret_service_and_in_no_plaintext_file(
    keychain_env: Path, secret_service: SecretServiceSession
) -> None:
    store = CredentialStore()
    store.set(HUB, KEY)
    try:
        keyring_files = list((secret_service.root / "data" / "keyrings").glob("*.keyring"))
        assert keyring_files, "gnome-keyring-daemon wrote no keyring file"
        assert files_containing(secret_service.root, KEY.encode()) == []
        assert files_containing(secret_service.root, KEY.encode("utf-16-le")) == []
        assert not (secret_service.root / "data" / "python_keyring").exists()
        if shutil.which("secret-tool"):
            lookup = subprocess.run(
                [
                    "secret-tool",
                    "lookup",
                    "service",
                    "morag-worker",
                    "username",
                    "https://hub.example.org:8443/morag",
                ],
                env=secret_service.env,
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert lookup.returncode == 0, lookup.stderr
            assert lookup.stdout.decode().strip() == KEY
    finally:
        assert store.delete(HUB) is True


def test_a_dead_session_bus_is_a_typed_error(no_keychain_env: Path) -> None:
    store = CredentialStore()
    assert store.backend_description == "no keychain"
    for operation in (lambda: store.get(HUB), lambda: store.set(HUB, KEY), lambda: store.delete(HUB)):
        with pytest.raises(KeychainUnavailable) as caught:
            operation()
        error = caught.value
        assert error.problem is KeychainProblem.NO_KEYCHAIN
        assert "dbus-run-session" in error.advice and "gnome-keyring-daemon --unlock" in error.advice
        assert "MORAG_API_KEY" in error.advice and "--api-key-file" in error.advice
    assert files_containing(no_keychain_env, KEY.encode()) == []


def test_no_session_bus_at_all_is_a_typed_error(
    no_keychain_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS")
    with pytest.raises(KeychainUnavailable) as caught:
        CredentialStore().set(HUB, KEY)
    assert "no D-Bus session" in caught.value.advice


def test_the_secret_service_backend_on_a_dead_bus_is_a_typed_error(no_keychain_env: Path) -> None:
    from keyring.backends.SecretService import Keyring as SecretServiceKeyring

    store = CredentialStore(SecretServiceKeyring())  # asked for explicitly, but not reachable
    with pytest.raises(KeychainUnavailable) as caught:
        store.set(HUB, KEY)
    assert caught.value.problem is KeychainProblem.NO_KEYCHAIN
    assert store.backend_description == "no keychain"


def test_a_keychain_that_goes_away_is_a_typed_error(
    keychain_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = CredentialStore()
    assert "Secret Service" in store.backend_description  # chosen while the service was up
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path / 'gone'}")
    for operation in (lambda: store.get(HUB), lambda: store.set(HUB, KEY)):
        with pytest.raises(KeychainUnavailable) as caught:
            operation()
        assert caught.value.problem is KeychainProblem.FAILED
        assert isinstance(caught.value.__cause__, OSError)
        assert "Secret Service" in caught.value.message and "dbus-run-session" in caught.value.advice


def test_a_locked_keychain_is_a_typed_error(own_secret_service: SecretServiceSession) -> None:
    import secretstorage

    store = CredentialStore()
    store.set(HUB, KEY)
    with closing(secretstorage.dbus_init()) as connection:
        secretstorage.get_default_collection(connection).lock()
    # No prompter can answer the unlock request on this bus, as on a headless host.
    with pytest.raises(KeychainUnavailable) as caught:
        store.get(HUB)
    assert caught.value.problem is KeychainProblem.LOCKED
    assert "locked" in caught.value.message and "unlock" in caught.value.advice


def test_a_keychain_daemon_that_stops_is_a_typed_error(own_secret_service: SecretServiceSession) -> None:
    store = CredentialStore()
    store.set(HUB, KEY)
    keyring_daemon = own_secret_service.processes[-1]
    keyring_daemon.terminate()
    keyring_daemon.wait(timeout=10)  # the bus is still up; nobody owns org.freedesktop.secrets
    with pytest.raises(KeychainUnavailable) as caught:
        store.get(HUB)
    assert caught.value.problem is KeychainProblem.FAILED
    assert KEY not in str(caught.value)


# ---- without a keychain, a place chosen knowingly (issue 11, point 2) --------------------------


def test_without_a_keychain_a_chosen_key_file_is_used_and_logout_removes_it(
    no_keychain_env: Path, tmp_path: Path
) -> None:
    import stat

    from morag_worker.core.config.credentials import KeyPlace, key_file_path

    path = key_file_path(tmp_path / "config")
    store = CredentialStore(key_file=path)
    with pytest.raises(KeychainUnavailable):
        store.set(HUB, KEY)  # never a file on its own
    assert not path.exists()
    store.set(HUB, KEY, KeyPlace.FILE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # A later run (the tray app or the headless worker) finds it with no keychain.
    later = CredentialStore(key_file=path)
    assert later.place(HUB) is KeyPlace.FILE
    assert resolve_api_key(env={}, api_key_file=None, store=later, hub_url=HUB).key == KEY
    assert later.delete(HUB) is True  # logout: the file goes too
    assert not path.exists()
    with pytest.raises(KeychainUnavailable):
        later.get(HUB)  # nothing anywhere: the keychain's problem is what is said


def test_without_a_keychain_a_session_key_stays_in_memory(no_keychain_env: Path, tmp_path: Path) -> None:
    from morag_worker.core.config.credentials import KeyPlace, key_file_path

    store = CredentialStore(key_file=key_file_path(tmp_path / "config"))
    store.set(HUB, KEY, KeyPlace.SESSION)
    assert store.get(HUB) == KEY and store.place(HUB) is KeyPlace.SESSION
    assert files_containing(no_keychain_env, KEY.encode()) == []  # tmp_path: the config folder too
    with pytest.raises(KeychainUnavailable):
        CredentialStore(key_file=key_file_path(tmp_path / "config")).get(HUB)  # gone with the process


def test_with_a_keychain_the_key_goes_there_and_not_to_the_file(keychain_env: Path, tmp_path: Path) -> None:
    from morag_worker.core.config.credentials import KeyPlace, key_file_path

    path = key_file_path(tmp_path / "config")
    store = CredentialStore(key_file=path)
    store.set(HUB, KEY, KeyPlace.FILE)  # chosen once, on a computer that had no keychain then
    store.set(HUB, KEY)  # now saved with a keychain: the file's copy goes
    try:
        assert store.place(HUB) is KeyPlace.KEYCHAIN and not path.exists()
    finally:
        assert store.delete(HUB) is True
    assert store.get(HUB) is None
