"""A private X desktop for the real-desktop tier and the idle bench: Xvfb, openbox, a ``trayer`` tray.

Needs Debian's ``xvfb``, ``openbox``, ``trayer``, ``xdotool`` and ``imagemagick`` (``import``, for
screenshots), which ``scripts/setup.sh`` installs, and the ``libxcb-*`` libraries Qt's xcb plugin
loads. Every process runs in its own session and is stopped (and reaped) by ``close``; nothing
touches the caller's own display.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import stop_processes, wait_for

__all__ = ["REQUIRED_TOOLS", "XSession", "missing_tools", "start_x_session"]

REQUIRED_TOOLS = ("Xvfb", "openbox", "trayer", "xdotool", "import")
SCREEN = "1280x800x24"
_START_TIMEOUT_S = 30.0


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


@dataclass
class XSession:
    """A running X server with a window manager and a system tray; ``env`` points at it."""

    root: Path
    display: str
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def xdotool(self, *args: str, check: bool = True, timeout: float = 30, stdin: str | None = None) -> str:
        """Run ``xdotool args`` on this display (``stdin`` on its standard input); its stdout."""
        done = subprocess.run(
            ["xdotool", *args],
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"xdotool {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def type_text(self, text: str, delay_ms: int = 15) -> None:
        """Type ``text`` into the focused window. It goes on stdin (``--file -``), not in argv: an API
        key must not reach a command line or an error message, and one that starts with ``-`` would
        be taken for an option."""
        self.xdotool("type", "--delay", str(delay_ms), "--file", "-", stdin=text, timeout=60)

    def windows(self, *search: str) -> list[str]:
        """Window ids that ``xdotool search`` finds with ``search`` (none is not an error)."""
        return self.xdotool("search", *search, check=False).split()

    def geometry(self, window: str) -> tuple[int, int, int, int]:
        """``(x, y, width, height)`` of ``window`` on the screen."""
        values = dict(
            line.split("=", 1) for line in self.xdotool("getwindowgeometry", "--shell", window).splitlines()
        )
        return int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"])

    def screenshot(
        self, path: Path, window: str = "root", crop: tuple[int, int, int, int] | None = None
    ) -> Path:
        """Save ``window`` (the whole screen by default), or its ``(x, y, width, height)`` part, as a PNG."""
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = ["-crop", f"{crop[2]}x{crop[3]}+{crop[0]}+{crop[1]}", "+repage"] if crop else []
        subprocess.run(
            ["import", "-window", window, *extra, str(path)],
            env=self.env,
            check=True,
            timeout=60,
            capture_output=True,
        )
        return path

    def close(self) -> None:
        stop_processes(self.processes)
        self.processes.clear()


def _spawn(session: XSession, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
    with (session.root / log_name).open("wb") as log:
        proc = subprocess.Popen(
            argv, env=session.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    session.processes.append(proc)
    return proc


def start_x_session(root: Path, env: dict[str, str] | None = None) -> XSession:
    """Start Xvfb (1280×800), openbox and a ``trayer`` tray at the top right, under ``root``.

    ``env``: the environment the session's programs (and the caller's, through ``XSession.env``)
    run in; the caller's own by default. ``DISPLAY`` is set to the new server.

    Raises:
        RuntimeError: A program did not start; its log is in ``root``.
    """
    root.mkdir(parents=True, exist_ok=True)
    base = dict(os.environ if env is None else env)
    base.pop("WAYLAND_DISPLAY", None)
    base.pop("QT_QPA_PLATFORM", None)
    read_fd, write_fd = os.pipe()
    session = XSession(root=root, display="", env=base)
    try:
        with (root / "xvfb.log").open("wb") as log:
            xvfb = subprocess.Popen(
                ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", SCREEN, "-nolisten", "tcp", "-noreset"],
                pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=base,
            )  # fmt: skip
        session.processes.append(xvfb)
        os.close(write_fd)
        write_fd = -1
        with os.fdopen(read_fd, "rb") as pipe:
            number = pipe.readline().decode().strip()  # written once the server accepts clients
        read_fd = -1
        if not number.isdigit():
            raise RuntimeError(f"Xvfb did not start: {(root / 'xvfb.log').read_text(errors='replace')}")
        session.display = f":{number}"
        base["DISPLAY"] = session.display
        base["QT_QPA_PLATFORM"] = "xcb"
        _spawn(session, ["openbox", "--sm-disable"], "openbox.log")
        _spawn(
            session,
            ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request", "--height", "28",
             "--SetDockType", "true", "--SetPartialStrut", "true", "--transparent", "false", "--tint",
             "0x30343a", "--expand", "true"],
            "trayer.log",
        )  # fmt: skip
        wait_for(lambda: session.windows("--class", "trayer"), _START_TIMEOUT_S, "trayer's window")
    except BaseException:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        session.close()
        raise
    return session
