"""One tray app per user and config folder: a second launch hands off to the first."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from morag_worker.gui.single_instance import SingleInstance, server_name
from tests.gui.conftest import WAIT_MS

pytestmark = pytest.mark.gui


def test_second_instance_asks_the_first_to_show_itself(qtbot: QtBot, tmp_path: Path) -> None:
    name = server_name(tmp_path / "config")
    first = SingleInstance(name)
    assert first.listen() and first.listening
    second = SingleInstance(name)
    with qtbot.waitSignal(first.show_requested, timeout=WAIT_MS):
        assert second.hand_off()
    first.close()
    assert not SingleInstance(name).hand_off(timeout_ms=200)  # nobody answers any more
    again = SingleInstance(name)
    assert again.listen()  # and the name is free again
    again.close()


def test_names_differ_per_user_and_config_folder(tmp_path: Path) -> None:
    a = server_name(tmp_path / "a", user="alice")
    assert a == server_name(tmp_path / "a", user="alice")
    assert a != server_name(tmp_path / "b", user="alice")
    assert a != server_name(tmp_path / "a", user="bob")
    assert server_name(None, user="alice").startswith("morag-worker-")
    assert len(a) < 40  # fits a Unix socket path with room to spare
