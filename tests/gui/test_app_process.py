"""The real ``morag-worker`` tray app process, offscreen: ready, single instance, clean SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from morag_worker.core.naming import WorkerType
from morag_worker.core.settings import Settings, SettingsStore
from tests.conftest import SAMPLES, Stack
from tests.processes import Proc, base_env, python_argv, wait_for

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


def test_tray_app_runs_the_real_worker_end_to_end(stack: Stack, tmp_path: Path) -> None:
    """The tray app with the real supervisor: it starts working, a task comes back, SIGTERM is clean."""
    key = stack.key("tina")
    config = tmp_path / "config"
    SettingsStore(config).save(
        Settings(hub_url=stack.hub_url, start_working_on_launch=True, worker_type=WorkerType.GPU)
    )
    env = _env(tmp_path)
    env["MORAG_API_KEY"] = key
    app = Proc(
        python_argv("-m", "morag_worker", "--config-dir", str(config), "--log-format", "json"),
        env=env,
        name="tray app",
    )
    client = stack.client(key)
    try:
        app.wait_output('"event": "gui.ready"', timeout=60)
        workers = wait_for(client.workers, timeout=120, what="the tray app's worker in /api/v1/workers")
        assert workers[0]["user_id"] == "tina"
        # No GPU on this machine, and still the worker serves the queue the seed sends to.
        assert workers[0]["queues"] == ["gpu-tasks-tina", "cpu-tasks-tina"]
        uploaded = client.upload(SAMPLES / "sample.txt")
        created = client.create_task(file_id=uploaded["file_id"])
        assert created["queue"] == "gpu-tasks-tina"
        view = wait_for(lambda: (v := client.task(created["task_id"])).done and v, 120, "the task")
        assert view.result is not None and view.result["success"] is True
        app.signal(signal.SIGTERM)
        assert app.wait(timeout=60) == 0
        wait_for(lambda: client.workers() == [], timeout=60, what="the worker to leave")
        assert key not in app.output()
    finally:
        app.stop(timeout=10)
