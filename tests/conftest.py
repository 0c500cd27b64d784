"""Shared fixtures. Fakes live in ``tests.fakes``; the private Secret Service in ``tests.keychain``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keyring.backend
import keyring.core
import pytest

from tests.keychain import SecretServiceSession, skip_reason, start_secret_service

# Variables that steer keyring's backend choice or point at a real session; keychain tests
# start from none of them.
_KEYRING_ENV = (
    "PYTHON_KEYRING_BACKEND",
    "DBUS_SESSION_BUS_ADDRESS",
    "HOME",
    "XDG_DATA_HOME",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "XDG_RUNTIME_DIR",
)


@pytest.fixture(scope="session")
def secret_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretServiceSession]:
    """A private D-Bus session bus with an unlocked gnome-keyring-daemon, for the whole session.

    Skips when not on Linux or when ``dbus-daemon`` / ``gnome-keyring-daemon`` are missing
    (CI installs the ``dbus-daemon`` and ``gnome-keyring`` packages).
    """
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    session = start_secret_service(tmp_path_factory.mktemp("secret-service"))
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture
def fresh_keyring_detection(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make keyring detect its backend again under this test's environment, and forget it after.

    keyring caches both the chosen backend and the list of viable ones for the process.
    """
    get_all = keyring.backend.get_all_keyring
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    monkeypatch.setattr(keyring.backend, "_limit", None)
    monkeypatch.delattr(get_all, "saved_result", raising=False)
    yield
    vars(get_all).pop("saved_result", None)  # monkeypatch then restores the earlier cache, if any


def use_secret_service(session: SecretServiceSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this process's environment at ``session`` for the rest of the test."""
    for name in _KEYRING_ENV:
        monkeypatch.delenv(name, raising=False)
        if name in session.env:
            monkeypatch.setenv(name, session.env[name])


@pytest.fixture
def keychain_env(
    secret_service: SecretServiceSession, monkeypatch: pytest.MonkeyPatch, fresh_keyring_detection: None
) -> Path:
    """Point this process (and keyring's detection) at the private Secret Service; returns HOME."""
    use_secret_service(secret_service, monkeypatch)
    return secret_service.home


@pytest.fixture
def own_secret_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_keyring_detection: None
) -> Iterator[SecretServiceSession]:
    """A private Secret Service for one test that may break it (lock it, stop it...)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    session = start_secret_service(tmp_path / "secret-service")
    try:
        use_secret_service(session, monkeypatch)
        yield session
    finally:
        session.stop()


@pytest.fixture
def no_keychain_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_keyring_detection: None) -> Path:
    """An environment with no usable keychain: a dead session bus address and an empty HOME."""
    for name in _KEYRING_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus-here'}")
    return tmp_path
