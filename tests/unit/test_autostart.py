"""Autostart at login: the XDG entry, the Exec quoting, the Windows Run key behind a fake."""

from __future__ import annotations

import configparser
import stat
import subprocess
from pathlib import Path

import pytest

from morag_worker.core.config.autostart import (
    RUN_VALUE_NAME,
    AutostartError,
    WindowsAutostart,
    XdgAutostart,
    autostart_entry,
    autostart_for_platform,
    desktop_exec,
    launch_command,
    load_desktop_template,
)
from tests.fakes import FakeRunKey

pytestmark = pytest.mark.unit


def _entry(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path, encoding="utf-8")
    return parser["Desktop Entry"]


def test_bundled_template_is_a_valid_application_entry() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(load_desktop_template())
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application"
    assert entry["Name"] == "MoRAG Worker"
    assert entry["Icon"] == "morag-worker"
    assert entry["Exec"] == "morag-worker"


def test_xdg_enable_writes_entry_with_exec_and_disable_removes_it(tmp_path: Path) -> None:
    autostart = XdgAutostart(tmp_path / "autostart")
    assert not autostart.is_enabled()
    autostart.enable(["/opt/My Apps/python3", "-m", "morag_worker", "--config-dir", "/home/a b/cfg"])
    path = tmp_path / "autostart" / "morag-worker.desktop"
    assert autostart.location == str(path)
    assert autostart.is_enabled()
    entry = _entry(path)
    assert entry["Exec"] == '"/opt/My Apps/python3" -m morag_worker --config-dir "/home/a b/cfg"'
    assert entry["X-GNOME-Autostart-enabled"] == "true"
    assert "TryExec" not in entry
    assert entry["Name"] == "MoRAG Worker"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    autostart.disable()
    assert not path.exists() and not autostart.is_enabled()
    autostart.disable()  # idempotent


def test_xdg_default_folder_follows_xdg_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert XdgAutostart().path == tmp_path / "cfg" / "autostart" / "morag-worker.desktop"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert XdgAutostart().path == tmp_path / "home" / ".config" / "autostart" / "morag-worker.desktop"


def test_xdg_entry_hidden_by_user_counts_as_disabled(tmp_path: Path) -> None:
    autostart = XdgAutostart(tmp_path)
    autostart.enable(["/usr/bin/morag-worker"])
    autostart.path.write_text(autostart.path.read_text() + "Hidden=true\n")
    assert not autostart.is_enabled()


def test_xdg_enable_reports_an_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AutostartError, match="cannot write the autostart entry"):
        XdgAutostart(blocker / "autostart").enable(["morag-worker"])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/usr/bin/morag-worker"], "/usr/bin/morag-worker"),
        (["/p/python", "-m", "x"], "/p/python -m x"),
        (["/a b/c"], '"/a b/c"'),
        (["50%"], "50%%"),
        (['say "hi" $HOME'], '"say \\\\"hi\\\\" \\\\$HOME"'),
        (["C:\\x"], '"C:\\\\\\\\x"'),
        ([""], '""'),
    ],
)
def test_desktop_exec_quoting(argv: list[str], expected: str) -> None:
    assert desktop_exec(argv) == expected


def test_desktop_exec_round_trips_through_a_spec_parser() -> None:
    argv = ["/opt/My Apps/python3", "-m", "morag_worker", "--config-dir", "/tmp/it's $odd`"]
    assert _parse_exec(desktop_exec(argv)) == argv


def _parse_exec(line: str) -> list[str]:
    """A reader of Exec values as the Desktop Entry Specification describes them."""
    text = line.replace("\\\\", "\\")  # the string type's escape of a backslash
    args: list[str] = []
    current: list[str] | None = None
    quoted = escaped = False
    for ch in text:
        if escaped:
            current = (current or []) + [ch]
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current = current or []
        elif ch == " " and not quoted:
            if current is not None:
                args.append("".join(current))
            current = None
        else:
            current = (current or []) + [ch]
    if current is not None:
        args.append("".join(current))
    return [arg.replace("%%", "%") for arg in args]


def test_autostart_entry_requires_an_exec_line() -> None:
    with pytest.raises(ValueError, match="Exec"):
        autostart_entry("[Desktop Entry]\nName=x\n", "y")


def test_launch_command_variants(tmp_path: Path) -> None:
    assert launch_command(frozen=True, executable="/opt/mw/MoRAG Worker", which=lambda _: None) == [
        "/opt/mw/MoRAG Worker"
    ]
    assert launch_command(frozen=False, executable="/py", which=lambda _: "/usr/bin/morag-worker") == [
        "/usr/bin/morag-worker"
    ]
    assert launch_command(frozen=False, executable="/py", which=lambda _: None, extra_args=["--x"]) == [
        "/py",
        "-m",
        "morag_worker",
        "--x",
    ]
    python = tmp_path / "python.exe"
    (tmp_path / "pythonw.exe").write_text("")
    windowed = launch_command(frozen=False, executable=str(python), which=lambda _: None, platform="win32")
    assert windowed[0] == str(tmp_path / "pythonw.exe")


def test_windows_run_key_enable_disable() -> None:
    key = FakeRunKey()
    autostart = WindowsAutostart(key)
    assert not autostart.is_enabled()
    command = ["C:\\Program Files\\MoRAG Worker\\MoRAG Worker.exe", "--config-dir", "D:\\cfg"]
    autostart.enable(command)
    assert key.values[RUN_VALUE_NAME] == subprocess.list2cmdline(command)
    assert key.values[RUN_VALUE_NAME].startswith('"C:\\Program Files\\MoRAG Worker\\MoRAG Worker.exe"')
    assert autostart.is_enabled()
    assert "CurrentVersion\\Run" in autostart.location
    autostart.disable()
    assert RUN_VALUE_NAME not in key.values and not autostart.is_enabled()
    autostart.disable()


def test_windows_run_key_errors_are_explained() -> None:
    key = FakeRunKey(error=PermissionError("Access is denied"))
    autostart = WindowsAutostart(key)
    assert not autostart.is_enabled()
    with pytest.raises(AutostartError, match="not be allowed to change startup programs"):
        autostart.enable(["x.exe"])


def test_autostart_for_platform() -> None:
    assert isinstance(autostart_for_platform("linux"), XdgAutostart)
    assert isinstance(autostart_for_platform("win32"), WindowsAutostart)
    assert autostart_for_platform("darwin") is None
