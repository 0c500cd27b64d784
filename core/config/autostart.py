"""Start the tray app when the user logs in: the XDG autostart entry on Linux, the Run key on Windows.

This module owns ``~/.config/autostart/morag-worker.desktop`` (``$XDG_CONFIG_HOME`` respected) and
the ``MoRAG Worker`` value under ``HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run``. The
autostart entry is the bundled ``resources/morag-worker.desktop`` with its ``Exec`` line replaced,
so the desktop metadata has one home. The Windows registry is reached through a small
``RunKey`` interface (``winreg`` imported lazily), so the logic is tested on any platform.

Plain functions and objects without threads; ``enable``/``disable`` do file or registry I/O and
may run on any thread (the GUI runs them through its background helper).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol

import structlog

from morag_worker.core.config.atomic_file import write_atomically

__all__ = [
    "AUTOSTART_FILE_NAME",
    "RUN_KEY_PATH",
    "RUN_VALUE_NAME",
    "Autostart",
    "AutostartError",
    "RunKey",
    "WindowsAutostart",
    "WinregRunKey",
    "XdgAutostart",
    "autostart_entry",
    "autostart_for_platform",
    "desktop_exec",
    "launch_command",
    "load_desktop_template",
]

AUTOSTART_FILE_NAME = "morag-worker.desktop"
RUN_KEY_PATH = r"Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE_NAME = "MoRAG Worker"

log = structlog.get_logger(__name__)


class AutostartError(Exception):
    """Autostart could not be changed; ``str()`` says what failed and what to do."""


class Autostart(Protocol):
    """Something that can make the app start at login (XDG file, Run key, or a fake)."""

    @property
    def location(self) -> str:
        """Where the setting lives, for a person (a file path or a registry key)."""
        ...

    def is_enabled(self) -> bool:
        """Whether the app starts at login now."""
        ...

    def enable(self, command: Sequence[str]) -> None:
        """Start ``command`` at login, replacing any earlier entry of this app."""
        ...

    def disable(self) -> None:
        """Do not start the app at login; nothing happens when it was not enabled."""
        ...


# -- commands ---------------------------------------------------------------------------------


def launch_command(
    *,
    frozen: bool | None = None,
    executable: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    platform: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv that starts the tray app the way this process was installed; pure but for ``which``.

    - A PyInstaller bundle: the bundle's executable.
    - An installed console script ``morag-worker`` on ``PATH``: that.
    - Otherwise ``python -m morag_worker`` with this interpreter (``pythonw.exe`` on Windows, so
      no console window opens at login).

    Args:
        frozen: Whether this is a frozen bundle; defaults to ``sys.frozen``.
        executable: The interpreter or bundle; defaults to ``sys.executable``.
        which: Looks a program up on ``PATH``.
        platform: ``sys.platform`` by default.
        extra_args: Appended as they are (e.g. ``["--config-dir", DIR]``).
    """
    frozen = bool(getattr(sys, "frozen", False)) if frozen is None else frozen
    executable = executable or sys.executable
    platform = platform or sys.platform
    if frozen:
        return [executable, *extra_args]
    script = which("morag-worker")
    if script:
        return [script, *extra_args]
    if platform == "win32":
        windowed = Path(executable).with_name("pythonw.exe")
        if Path(executable).name.lower() == "python.exe" and windowed.exists():
            executable = str(windowed)
    return [executable, "-m", "morag_worker", *extra_args]


_DESKTOP_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def desktop_exec(argv: Sequence[str]) -> str:
    """Quote ``argv`` for a desktop entry's ``Exec`` key (Desktop Entry Specification 1.5); pure.

    Arguments with reserved characters are double-quoted with ``"`` ``\\`` `` ` `` ``$`` escaped;
    ``%`` is doubled (field codes). The ``\\`` escapes of the string type are applied on top.
    """
    if not argv:
        raise ValueError("an Exec line needs a program")
    parts = []
    for arg in argv:
        text = arg.replace("%", "%%")
        if not text or any(ch in _DESKTOP_RESERVED for ch in text):
            escaped = "".join("\\" + ch if ch in '"`$\\' else ch for ch in text)
            text = f'"{escaped}"'
        parts.append(text)
    # The value is a "string": a literal backslash is written as two.
    return " ".join(parts).replace("\\", "\\\\")


