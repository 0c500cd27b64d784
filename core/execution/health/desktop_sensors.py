"""Reading the desktop: input idle time, battery and full screen, per platform, through ctypes.

Each reader takes the library it calls (a ctypes ``CDLL``/``WinDLL`` or a fake with the same
functions) so that every code path, Windows' included, runs in the unit tests. Each answers None
when it cannot tell (no display, no battery, a library missing): an unknown never holds work back.

- Idle, Linux: the X11 screen saver extension (``XScreenSaverQueryInfo`` in libXss: milliseconds
  since the last input; not on Wayland, where XWayland sees only its own clients' input), else
  logind's ``IdleHint``/``IdleSinceHint`` of our session or the desktop's
  ``org.freedesktop.ScreenSaver`` (``GetActive``: a running screen saver means nobody is there),
  both over D-Bus with jeepney (which keyring's Secret Service backend brings).
  Windows: ``GetLastInputInfo`` against ``GetTickCount`` (both 32-bit millisecond counters).
- Battery, Linux: ``/sys/class/power_supply`` (a system battery discharging and no mains online).
  Windows: ``GetSystemPowerStatus`` (``ACLineStatus`` 0 = on battery).
- Full screen, Windows: ``SHQueryUserNotificationState`` (busy, Direct3D full screen or
  presentation mode). Linux on X11: the active window's ``_NET_WM_STATE_FULLSCREEN`` (two property
  reads through libX11). Wayland tells no client which window is active, so there the rule reads
  nothing; the settings say "read on Windows and X11".

Blocking but quick (a few system calls, a D-Bus round trip with a 1 s timeout); call off the GUI
thread. Not thread-safe; one gate thread owns one ``DesktopSensors``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

__all__ = [
    "DesktopSensors",
    "X11Fullscreen",
    "logind_idle_s",
    "screensaver_active",
    "sysfs_on_battery",
    "windows_fullscreen",
    "windows_idle_s",
    "windows_on_battery",
    "x11_idle_s",
]

log = structlog.get_logger(__name__)

POWER_SUPPLY = Path("/sys/class/power_supply")
_FULLSCREEN_STATES = {2, 3, 4}  # QUNS_BUSY, QUNS_RUNNING_D3D_FULL_SCREEN, QUNS_PRESENTATION_MODE


class _LastInputInfo(ctypes.Structure):
    _fields_ = [("cbSize", ctypes.c_uint), ("dwTime", ctypes.c_uint32)]


class _PowerStatus(ctypes.Structure):
    _fields_ = [
        ("ACLineStatus", ctypes.c_ubyte),
        ("BatteryFlag", ctypes.c_ubyte),
        ("BatteryLifePercent", ctypes.c_ubyte),
        ("SystemStatusFlag", ctypes.c_ubyte),
        ("BatteryLifeTime", ctypes.c_uint32),
        ("BatteryFullLifeTime", ctypes.c_uint32),
    ]


class _XScreenSaverInfo(ctypes.Structure):
    _fields_ = [
        ("window", ctypes.c_ulong),
        ("state", ctypes.c_int),
        ("kind", ctypes.c_int),
        ("til_or_since", ctypes.c_ulong),
        ("idle", ctypes.c_ulong),
        ("eventMask", ctypes.c_ulong),
    ]


# -- Windows ---------------------------------------------------------------------------------


def windows_idle_s(user32: Any, kernel32: Any) -> float | None:
    """Seconds since the last input in this session (``GetLastInputInfo``)."""
    info = _LastInputInfo()
    info.cbSize = ctypes.sizeof(_LastInputInfo)
    if not user32.GetLastInputInfo(ctypes.byref(info)):
        return None
    now = int(kernel32.GetTickCount()) & 0xFFFFFFFF
    return ((now - int(info.dwTime)) & 0xFFFFFFFF) / 1000.0  # both wrap after 49.7 days


def windows_on_battery(kernel32: Any) -> bool | None:
    """True on battery, False on mains, None without a system battery or when unknown."""
    status = _PowerStatus()
    if not kernel32.GetSystemPowerStatus(ctypes.byref(status)):
        return None
    if status.BatteryFlag == 128 or status.ACLineStatus == 255:  # no system battery, or unknown
        return None
    return int(status.ACLineStatus) == 0


def windows_fullscreen(shell32: Any) -> bool | None:
    """True while a full-screen app, a Direct3D game or a presentation holds the screen."""
    state = ctypes.c_int(0)
    if shell32.SHQueryUserNotificationState(ctypes.byref(state)) != 0:  # an HRESULT
        return None
    return state.value in _FULLSCREEN_STATES


# -- Linux -----------------------------------------------------------------------------------


def sysfs_on_battery(root: Path = POWER_SUPPLY) -> bool | None:
    """True when a system battery discharges and no mains supply is online; None without one."""

    def read(path: Path) -> str:
        try:
            return path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return ""

    try:
        supplies = sorted(root.iterdir())
    except OSError:
        return None
    batteries, mains_online = [], False
    for supply in supplies:
        kind = read(supply / "type")
        if kind == "Battery" and read(supply / "scope") != "Device":  # not a mouse's battery
            batteries.append(read(supply / "status"))
        elif kind in ("Mains", "USB", "USB_C", "USB_PD") and read(supply / "online") == "1":
            mains_online = True
    if not batteries:
        return None
    return not mains_online and any(status == "Discharging" for status in batteries)


def x11_idle_s(xlib: Any, xss: Any, display: Any) -> float | None:
    """Milliseconds since the last input on ``display``, from the X screen saver extension."""
    info = xss.XScreenSaverAllocInfo()
    if not info:
        return None
    try:
        root = xlib.XDefaultRootWindow(display)
        if not xss.XScreenSaverQueryInfo(display, root, info):
            return None
        return int(ctypes.cast(info, ctypes.POINTER(_XScreenSaverInfo)).contents.idle) / 1000.0
    finally:
        xlib.XFree(info)


DBusCall = Callable[[str, str, str, str, str, tuple[Any, ...], str], Any]
"""``(bus, destination, path, interface, method, args, signature) -> the reply's first value``."""


