"""Shared fixtures. Fakes live in ``tests.fakes``."""

from __future__ import annotations

from collections.abc import Iterator

import keyring.backend
import keyring.core
import pytest


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
