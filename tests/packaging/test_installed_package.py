"""The installed .deb, as a person meets it: the command on PATH, the demo against the system's
redis-server, the tray app offscreen, the desktop files. ``packaging/ci.sh`` builds and installs the
package, runs these (``pytest -m packaging tests/packaging``), then removes and purges it; without
an installed package they are skipped."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from morag_worker import __version__
from tests.processes import Proc, wait_for

COMMAND = Path("/usr/bin/morag-worker")
BUNDLE = Path("/opt/morag-worker")

pytestmark = [
    pytest.mark.packaging,
    pytest.mark.skipif(
        not (BUNDLE / "morag-worker").exists(), reason="the morag-worker package is not installed"
    ),
]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A person's plain environment: no checkout on PYTHONPATH, a fresh home."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_RUNTIME_DIR=str(tmp_path),
    )
    env.update(extra)
    return env


def test_the_command_on_path_is_the_bundle_and_needs_no_display(tmp_path: Path) -> None:
    assert COMMAND.resolve() == BUNDLE / "morag-worker"
    env = _env(tmp_path)
    version = subprocess.run([str(COMMAND), "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and __version__ in version.stdout
    helped = subprocess.run(
        [str(COMMAND), "--no-gui", "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0 and "--no-gui" in helped.stdout


def test_every_qt_library_and_plugin_finds_its_system_libraries() -> None:
    """The package's Depends cover what Qt loads (the xcb plugin aborts with rc 134 otherwise)."""
    qt = BUNDLE / "_internal" / "PySide6"
    files = [p for p in qt.rglob("*.so*") if p.is_file()]
    assert any(p.name == "libqxcb.so" for p in files)
    unresolved = {}
    for path in files:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, timeout=60).stdout
        missing = [line.split()[0] for line in out.splitlines() if "not found" in line]
        if missing:
            unresolved[path.name] = missing
    assert unresolved == {}


def test_demo_runs_from_the_package_against_the_system_redis(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(COMMAND), "demo"], env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    lines = done.stdout.strip().splitlines() + done.stderr.strip().splitlines()
    summary = [line for line in lines if re.fullmatch(r"\d+ of \d+ converted.*", line)]
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary, done.stderr[-3000:]
    converted, total = re.match(r"(\d+) of (\d+)", summary[-1]).groups()  # type: ignore[union-attr]
    assert converted == total and int(total) >= 4
    assert "Traceback" not in done.stderr


def test_tray_app_starts_offscreen_from_the_package_and_quits(tmp_path: Path) -> None:
    env = _env(tmp_path, QT_QPA_PLATFORM="offscreen", PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    app = Proc(
        [str(COMMAND), "--config-dir", str(tmp_path / "config"), "--log-format", "json"],
        env=env,
        name="packaged tray app",
    )
    try:
        app.wait_output('"event": "gui.ready"', timeout=120)
        app.signal(signal.SIGTERM)
        assert app.wait(timeout=60) == 0
        assert '"code": 0, "event": "gui.exited"' in app.output()
        assert "Traceback" not in app.output()
    finally:
        app.stop(timeout=10)


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb (packaging/ci.sh installs it)")
def test_tray_app_starts_on_an_x_server_through_qts_xcb_plugin(tmp_path: Path) -> None:
    """With a display, Qt loads its xcb plugin, which aborts (rc 134) when a library in Depends is missing."""
    xvfb = Proc(["Xvfb", "-displayfd", "1", "-nolisten", "tcp", "-screen", "0", "1280x800x24"], name="Xvfb")
    app = None
    try:
        number = wait_for(
            lambda: next((line for line in xvfb.lines if line.strip().isdigit()), None),
            timeout=60,
            what="Xvfb to say its display number",
        )
        env = _env(tmp_path, DISPLAY=f":{number.strip()}", QT_QPA_PLATFORM="xcb")
        env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
        app = Proc(
            [str(COMMAND), "--config-dir", str(tmp_path / "config"), "--log-format", "json"],
            env=env,
            name="packaged tray app on X",
        )
        app.wait_output('"event": "gui.ready"', timeout=120)
        app.signal(signal.SIGTERM)
        assert app.wait(timeout=60) == 0
        assert "Could not load the Qt platform plugin" not in app.output()
    finally:
        if app is not None:
            app.stop(timeout=10)
        xvfb.stop(timeout=10)


def test_desktop_metadata_icons_and_user_unit_are_installed() -> None:
    desktop = Path("/usr/share/applications/morag-worker.desktop")
    assert "Exec=morag-worker" in desktop.read_text()
    subprocess.run(["desktop-file-validate", str(desktop)], check=True, timeout=60)
    metainfo = next(Path("/usr/share/metainfo").glob("*MoRAGWorker.metainfo.xml"))
    subprocess.run(["appstreamcli", "validate", "--no-net", str(metainfo)], check=True, timeout=60)
    for size in (16, 32, 48, 64, 128, 256):
        assert Path(f"/usr/share/icons/hicolor/{size}x{size}/apps/morag-worker.png").is_file()
    assert Path("/usr/share/icons/hicolor/scalable/apps/morag-worker.svg").is_file()
    unit = Path("/usr/lib/systemd/user/morag-worker.service").read_text()
    assert "ExecStart=/usr/bin/morag-worker --no-gui " in unit
    # Autostart is per user, written by the app on opt-in, never for everyone.
    assert not list(Path("/etc/xdg/autostart").glob("*morag*"))