def logind_idle_s(call: DBusCall, pid: int, now: float) -> float | None:
    """Seconds since logind's session of ``pid`` went idle (0 while in use), None when unknown."""
    props = "org.freedesktop.DBus.Properties"
    login1 = "org.freedesktop.login1"
    session = call(
        "system", login1, "/org/freedesktop/login1", f"{login1}.Manager", "GetSessionByPID", (pid,), "u"
    )
    hint = call("system", login1, session, props, "Get", (f"{login1}.Session", "IdleHint"), "ss")
    if not _variant(hint):
        return 0.0
    since_us = _variant(
        call("system", login1, session, props, "Get", (f"{login1}.Session", "IdleSinceHint"), "ss")
    )
    if not since_us:
        return None
    return max(0.0, now - int(since_us) / 1e6)


def screensaver_active(call: DBusCall) -> bool:
    """Whether the desktop's screen saver (``org.freedesktop.ScreenSaver``) is on."""
    name = "org.freedesktop.ScreenSaver"
    return bool(call("session", name, "/org/freedesktop/ScreenSaver", name, "GetActive", (), ""))


def _variant(value: Any) -> Any:
    # jeepney returns a variant as (signature, value).
    return value[1] if isinstance(value, tuple) and len(value) == 2 else value


def _jeepney_call() -> DBusCall:
    from jeepney import DBusAddress, new_method_call  # type: ignore[import-untyped]
    from jeepney.io.blocking import open_dbus_connection  # type: ignore[import-untyped]

    connections: dict[str, Any] = {}

    def call(bus: str, dest: str, path: str, iface: str, method: str, args: tuple[Any, ...], sig: str) -> Any:
        if bus not in connections:
            connections[bus] = open_dbus_connection(bus="SYSTEM" if bus == "system" else "SESSION")
        address = DBusAddress(path, bus_name=dest, interface=iface)
        message = (
            new_method_call(address, method, sig or None, args) if sig else new_method_call(address, method)
        )
        reply = connections[bus].send_and_get_reply(message, timeout=1.0)
        if reply.header.message_type.name == "error":
            raise OSError(f"{dest} {method}: {reply.body[:1]}")
        return reply.body[0] if reply.body else None

    return call