def load_desktop_template() -> str:
    """The bundled ``morag-worker.desktop`` text (``importlib.resources``)."""
    return resources.files("morag_worker.resources").joinpath(AUTOSTART_FILE_NAME).read_text(encoding="utf-8")


def autostart_entry(template: str, exec_line: str) -> str:
    """The autostart file: ``template`` with ``Exec`` replaced and GNOME's autostart flag set; pure.

    ``TryExec`` is dropped (the command is absolute or an interpreter, not a name on ``PATH``);
    keys of other groups (actions) are left alone.
    """
    out: list[str] = []
    group = ""
    for line in template.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if group == "Desktop Entry":
                out.append("X-GNOME-Autostart-enabled=true")
            group = stripped[1:-1]
            out.append(line)
            continue
        key = stripped.split("=", 1)[0].strip()
        if group == "Desktop Entry" and key in ("Exec", "TryExec", "X-GNOME-Autostart-enabled", "Hidden"):
            if key == "Exec":
                out.append(f"Exec={exec_line}")
            continue
        out.append(line)
    if group == "Desktop Entry":
        while out and not out[-1].strip():
            out.pop()
        out.append("X-GNOME-Autostart-enabled=true")
    if not any(line.startswith("Exec=") for line in out):
        raise ValueError("the desktop template has no [Desktop Entry] Exec line")
    return "\n".join(out) + "\n"


# -- Linux and other XDG desktops -------------------------------------------------------------


def _xdg_config_home() -> Path:
    configured = os.environ.get("XDG_CONFIG_HOME", "")
    return Path(configured) if os.path.isabs(configured) else Path.home() / ".config"


class XdgAutostart:
    """The XDG autostart entry ``$XDG_CONFIG_HOME/autostart/morag-worker.desktop``.

    Args:
        autostart_dir: The folder; defaults to ``$XDG_CONFIG_HOME/autostart`` (``~/.config``),
            looked up when used, not at construction.
        template: The desktop entry to start from; defaults to the bundled one.
    """

    def __init__(self, autostart_dir: Path | None = None, template: str | None = None) -> None:
        self._dir = autostart_dir
        self._template = template

    @property
    def path(self) -> Path:
        """The autostart file."""
        return (self._dir or _xdg_config_home() / "autostart") / AUTOSTART_FILE_NAME

    @property
    def location(self) -> str:
        return str(self.path)

    def is_enabled(self) -> bool:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return False
        lines = {line.strip().replace(" ", "") for line in text.splitlines()}
        return "Hidden=true" not in lines and "X-GNOME-Autostart-enabled=false" not in lines

    def enable(self, command: Sequence[str]) -> None:
        """Write the entry atomically (mode 0644) so the session starts ``command`` at login.

        Raises:
            AutostartError: The folder or file cannot be written.
        """
        template = self._template if self._template is not None else load_desktop_template()
        text = autostart_entry(template, desktop_exec(command))
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, text, mode=0o644)
        except OSError as exc:
            raise AutostartError(
                f"cannot write the autostart entry {path} ({exc.__class__.__name__}: {exc}); "
                "check that the folder is writable"
            ) from exc
        log.info("autostart.enabled", path=str(path))

    def disable(self) -> None:
        """Remove the entry.

        Raises:
            AutostartError: It exists but cannot be removed.
        """
        path = self.path
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise AutostartError(
                f"cannot remove the autostart entry {path} ({exc.__class__.__name__}: {exc})"
            ) from exc
        log.info("autostart.disabled", path=str(path))


