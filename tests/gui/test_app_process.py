"""The real ``morag-worker`` tray app process, offscreen: ready, single instance, clean SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import Proc, base_env, python_argv

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is not a signal a Windows process can catch"),
]


def _env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return base_env(
        QT_QPA_PLATFORM="offscreen",
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
    )


def test_tray_app_process_starts_hands_off_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    argv = python_argv("-m", "morag_worker", "--config-dir", str(tmp_path / "config"), "--log-format", "json")
    env = _env(tmp_path)
    app = Proc(argv, env=env, name="tray app")
    try:
        app.wait_output('"event": "gui.ready"', timeout=60)

        second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 0, second.stderr
        assert "gui.already_running" in second.stderr
        app.wait_output("gui.show_requested", timeout=30)

        app.signal(signal.SIGTERM)
        assert app.wait(timeout=30) == 0
        output = app.output()
        assert '"signal": "SIGTERM"' in output and '"code": 0, "event": "gui.exited"' in output
        assert "Traceback" not in output
        # The log file is there for "Open log folder".
        assert (tmp_path / "config" / "logs" / "tray.log").read_text().count("gui.ready") == 1
    finally:
        app.stop(timeout=10)
