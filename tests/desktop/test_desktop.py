"""The real app on a real X desktop, as a new user meets it: Xvfb, openbox, Debian's ``trayer`` as
the system tray, gnome-keyring on a private D-Bus, a real hub and worker; driven with xdotool.

It asserts that the icon docks in the tray, that first run completes (the key typed into the
dialog ends up in gnome-keyring and the worker starts), and that the tray menu opens with the
state in words on top. Screenshots go to the test's tmp dir; with ``MORAG_DOCS_SCREENSHOTS=DIR``
the ones the README shows are also written there (``docs/screenshots``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Stack
from tests.desktop.xsession import XSession, missing_tools, start_x_session
from tests.keychain import SecretServiceSession, start_secret_service
from tests.keychain import skip_reason as keychain_skip_reason
from tests.processes import Proc, base_env, python_argv, wait_for

pytestmark = [
    pytest.mark.desktop,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Xvfb and trayer are Linux programs"),
    pytest.mark.skipif(bool(missing_tools()), reason=f"not installed: {', '.join(missing_tools())}"),
    pytest.mark.skipif(keychain_skip_reason() is not None, reason=str(keychain_skip_reason())),
]

DIALOG_TITLE = "Welcome to MoRAG Worker"


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[tuple[XSession, SecretServiceSession]]:
    keychain = start_secret_service(tmp_path / "keychain")
    try:
        env = base_env(**keychain.env, PYTHONUNBUFFERED="1")
        session = start_x_session(tmp_path / "x", env)
        try:
            yield session, keychain
        finally:
            session.close()
    finally:
        keychain.stop()


def _shot(
    session: XSession,
    tmp_path: Path,
    name: str,
    window: str = "root",
    crop: tuple[int, int, int, int] | None = None,
) -> Path:
    path = session.screenshot(tmp_path / "screenshots" / f"{name}.png", window, crop)
    docs = os.environ.get("MORAG_DOCS_SCREENSHOTS")
    if docs:
        shutil.copyfile(path, Path(docs) / f"desktop-{name}.png")
    return path


def _inside(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    x, y, w, h = inner
    ox, oy, ow, oh = outer
    return ox <= x and oy <= y and x + w <= ox + ow and y + h <= oy + oh


def test_first_run_on_a_real_desktop_docks_stores_the_key_and_opens_the_menu(
    desktop: tuple[XSession, SecretServiceSession], stack: Stack, tmp_path: Path
) -> None:
    session, keychain = desktop
    key = stack.key("dora")
    app = Proc(
        python_argv("-m", "morag_worker", "--config-dir", str(tmp_path / "config"), "--log-format", "json",
                    "-vv"),
        env=session.env,
        name="tray app",
    )  # fmt: skip
    try:
        app.wait_output('"event": "gui.ready"', timeout=60)
        assert app.saw('"tray": true'), "Qt found no system tray although trayer runs"

        # The icon docks: a small window of ours inside trayer's.
        trayer = max(session.windows("--class", "trayer"), key=lambda w: session.geometry(w)[2])
        tray_area = session.geometry(trayer)

        def docked_icon() -> str | None:
            for window in session.windows("--onlyvisible", "--class", "morag-worker"):
                if _inside(session.geometry(window), tray_area):
                    return window
            return None

        icon = wait_for(docked_icon, timeout=30, what="the tray icon inside trayer")
        _, _, width, height = session.geometry(icon)
        assert 12 <= width <= 64 and 12 <= height <= 64

        # First run: the welcome dialog, the key field focused once the keychain was read.
        dialog = wait_for(
            lambda: (found := session.windows("--onlyvisible", "--name", DIALOG_TITLE)) and found[0],
            timeout=30,
            what="the first-run dialog",
        )
        app.wait_output('"event": "credentials.read"', timeout=30)
        session.xdotool("windowactivate", "--sync", dialog)
        session.type_text(key)
        session.xdotool("key", "shift+Tab")
        session.type_text(stack.hub_url)
        _shot(session, tmp_path, "first-run", dialog)
        session.xdotool("key", "Return")  # the default button: Save and start

        app.wait_output('"event": "settings.saved_from_dialog"', timeout=60)
        # In gnome-keyring, where keyring's Secret Service backend put it (libsecret-tools reads it).
        stored = subprocess.run(
            python_argv("-c", "import keyring, sys; print(keyring.get_password('morag-worker', sys.argv[1]))",
                        stack.hub_url),
            env={**base_env(), **keychain.env}, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert stored.stdout.strip() == key, stored.stderr
        app.wait_output('"state": "running"', timeout=120)
        workers = wait_for(stack.client(key).workers, timeout=120, what="the worker in /api/v1/workers")
        assert workers[0]["user_id"] == "dora"

        # The menu opens from the icon, the state in words on top.
        x, y, width, height = session.geometry(icon)
        session.xdotool("mousemove", "--sync", str(x + width // 2), str(y + height // 2))
        session.xdotool("click", "3")
        app.wait_output('"event": "gui.tray_menu_shown"', timeout=30)
        assert app.saw('"status": "Waiting for work on gpu-tasks-dora'), app.output()[-2000:]
        # The top right corner: the tray with its icon and the menu below it.
        _shot(session, tmp_path, "tray-menu", crop=(1280 - 480, 0, 480, 300))
        session.xdotool("key", "Escape")

        # A click on the icon shows the window.
        session.xdotool("click", "1")
        window = wait_for(
            lambda: [w for w in session.windows("--onlyvisible", "--name", "MoRAG Worker")
                     if not _inside(session.geometry(w), tray_area)],
            timeout=30,
            what="the progress window",
        )  # fmt: skip
        assert window
        _shot(session, tmp_path, "window", window[0])

        app.signal(signal.SIGTERM)
        assert app.wait(timeout=60) == 0
        output = app.output()
        assert "Traceback" not in output
        assert key not in output
    finally:
        app.stop(timeout=10)