_XErrorHandler = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_IGNORE_X_ERRORS = _XErrorHandler(lambda _display, _event: 0)
_XA_ATOM, _XA_WINDOW = 4, 33
_SUCCESS = 0


def declare_xlib(xlib: Any) -> None:
    """Argument and result types of the Xlib calls used here (pointers and XIDs are 64-bit)."""
    ptr, ulong = ctypes.c_void_p, ctypes.c_ulong
    xlib.XOpenDisplay.restype, xlib.XOpenDisplay.argtypes = ptr, [ctypes.c_char_p]
    xlib.XDefaultRootWindow.restype, xlib.XDefaultRootWindow.argtypes = ulong, [ptr]
    xlib.XFree.argtypes = [ptr]
    xlib.XInternAtom.restype, xlib.XInternAtom.argtypes = ulong, [ptr, ctypes.c_char_p, ctypes.c_int]
    xlib.XSetErrorHandler.argtypes = [_XErrorHandler]
    xlib.XGetWindowProperty.restype = ctypes.c_int
    xlib.XGetWindowProperty.argtypes = [
        ptr, ulong, ulong, ctypes.c_long, ctypes.c_long, ctypes.c_int, ulong,
        ctypes.POINTER(ulong), ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ulong), ctypes.POINTER(ulong),
        ctypes.POINTER(ctypes.c_void_p),
    ]  # fmt: skip


class X11Fullscreen:
    """Whether the active window (``_NET_ACTIVE_WINDOW``) says ``_NET_WM_STATE_FULLSCREEN``.

    Two property reads per call; the atoms are looked up once. Needs an EWMH window manager (every
    common one); without one the answer is None.
    """

    def __init__(self, xlib: Any, display: Any) -> None:
        self._xlib, self._display = xlib, display
        intern = xlib.XInternAtom
        self._active = intern(display, b"_NET_ACTIVE_WINDOW", 1)
        self._state = intern(display, b"_NET_WM_STATE", 1)
        self._full = intern(display, b"_NET_WM_STATE_FULLSCREEN", 1)

    def _property(self, window: int, atom: int, kind: int) -> list[int] | None:
        actual_type, actual_format = ctypes.c_ulong(), ctypes.c_int()
        items, after, data = ctypes.c_ulong(), ctypes.c_ulong(), ctypes.c_void_p()
        status = self._xlib.XGetWindowProperty(
            self._display, window, atom, 0, 64, 0, kind,
            ctypes.byref(actual_type), ctypes.byref(actual_format), ctypes.byref(items),
            ctypes.byref(after), ctypes.byref(data),
        )  # fmt: skip
        if status != _SUCCESS:
            return None
        if not data.value:
            return []
        try:
            if actual_format.value != 32:
                return []
            values = ctypes.cast(data, ctypes.POINTER(ctypes.c_ulong))  # format 32 is C long
            return [int(values[i]) for i in range(items.value)]
        finally:
            self._xlib.XFree(data)

    def active_window_fullscreen(self) -> bool | None:
        if not (self._active and self._state and self._full):
            return None  # no EWMH window manager
        root = self._xlib.XDefaultRootWindow(self._display)
        active = self._property(root, self._active, _XA_WINDOW)
        if active is None:
            return None
        if not active or not active[0]:
            return False  # no window has the focus
        states = self._property(active[0], self._state, _XA_ATOM)
        return None if states is None else self._full in states


