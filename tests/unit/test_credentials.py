"""CredentialStore, API-key files and key resolution, against fake and null keyring backends."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import keyring
import keyring.errors
import pytest
import structlog
from keyring.backends import fail, null

from morag_worker.core.config.credentials import (
    MAX_SECRET_CHARS,
    SERVICE_NAME,
    ApiKeyFileError,
    CredentialStore,
    InvalidApiKey,
    KeychainProblem,
    KeychainUnavailable,
    KeySource,
    NoApiKey,
    read_api_key_file,
    resolve_api_key,
)
from morag_worker.core.config.settings import InvalidHubUrl
from tests.fakes import FakeChainer, FakePlaintextKeyring, InMemoryKeyring, KeyringsAltLookalike

pytestmark = pytest.mark.unit

KEY = "mk_Q2hhbmdlTWVfMTIzNDU2Nzg5MGFiY2RlZmdoaWprbA"
OTHER_KEY = "mk_b3RoZXJLZXlfMDk4NzY1NDMyMWZlZGNiYWhnZmVk"
HUB = "http://127.0.0.1:8700"
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="file modes are not checked on Windows")


@pytest.fixture
def backend() -> InMemoryKeyring:
    return InMemoryKeyring()


@pytest.fixture
def store(backend: InMemoryKeyring) -> CredentialStore:
    return CredentialStore(backend)


def write_key_file(path: Path, content: str, mode: int = 0o600) -> Path:
    path.write_text(content)
    path.chmod(mode)
    return path


# -- the keychain ---------------------------------------------------------------------------


def test_set_get_delete_round_trip(store: CredentialStore, backend: InMemoryKeyring) -> None:
    assert store.get(HUB) is None
    store.set(HUB, KEY)
    assert store.get(HUB) == KEY
    assert backend.passwords == {(SERVICE_NAME, HUB): KEY}
    store.set(HUB, OTHER_KEY)
    assert store.get(HUB) == OTHER_KEY
    assert store.delete(HUB) is True
    assert store.get(HUB) is None
    assert store.delete(HUB) is False


def test_account_is_the_normalised_hub_url(store: CredentialStore, backend: InMemoryKeyring) -> None:
    store.set("HTTPS://Hub.Example.ORG:443/morag/", KEY)
    assert backend.passwords == {(SERVICE_NAME, "https://hub.example.org/morag"): KEY}
    assert store.get("https://hub.example.org/morag") == KEY
    assert store.get("https://hub.example.org:8443/morag") is None
    assert store.delete("https://HUB.example.org/morag/") is True


def test_keys_of_different_hubs_are_separate(store: CredentialStore) -> None:
    store.set(HUB, KEY)
    store.set("https://hub.example.org", OTHER_KEY)
    assert store.get(HUB) == KEY
    assert store.get("https://hub.example.org") == OTHER_KEY


@pytest.mark.parametrize("url", ["https://user:pw@hub.example", "hub.example", "ftp://hub", "https://h/?k=v"])
def test_invalid_hub_url_is_refused_before_the_keychain(
    store: CredentialStore, backend: InMemoryKeyring, url: str
) -> None:
    with pytest.raises(InvalidHubUrl):
        store.set(url, KEY)
    assert backend.calls == []


def test_system_keychain_names() -> None:
    store = CredentialStore(InMemoryKeyring())
    assert store.backend_description == "tests.fakes.InMemoryKeyring"
    for module, name, expected in [
        ("keyring.backends.SecretService", "Keyring", "Secret Service"),
        ("keyring.backends.Windows", "WinVaultKeyring", "Windows Credential Manager"),
        ("keyring.backends.macOS", "Keyring", "macOS Keychain"),
        ("keyring.backends.kwallet", "DBusKeyring", "KWallet"),
    ]:
        lookalike = type(name, (InMemoryKeyring,), {"__module__": module, "priority": 5})
        assert expected in CredentialStore(lookalike()).backend_description


def test_construction_does_not_touch_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_backend() -> None:
        raise RuntimeError("keyring.backends.nothere could not be imported")

    monkeypatch.setattr(keyring, "get_keyring", no_backend)
    store = CredentialStore()  # nothing happens here...
    with pytest.raises(KeychainUnavailable) as caught:  # ...only on first use
        store.get(HUB)
    assert caught.value.problem is KeychainProblem.NO_KEYCHAIN
    assert "PYTHON_KEYRING_BACKEND" in caught.value.advice
    assert store.backend_description == "no keychain"


# -- refused backends -----------------------------------------------------------------------


def test_plaintext_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = FakePlaintextKeyring()
    store = CredentialStore(backend)
    for operation in (lambda: store.set(HUB, KEY), lambda: store.get(HUB), lambda: store.delete(HUB)):
        with pytest.raises(KeychainUnavailable) as caught:
            operation()
        assert caught.value.problem is KeychainProblem.PLAINTEXT_REFUSED
    assert backend.calls == []
    assert "keyrings.alt" in caught.value.advice and "MORAG_API_KEY" in caught.value.advice
    assert "plaintext file" in caught.value.message
    assert store.backend_description == f"plaintext file ({backend.file_path}) (refused)"


def test_keyrings_alt_backend_is_refused_whatever_its_priority() -> None:
    backend = KeyringsAltLookalike()
    with pytest.raises(KeychainUnavailable) as caught:
        CredentialStore(backend).set(HUB, KEY)
    assert caught.value.problem is KeychainProblem.PLAINTEXT_REFUSED
    assert backend.calls == []


def test_plaintext_backend_when_allowed(backend: InMemoryKeyring) -> None:
    plaintext = FakePlaintextKeyring()
    store = CredentialStore(plaintext, allow_plaintext=True)
    store.set(HUB, KEY)
    assert store.get(HUB) == KEY
    assert store.backend_description == f"plaintext file ({plaintext.file_path})"


@pytest.mark.parametrize("allow_plaintext", [False, True])
@pytest.mark.parametrize(
    "make", [fail.Keyring, null.Keyring, FakeChainer], ids=["fail", "null", "empty-chain"]
)
def test_no_keychain_backends_are_refused(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[], keyring.backend.KeyringBackend], allow_plaintext: bool
) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    store = CredentialStore(make(), allow_plaintext=allow_plaintext)
    with pytest.raises(KeychainUnavailable) as caught:
        store.set(HUB, KEY)
    error = caught.value
    assert error.problem is KeychainProblem.NO_KEYCHAIN
    assert error.message == "no keychain is available to store the API key"
    if sys.platform.startswith("linux"):
        assert "dbus-run-session" in error.advice and "gnome-keyring-daemon --unlock" in error.advice
    assert "MORAG_API_KEY" in error.advice and "--api-key-file PATH (mode 0600)" in error.advice
    assert error.advice in str(error)
    assert store.backend_description == "no keychain"


@pytest.mark.parametrize("backend_name", ["keyring.backends.null.Keyring", "keyring.backends.fail.Keyring"])
def test_default_selection_checks_what_keyring_picked(
    monkeypatch: pytest.MonkeyPatch, fresh_keyring_detection: None, backend_name: str
) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", backend_name)
    with pytest.raises(KeychainUnavailable):
        CredentialStore().set(HUB, KEY)


def test_default_selection_with_a_broken_backend_name(
    monkeypatch: pytest.MonkeyPatch, fresh_keyring_detection: None
) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.nothere.Keyring")
    with pytest.raises(KeychainUnavailable) as caught:
        CredentialStore().get(HUB)
    assert "PYTHON_KEYRING_BACKEND" in caught.value.advice


def test_chainer_uses_its_best_system_backend_only() -> None:
    secure, plaintext = InMemoryKeyring(), FakePlaintextKeyring()
    plaintext.passwords[(SERVICE_NAME, HUB)] = OTHER_KEY  # a stale plaintext copy is never read
    store = CredentialStore(FakeChainer(secure, plaintext))
    assert store.get(HUB) is None
    store.set(HUB, KEY)
    assert store.get(HUB) == KEY
    assert secure.passwords == {(SERVICE_NAME, HUB): KEY}
    assert plaintext.calls == []
    assert store.backend_description == "tests.fakes.InMemoryKeyring"


def test_chainer_of_plaintext_only_is_refused_unless_allowed() -> None:
    plaintext = FakePlaintextKeyring()
    with pytest.raises(KeychainUnavailable) as caught:
        CredentialStore(FakeChainer(null.Keyring(), plaintext)).set(HUB, KEY)
    assert caught.value.problem is KeychainProblem.PLAINTEXT_REFUSED
    assert plaintext.calls == []
    CredentialStore(FakeChainer(null.Keyring(), plaintext), allow_plaintext=True).set(HUB, KEY)
    assert plaintext.passwords == {(SERVICE_NAME, HUB): KEY}


# -- keychain errors ------------------------------------------------------------------------


class Win32Error(Exception):
    """Shaped like pywintypes.error from win32cred.CredWrite."""


def secret_service_error() -> list[tuple[Exception, KeychainProblem]]:
    try:  # keyring installs SecretStorage on Linux only
        from secretstorage.exceptions import SecretServiceNotAvailableException
    except ImportError:
        return []
    return [(SecretServiceNotAvailableException("DBUS_SESSION_BUS_ADDRESS is unset"), KeychainProblem.FAILED)]


@pytest.mark.parametrize(
    ("error", "problem"),
    [
        (keyring.errors.NoKeyringError("No recommended backend was available"), KeychainProblem.NO_KEYCHAIN),
        (keyring.errors.KeyringLocked("Failed to unlock the collection!"), KeychainProblem.LOCKED),
        (keyring.errors.InitError("Failed to create the collection"), KeychainProblem.FAILED),
        (keyring.errors.PasswordSetError("Can't store password on keychain"), KeychainProblem.FAILED),
        (keyring.errors.PasswordDeleteError("Can't delete password"), KeychainProblem.FAILED),
        *secret_service_error(),
        (FileNotFoundError(2, "No such file or directory"), KeychainProblem.FAILED),
        (Win32Error(1783, "CredWrite", "The stub received bad data."), KeychainProblem.FAILED),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_every_keychain_error_becomes_keychain_unavailable(
    store: CredentialStore, backend: InMemoryKeyring, error: Exception, problem: KeychainProblem
) -> None:
    backend.passwords[(SERVICE_NAME, HUB)] = KEY
    backend.error = error
    operations: list[Callable[[], object]] = [
        lambda: store.get(HUB),
        lambda: store.set(HUB, KEY),
        lambda: store.delete(HUB),
    ]
    for operation in operations:
        with pytest.raises(KeychainUnavailable) as caught:
            operation()
        assert caught.value.problem is problem
        assert caught.value.__cause__ is error
        assert type(error).__name__ in caught.value.message
        assert caught.value.advice


def test_locked_keychain_advice(store: CredentialStore, backend: InMemoryKeyring) -> None:
    backend.error = keyring.errors.KeyringLocked("Failed to unlock the collection!")
    with pytest.raises(KeychainUnavailable) as caught:
        store.get(HUB)
    assert "unlock" in caught.value.advice and "MORAG_API_KEY" in caught.value.advice


def test_an_error_that_echoes_the_key_does_not_carry_it(
    store: CredentialStore, backend: InMemoryKeyring
) -> None:
    backend.error = keyring.errors.PasswordSetError(f"cannot store {KEY!r}")
    with pytest.raises(KeychainUnavailable) as caught:
        store.set(HUB, KEY)
    assert KEY not in str(caught.value) and KEY not in caught.value.message


# -- what a key may be ----------------------------------------------------------------------


def test_long_secret_guard(store: CredentialStore, backend: InMemoryKeyring) -> None:
    store.set(HUB, "k" * MAX_SECRET_CHARS)
    with pytest.raises(InvalidApiKey) as caught:
        store.set(HUB, "k" * (MAX_SECRET_CHARS + 1))
    assert "1201 characters" in caught.value.message and "at most 1200" in caught.value.message
    assert "Windows Credential Manager" in caught.value.message
    # Credential Manager counts UTF-16 units: a character outside the BMP takes two.
    with pytest.raises(InvalidApiKey):
        store.set(HUB, "\N{GRINNING FACE}" * (MAX_SECRET_CHARS // 2 + 1))
    assert backend.passwords == {(SERVICE_NAME, HUB): "k" * MAX_SECRET_CHARS}


@pytest.mark.parametrize("bad", ["", " ", f"{KEY}\n", f"Bearer {KEY}", f"{KEY}\x00"])
def test_implausible_keys_are_refused(store: CredentialStore, backend: InMemoryKeyring, bad: str) -> None:
    with pytest.raises(InvalidApiKey):
        store.set(HUB, bad)
    assert backend.calls == []


# -- --api-key-file -------------------------------------------------------------------------


@posix_only
@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_key_file_owner_only_is_read(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path / "key", f"  {KEY}\n", mode)
    assert read_api_key_file(path) == KEY
    assert read_api_key_file(str(path)) == KEY


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path / "key", KEY, mode)
    with pytest.raises(ApiKeyFileError) as caught:
        read_api_key_file(path)
    assert f"mode {mode:04o}" in caught.value.message
    assert caught.value.advice == f"run: chmod 600 {path}"
    assert KEY not in str(caught.value)


@posix_only
def test_key_file_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_key_file(tmp_path / "key", KEY)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(path).st_uid + 1)
    with pytest.raises(ApiKeyFileError, match="belongs to another user"):
        read_api_key_file(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "empty"),
        ("\n\n", "empty"),
        (f"{KEY}\n{OTHER_KEY}\n", "spaces, line breaks"),
        ("x" * 1300, "1300"),
    ],
)
def test_key_file_must_hold_one_key(tmp_path: Path, content: str, match: str) -> None:
    path = write_key_file(tmp_path / "key", content)
    with pytest.raises(ApiKeyFileError, match=match):
        read_api_key_file(path)


def test_key_file_missing_or_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ApiKeyFileError, match="does not exist"):
        read_api_key_file(tmp_path / "nothere")
    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    with pytest.raises(ApiKeyFileError, match="not a regular file|cannot open"):
        read_api_key_file(folder)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_key_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ApiKeyFileError, match="not a regular file"):
        read_api_key_file(fifo)


def test_key_file_too_large(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "key", "k" * (70 * 1024))
    with pytest.raises(ApiKeyFileError, match="too large"):
        read_api_key_file(path)


# -- resolution -----------------------------------------------------------------------------


def test_resolve_prefers_the_file_then_the_environment_then_the_keychain(
    tmp_path: Path, store: CredentialStore
) -> None:
    store.set(HUB, KEY)
    file_key = "mk_ZmlsZUtleV8xMjM0NTY3ODkwYWJjZGVmZ2hpamts"
    env_key = "mk_ZW52S2V5XzEyMzQ1Njc4OTBhYmNkZWZnaGlqa2xt"
    path = write_key_file(tmp_path / "key", file_key)
    env = {"MORAG_API_KEY": env_key}

    both = resolve_api_key(env=env, api_key_file=path, store=store, hub_url=HUB)
    assert (both.key, both.source) == (file_key, KeySource.FILE)
    from_env = resolve_api_key(env=env, api_key_file=None, store=store, hub_url=HUB)
    assert (from_env.key, from_env.source) == (env_key, KeySource.ENV)
    from_keychain = resolve_api_key(env={"MORAG_API_KEY": "  "}, api_key_file=None, store=store, hub_url=HUB)
    assert (from_keychain.key, from_keychain.source) == (KEY, KeySource.KEYCHAIN)
    assert KEY not in repr(from_keychain)


def test_resolve_does_not_fall_through_a_bad_file(tmp_path: Path, store: CredentialStore) -> None:
    store.set(HUB, KEY)
    with pytest.raises(ApiKeyFileError):
        resolve_api_key(
            env={"MORAG_API_KEY": KEY}, api_key_file=tmp_path / "nothere", store=store, hub_url=HUB
        )


def test_resolve_with_no_key_anywhere(store: CredentialStore) -> None:
    for maybe_store in (store, None):
        with pytest.raises(NoApiKey) as caught:
            resolve_api_key(env={}, api_key_file=None, store=maybe_store, hub_url=HUB + "/")
        assert "morag-worker login" in caught.value.advice
        assert caught.value.message == f"no API key for {HUB}"


def test_resolve_reports_an_unusable_keychain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    with pytest.raises(KeychainUnavailable) as caught:
        resolve_api_key(env={}, api_key_file=None, store=CredentialStore(fail.Keyring()), hub_url=HUB)
    assert "MORAG_API_KEY" in caught.value.advice


def test_resolve_refuses_an_implausible_env_key(store: CredentialStore) -> None:
    with pytest.raises(InvalidApiKey, match="MORAG_API_KEY"):
        resolve_api_key(env={"MORAG_API_KEY": "two words"}, api_key_file=None, store=store, hub_url=HUB)


# -- the key never reaches a log ------------------------------------------------------------


def test_the_key_never_appears_in_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    backend = InMemoryKeyring()
    store = CredentialStore(backend)
    path = write_key_file(tmp_path / "key", KEY)
    raised: list[BaseException] = []
    with structlog.testing.capture_logs() as events:
        store.set(HUB, KEY)
        store.get(HUB)
        resolve_api_key(env={}, api_key_file=None, store=store, hub_url=HUB)
        resolve_api_key(env={"MORAG_API_KEY": KEY}, api_key_file=None, store=store, hub_url=HUB)
        resolve_api_key(env={}, api_key_file=path, store=store, hub_url=HUB)
        store.delete(HUB)
        backend.error = keyring.errors.PasswordSetError(f"cannot store {KEY}")
        for operation in (lambda: store.set(HUB, KEY), lambda: store.get(HUB)):
            try:
                operation()
            except KeychainUnavailable as exc:
                raised.append(exc)
        try:
            CredentialStore(FakePlaintextKeyring(), allow_plaintext=True).set(HUB, KEY)
            CredentialStore(FakePlaintextKeyring()).set(HUB, KEY)
        except KeychainUnavailable as exc:
            raised.append(exc)
        path.chmod(0o644)
        try:
            read_api_key_file(path)
        except ApiKeyFileError as exc:
            raised.append(exc)
    assert len(raised) == (4 if sys.platform != "win32" else 3)
    assert {e["event"] for e in events} >= {
        "credentials.stored",
        "credentials.resolved",
        "credentials.deleted",
    }
    captured = capsys.readouterr()
    for text in (repr(events), caplog.text, captured.out, captured.err, *map(str, raised)):
        assert KEY not in text


# ---- a key file chosen without a keychain (issue 11, point 2) ------------------------------------


def test_key_file_store_round_trip_is_atomic_and_private(tmp_path: Path) -> None:
    from morag_worker.core.config.credentials import KeyPlace, key_file_path

    path = key_file_path(tmp_path / "config")
    store = CredentialStore(FakePlaintextKeyring(), key_file=path)  # a refused backend: no keychain
    store.set("http://hub.test:8700", KEY, KeyPlace.FILE)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    assert store.get("http://hub.test:8700/") == KEY
    store.set("http://other.test:8700", KEY[::-1], KeyPlace.FILE)
    assert store.delete("http://hub.test:8700") is True
    assert CredentialStore(FakePlaintextKeyring(), key_file=path).get("http://other.test:8700") == KEY[::-1]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_key_file_store_readable_by_others_is_refused(tmp_path: Path) -> None:
    from morag_worker.core.config.credentials import KeyPlace, key_file_path

    path = key_file_path(tmp_path)
    store = CredentialStore(FakePlaintextKeyring(), key_file=path)
    store.set("http://hub.test:8700", KEY, KeyPlace.FILE)
    path.chmod(0o644)
    with pytest.raises(ApiKeyFileError, match="readable by others"):
        store.get("http://hub.test:8700")


def test_damaged_key_file_store_says_so_without_the_key(tmp_path: Path) -> None:
    from morag_worker.core.config.credentials import key_file_path

    path = write_key_file(key_file_path(tmp_path), '{"keys": ' + KEY)
    with pytest.raises(ApiKeyFileError, match="damaged") as caught:
        CredentialStore(FakePlaintextKeyring(), key_file=path).get("http://hub.test:8700")
    assert KEY not in str(caught.value)


def test_no_key_file_configured_refuses_the_file_place(store: CredentialStore) -> None:
    from morag_worker.core.config.credentials import KeyPlace

    with pytest.raises(ApiKeyFileError):
        store.set("http://hub.test:8700", KEY, KeyPlace.FILE)
