"""The X11 sensors against a real X server (Xvfb) through the real libX11 and libXss.

The test plays the window manager: it creates a window, names it the root's
``_NET_ACTIVE_WINDOW`` and sets its ``_NET_WM_STATE``, as an EWMH window manager does when a game
goes full screen. What must hold: the worker's sensor reads full screen, then not, says "unknown"
(never crashes the process: Xlib's default error handler would exit) when the active window is
gone, and reads the idle time from the screen saver extension.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from morag_worker.core.execution.health.desktop_sensors import DesktopSensors, declare_xlib
from tests.processes import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("Xvfb") is None
        or not ctypes.util.find_library("X11")
        or not ctypes.util.find_library("Xss"),
        reason="needs Xvfb, libX11 and libXss (scripts/setup.sh installs them)",
    ),
]

XA_ATOM, XA_WINDOW, PROP_MODE_REPLACE = 4, 33, 0


@pytest.fixture
def display() -> Iterator[str]:
    """A private Xvfb; its display number chosen by the server itself (``-displayfd``)."""
    read_fd, write_fd = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "320x240x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as reader:
            number = reader.readline().strip().decode()  # written once the server accepts clients
        assert number.isdecimal(), "Xvfb did not start"
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=30)


class Wm:
    """Sets the EWMH properties a window manager would, through its own connection."""

    def __init__(self, name: str) -> None:
        xlib: Any = ctypes.CDLL(ctypes.util.find_library("X11"))
        declare_xlib(xlib)
        ulong, ptr = ctypes.c_ulong, ctypes.c_void_p
        xlib.XCreateSimpleWindow.restype = ulong
        xlib.XCreateSimpleWindow.argtypes = (
            [ptr, ulong, ctypes.c_int, ctypes.c_int] + [ctypes.c_uint] * 3 + [ulong] * 2
        )
        xlib.XChangeProperty.argtypes = [
            ptr,
            ulong,
            ulong,
            ulong,
            ctypes.c_int,
            ctypes.c_int,
            ptr,
            ctypes.c_int,
        ]
        xlib.XDestroyWindow.argtypes = [ptr, ulong]
        xlib.XSync.argtypes = [ptr, ctypes.c_int]
        xlib.XCloseDisplay.argtypes = [ptr]
        self.xlib = xlib
        self.d = wait_for(lambda: xlib.XOpenDisplay(name.encode()), 30, "the X display to open")
        self.root = xlib.XDefaultRootWindow(self.d)

    def atom(self, name: str) -> int:
        return int(self.xlib.XInternAtom(self.d, name.encode(), 0))

    def window(self) -> int:
        return int(self.xlib.XCreateSimpleWindow(self.d, self.root, 0, 0, 10, 10, 0, 0, 0))

    def set(self, window: int, prop: str, kind: int, values: list[int]) -> None:
        data = (ctypes.c_ulong * max(1, len(values)))(*values)
        self.xlib.XChangeProperty(
            self.d, window, self.atom(prop), kind, 32, PROP_MODE_REPLACE, data, len(values)
        )
        self.xlib.XSync(self.d, 0)

    def destroy(self, window: int) -> None:
        self.xlib.XDestroyWindow(self.d, window)
        self.xlib.XSync(self.d, 0)

    def close(self) -> None:
        self.xlib.XCloseDisplay(self.d)


def test_full_screen_and_idle_are_read_from_a_real_x_server(display: str) -> None:
    wm = Wm(display)
    try:
        full = wm.atom("_NET_WM_STATE_FULLSCREEN")
        game = wm.window()
        wm.set(wm.root, "_NET_ACTIVE_WINDOW", XA_WINDOW, [game])
        wm.set(game, "_NET_WM_STATE", XA_ATOM, [wm.atom("_NET_WM_STATE_FOCUSED"), full])
        sensors = DesktopSensors(platform="linux", env={"DISPLAY": display})
        assert sensors.fullscreen() is True
        wm.set(game, "_NET_WM_STATE", XA_ATOM, [wm.atom("_NET_WM_STATE_MAXIMIZED_VERT")])
        assert sensors.fullscreen() is False
        wm.destroy(game)  # the root still names it: reading its state is a BadWindow error
        assert sensors.fullscreen() is None
        wm.set(wm.root, "_NET_ACTIVE_WINDOW", XA_WINDOW, [0])  # nothing has the focus
        assert sensors.fullscreen() is False
        idle = sensors.idle_s()
        assert idle is not None and 0 <= idle < 600  # milliseconds since the server's start
    finally:
        wm.close()