class DesktopSensors:
    """The desktop readers of this platform, each set up once and dropped when it fails."""

    def __init__(self, platform: str = sys.platform, env: dict[str, str] | None = None) -> None:
        self._platform = platform
        self._env = env if env is not None else dict(os.environ)
        self._windows = platform.startswith("win")
        # XWayland sees only its own clients' input: on Wayland, idle comes from logind instead.
        self._wayland = (
            bool(self._env.get("WAYLAND_DISPLAY")) or self._env.get("XDG_SESSION_TYPE") == "wayland"
        )
        self._xlib: tuple[Any, Any] | None = None  # (libX11, display)
        self._xlib_tried = False
        self._xss: Any = None
        self._xss_tried = False
        self._x11_fullscreen: X11Fullscreen | None = None
        self._dbus: DBusCall | None = None
        self._dbus_failed = False

    def idle_s(self) -> float | None:
        try:
            if self._windows:
                return windows_idle_s(ctypes.windll.user32, ctypes.windll.kernel32)  # type: ignore[attr-defined]
            xlib, xss = self._open_xlib(), self._open_xss()
            if xlib is not None and xss is not None and not self._wayland:
                return x11_idle_s(xlib[0], xss, xlib[1])
            return self._dbus_idle()
        except Exception as exc:  # noqa: BLE001 - an unreadable sensor never holds work back
            log.debug("sensors.idle_failed", error=type(exc).__name__, message=str(exc)[:200])
            return None

    def on_battery(self) -> bool | None:
        try:
            if self._windows:
                return windows_on_battery(ctypes.windll.kernel32)  # type: ignore[attr-defined]
            return sysfs_on_battery()
        except Exception as exc:  # noqa: BLE001
            log.debug("sensors.battery_failed", error=type(exc).__name__)
            return None

    def fullscreen(self) -> bool | None:
        try:
            if self._windows:
                return windows_fullscreen(ctypes.windll.shell32)  # type: ignore[attr-defined]
            if self._wayland:
                return None  # Wayland does not tell other clients which window is active
            if self._x11_fullscreen is None:
                xlib = self._open_xlib()
                if xlib is None:
                    return None
                self._x11_fullscreen = X11Fullscreen(*xlib)
            return self._x11_fullscreen.active_window_fullscreen()
        except Exception as exc:  # noqa: BLE001
            log.debug("sensors.fullscreen_failed", error=type(exc).__name__, message=str(exc)[:200])
            return None

    def _open_xlib(self) -> tuple[Any, Any] | None:
        if self._xlib_tried:
            return self._xlib
        self._xlib_tried = True
        where = self._env.get("DISPLAY", "")
        name = ctypes.util.find_library("X11") if where else None
        if not name:
            return None
        xlib = ctypes.CDLL(name)
        declare_xlib(xlib)
        display = xlib.XOpenDisplay(where.encode())
        if not display:
            log.info("sensors.x11_unavailable", reason="the X display cannot be opened")
            return None
        # Xlib's default error handler ends the process (a window that closed between two calls
        # raises BadWindow): ignore errors instead; each call's status says it failed.
        xlib.XSetErrorHandler(_IGNORE_X_ERRORS)
        self._xlib = (xlib, display)
        return self._xlib

    def _open_xss(self) -> Any:
        if self._xss_tried:
            return self._xss
        self._xss_tried = True
        name = ctypes.util.find_library("Xss")
        if not name:
            log.info("sensors.x11_idle_unavailable", reason="libXss is not installed")
            return None
        xss = ctypes.CDLL(name)
        xss.XScreenSaverAllocInfo.restype = ctypes.c_void_p
        xss.XScreenSaverQueryInfo.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p]
        self._xss = xss
        return xss

    def _dbus_idle(self) -> float | None:
        if self._dbus_failed:
            return None
        if self._dbus is None:
            try:
                self._dbus = _jeepney_call()
            except Exception:  # noqa: BLE001 - jeepney missing
                self._dbus_failed = True
                return None
        call = self._dbus
        try:
            idle = logind_idle_s(call, os.getpid(), time.time())
        except Exception as exc:  # noqa: BLE001 - no logind session (a service, a container)
            log.debug("sensors.logind_failed", error=type(exc).__name__)
            idle = None
        if idle:
            return idle
        try:
            if screensaver_active(call):
                return float("inf")
        except Exception as exc:  # noqa: BLE001 - no screen saver service on the session bus
            log.debug("sensors.screensaver_failed", error=type(exc).__name__)
        return idle
