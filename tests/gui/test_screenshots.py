"""packaging/render_screenshots.py draws the docs' images from the live widgets, as the live app
looks: its palette, its window sizes, and the keychain this platform really has."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtGui import QImage

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ("progress-window", "no-tray-window", "history", "log", "tray-menu", "settings",
         "first-run-wrong-key", "quit-question", "tray-icons")  # fmt: skip
CHECK_SCRIPT = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/packaging"]
import render_screenshots as shots
app = shots.make_application()
assert app.palette() == app.style().standardPalette(), "a palette the live app does not have"
print(shots.KEYCHAIN)
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=180, check=False, cwd=ROOT
    )


def test_screenshots_use_the_live_palette_and_this_platforms_keychain() -> None:
    done = _run("-c", CHECK_SCRIPT, str(ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    keychain = done.stdout.strip().splitlines()[-1]
    if sys.platform.startswith("linux"):
        assert keychain == "Secret Service (GNOME Keyring or compatible)"
    assert "Windows" not in keychain or sys.platform.startswith("win")


def test_every_screenshot_renders_at_the_live_size(tmp_path: Path) -> None:
    done = _run("packaging/render_screenshots.py", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    for name in SHOTS:
        image = QImage(str(tmp_path / f"{name}.png"))
        assert not image.isNull(), name
    # The window keeps the size the live app opens it at (no resize for the picture).
    window = QImage(str(tmp_path / "progress-window.png"))
    assert (window.width(), window.height()) == (680, 480)