# -- Windows ----------------------------------------------------------------------------------


class RunKey(Protocol):
    """The per-user ``Run`` key: named string values (``winreg`` in production, a dict in tests)."""

    def get(self, name: str) -> str | None:
        """The value ``name``, or None when absent."""
        ...

    def set(self, name: str, value: str) -> None:
        """Create or replace the string value ``name``."""
        ...

    def delete(self, name: str) -> None:
        """Remove ``name``; nothing happens when it is absent."""
        ...


class WinregRunKey:
    """``HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Run`` through ``winreg``."""

    def __init__(self, path: str = RUN_KEY_PATH) -> None:
        self._path = path

    def get(self, name: str) -> str | None:
        import winreg  # Windows only

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, self._path) as key:  # type: ignore[attr-defined,unused-ignore]
                value, _kind = winreg.QueryValueEx(key, name)  # type: ignore[attr-defined,unused-ignore]
        except FileNotFoundError:
            return None
        return str(value)

    def set(self, name: str, value: str) -> None:
        import winreg  # Windows only

        with winreg.CreateKey(winreg.HKEY_CURRENT_USER, self._path) as key:  # type: ignore[attr-defined,unused-ignore]
            winreg.SetValueEx(key, name, 0, winreg.REG_SZ, value)  # type: ignore[attr-defined,unused-ignore]

    def delete(self, name: str) -> None:
        import winreg  # Windows only

        try:
            with winreg.OpenKey(  # type: ignore[attr-defined,unused-ignore]
                winreg.HKEY_CURRENT_USER,  # type: ignore[attr-defined,unused-ignore]
                self._path,
                0,
                winreg.KEY_SET_VALUE,  # type: ignore[attr-defined,unused-ignore]
            ) as key:
                winreg.DeleteValue(key, name)  # type: ignore[attr-defined,unused-ignore]
        except FileNotFoundError:
            return


class WindowsAutostart:
    """The ``MoRAG Worker`` value of the per-user ``Run`` key.

    Args:
        run_key: The key; ``WinregRunKey()`` by default.
    """

    def __init__(self, run_key: RunKey | None = None) -> None:
        self._key: RunKey = run_key if run_key is not None else WinregRunKey()

    @property
    def location(self) -> str:
        return f"HKEY_CURRENT_USER\\{RUN_KEY_PATH}\\{RUN_VALUE_NAME}"

    def is_enabled(self) -> bool:
        try:
            return bool(self._key.get(RUN_VALUE_NAME))
        except OSError as exc:
            log.warning("autostart.read_failed", error=f"{exc.__class__.__name__}: {exc}")
            return False

    def enable(self, command: Sequence[str]) -> None:
        """Set the value to ``command`` quoted for ``CreateProcess``.

        Raises:
            AutostartError: The registry refused the change.
        """
        value = subprocess.list2cmdline(list(command))
        try:
            self._key.set(RUN_VALUE_NAME, value)
        except OSError as exc:
            raise AutostartError(
                f"cannot write {self.location} ({exc.__class__.__name__}: {exc}); "
                "your account may not be allowed to change startup programs"
            ) from exc
        log.info("autostart.enabled", key=self.location)

    def disable(self) -> None:
        """Remove the value.

        Raises:
            AutostartError: The registry refused the change.
        """
        try:
            self._key.delete(RUN_VALUE_NAME)
        except OSError as exc:
            raise AutostartError(f"cannot remove {self.location} ({exc.__class__.__name__}: {exc})") from exc
        log.info("autostart.disabled", key=self.location)


def autostart_for_platform(platform: str | None = None) -> Autostart | None:
    """The autostart mechanism of ``platform`` (``sys.platform``); None where there is none yet (macOS)."""
    platform = platform or sys.platform
    if platform == "win32":
        return WindowsAutostart()
    if platform == "darwin":
        return None
    return XdgAutostart()
