"""The sensors behind the intake rules, each platform's code path driven through fakes.

Windows' ctypes calls (``GetLastInputInfo``, ``GetSystemPowerStatus``,
``SHQueryUserNotificationState``) get fake libraries that fill the structures they are handed, as
the real ones do; Linux reads a fake ``/sys/class/power_supply`` tree, a fake libX11/libXss and a
fake D-Bus. NVML is ``tests.fakes.FakeNvml``.
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path
from typing import Any

import pytest

from morag_worker.core.execution.health import desktop_sensors
from morag_worker.core.execution.health.desktop_sensors import (
    DesktopSensors,
    X11Fullscreen,
    logind_idle_s,
    screensaver_active,
    sysfs_on_battery,
    windows_fullscreen,
    windows_idle_s,
    windows_on_battery,
    x11_idle_s,
)
from morag_worker.core.execution.health.intake_rules import GpuReading
from morag_worker.core.execution.health.sensors import FileSensors, Sensors, SystemSensors, sensors_from_env
from morag_worker.core.supervisor.gpu import NvmlProbe
from tests.fakes import FakeNvml

pytestmark = pytest.mark.unit

MIB = 1024 * 1024


# ---- Windows ----------------------------------------------------------------------------------


class FakeUser32:
    def __init__(self, last_input_ms: int, ok: bool = True) -> None:
        self.last_input_ms, self.ok = last_input_ms, ok

    def GetLastInputInfo(self, ref: Any) -> int:  # noqa: N802 - the Win32 name
        info = ref._obj
        assert info.cbSize == ctypes.sizeof(info)  # the API refuses a structure without its size
        info.dwTime = self.last_input_ms
        return int(self.ok)


class FakeKernel32:
    def __init__(self, tick_ms: int = 0, ac: int = 1, flag: int = 0, ok: bool = True) -> None:
        self.tick_ms, self.ac, self.flag, self.ok = tick_ms, ac, flag, ok

    def GetTickCount(self) -> int:  # noqa: N802
        return self.tick_ms

    def GetSystemPowerStatus(self, ref: Any) -> int:  # noqa: N802
        status = ref._obj
        status.ACLineStatus, status.BatteryFlag, status.BatteryLifePercent = self.ac, self.flag, 57
        return int(self.ok)


class FakeShell32:
    def __init__(self, state: int, hresult: int = 0) -> None:
        self.state, self.hresult = state, hresult

    def SHQueryUserNotificationState(self, ref: Any) -> int:  # noqa: N802
        ref._obj.value = self.state
        return self.hresult


def test_windows_idle_time_counts_from_the_last_input_and_survives_the_tick_counter_wrapping() -> None:
    assert windows_idle_s(FakeUser32(last_input_ms=10_000), FakeKernel32(tick_ms=75_500)) == 65.5
    # GetTickCount wraps after 49.7 days: the last input before the wrap, now after it.
    assert windows_idle_s(FakeUser32(last_input_ms=0xFFFFFF00), FakeKernel32(tick_ms=0x100)) == 0.512
    assert windows_idle_s(FakeUser32(0, ok=False), FakeKernel32()) is None


def test_windows_battery_from_the_power_status() -> None:
    assert windows_on_battery(FakeKernel32(ac=0, flag=0)) is True
    assert windows_on_battery(FakeKernel32(ac=1, flag=8)) is False  # charging
    assert windows_on_battery(FakeKernel32(ac=1, flag=128)) is None  # no system battery: a desktop
    assert windows_on_battery(FakeKernel32(ac=255, flag=1)) is None  # unknown
    assert windows_on_battery(FakeKernel32(ok=False)) is None


@pytest.mark.parametrize(
    ("state", "fullscreen"),
    [(1, False), (2, True), (3, True), (4, True), (5, False), (6, False), (7, False)],
)
def test_windows_full_screen_from_the_notification_state(state: int, fullscreen: bool) -> None:
    # 2 busy (a full-screen app), 3 Direct3D full screen (a game), 4 presentation mode.
    assert windows_fullscreen(FakeShell32(state)) is fullscreen


def test_windows_full_screen_unknown_when_the_query_fails() -> None:
    assert windows_fullscreen(FakeShell32(2, hresult=-2147467259)) is None  # E_FAIL


def test_desktop_sensors_take_the_windows_path_on_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    class WinDll:
        user32 = FakeUser32(last_input_ms=1_000)
        kernel32 = FakeKernel32(tick_ms=61_000, ac=0)
        shell32 = FakeShell32(3)

    monkeypatch.setattr(ctypes, "windll", WinDll, raising=False)
    sensors = DesktopSensors(platform="win32", env={})
    assert (sensors.idle_s(), sensors.on_battery(), sensors.fullscreen()) == (60.0, True, True)


# ---- Linux ------------------------------------------------------------------------------------


def supply(root: Path, name: str, **files: str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    for key, value in files.items():
        (folder / key).write_text(value + "\n")


def test_linux_battery_from_sysfs(tmp_path: Path) -> None:
    assert sysfs_on_battery(tmp_path / "missing") is None
    supply(tmp_path, "AC", type="Mains", online="0")
    supply(tmp_path, "BAT0", type="Battery", status="Discharging")
    supply(tmp_path, "hidpp_battery_0", type="Battery", scope="Device", status="Discharging")  # a mouse
    assert sysfs_on_battery(tmp_path) is True
    (tmp_path / "AC" / "online").write_text("1\n")
    assert sysfs_on_battery(tmp_path) is False


def test_linux_desktop_without_a_system_battery(tmp_path: Path) -> None:
    supply(tmp_path, "hidpp_battery_0", type="Battery", scope="Device", status="Discharging")
    assert sysfs_on_battery(tmp_path) is None


def test_linux_laptop_charging_is_not_on_battery(tmp_path: Path) -> None:
    supply(tmp_path, "BAT1", type="Battery", status="Charging")
    assert sysfs_on_battery(tmp_path) is False


class FakeXlib:
    def __init__(self) -> None:
        self.freed: list[Any] = []

    def XDefaultRootWindow(self, display: Any) -> int:  # noqa: N802
        return 42

    def XFree(self, pointer: Any) -> None:  # noqa: N802
        self.freed.append(pointer)


class FakeXss:
    def __init__(self, idle_ms: int, ok: bool = True) -> None:
        self.info = desktop_sensors._XScreenSaverInfo()
        self.idle_ms, self.ok = idle_ms, ok

    def XScreenSaverAllocInfo(self) -> int:  # noqa: N802
        return ctypes.addressof(self.info)

    def XScreenSaverQueryInfo(self, display: Any, root: int, info: int) -> int:  # noqa: N802
        assert root == 42 and info == ctypes.addressof(self.info)
        self.info.idle = self.idle_ms
        return int(self.ok)


def test_x11_idle_time_from_the_screen_saver_extension() -> None:
    xlib = FakeXlib()
    xss = FakeXss(idle_ms=123_456)
    assert x11_idle_s(xlib, xss, display=object()) == 123.456
    assert xlib.freed == [ctypes.addressof(xss.info)]
    assert x11_idle_s(FakeXlib(), FakeXss(1, ok=False), display=object()) is None


class FakeBus:
    """Answers the D-Bus calls logind and the screen saver service would."""

    def __init__(self, idle: bool, since_us: int = 0, screensaver: bool | None = None) -> None:
        self.idle, self.since_us, self.screensaver = idle, since_us, screensaver
        self.calls: list[tuple[str, str]] = []

    def __call__(
        self, bus: str, dest: str, path: str, iface: str, method: str, args: tuple[Any, ...], sig: str
    ) -> Any:
        self.calls.append((bus, method))
        if method == "GetSessionByPID":
            assert bus == "system" and args == (os.getpid(),)
            return "/org/freedesktop/login1/session/_32"
        if method == "Get":
            assert path == "/org/freedesktop/login1/session/_32"
            return ("b", self.idle) if args[1] == "IdleHint" else ("t", self.since_us)
        if method == "GetActive":
            if self.screensaver is None:
                raise OSError("org.freedesktop.DBus.Error.ServiceUnknown")
            return self.screensaver
        raise AssertionError(method)


def test_logind_idle_hint_gives_the_seconds_since_the_session_went_idle() -> None:
    now = 1_800_000_000.0
    assert logind_idle_s(FakeBus(idle=True, since_us=int((now - 600) * 1e6)), os.getpid(), now) == 600.0
    assert logind_idle_s(FakeBus(idle=False), os.getpid(), now) == 0.0
    assert logind_idle_s(FakeBus(idle=True, since_us=0), os.getpid(), now) is None


def test_a_running_screen_saver_counts_as_nobody_there() -> None:
    assert screensaver_active(FakeBus(idle=False, screensaver=True)) is True
    assert screensaver_active(FakeBus(idle=False, screensaver=False)) is False


def test_linux_idle_without_x11_asks_logind_then_the_screen_saver(monkeypatch: pytest.MonkeyPatch) -> None:
    sensors = DesktopSensors(platform="linux", env={})  # no DISPLAY: no X11
    bus = FakeBus(idle=False, screensaver=True)
    monkeypatch.setattr(desktop_sensors, "_jeepney_call", lambda: bus)
    assert sensors.idle_s() == float("inf")
    assert [m for _, m in bus.calls] == ["GetSessionByPID", "Get", "GetActive"]
    bus.screensaver = None  # no screen saver service: logind's answer (in use) stands
    assert sensors.idle_s() == 0.0


class FakeX11Windows(FakeXlib):
    """libX11 with EWMH properties: the root's active window, and each window's states."""

    ATOMS = {b"_NET_ACTIVE_WINDOW": 301, b"_NET_WM_STATE": 302, b"_NET_WM_STATE_FULLSCREEN": 303}

    def __init__(self, active: int, states: dict[int, list[int]], *, ewmh: bool = True) -> None:
        super().__init__()
        self.active, self.states, self.ewmh = active, states, ewmh
        self.buffers: list[Any] = []

    def XInternAtom(self, display: Any, name: bytes, only_if_exists: int) -> int:  # noqa: N802
        assert only_if_exists == 1  # never creates atoms on the user's display
        return self.ATOMS[name] if self.ewmh else 0

    def XGetWindowProperty(self, display: Any, window: int, atom: int, *args: Any) -> int:  # noqa: N802
        _offset, _length, _delete, _kind, kind_out, format_out, items_out, _after, data_out = args
        if window == 42 and atom == 301:
            values = [self.active]
        elif atom == 302 and window in self.states:
            values = self.states[window]
        else:
            return 3  # BadWindow: the window closed between the two reads
        buffer = (ctypes.c_ulong * max(1, len(values)))(*values)
        self.buffers.append(buffer)
        kind_out._obj.value, format_out._obj.value, items_out._obj.value = 4, 32, len(values)
        data_out._obj.value = ctypes.addressof(buffer)
        return 0


def test_x11_full_screen_is_the_active_window_s_ewmh_state() -> None:
    full = FakeX11Windows(active=7, states={7: [999, 303]})
    assert X11Fullscreen(full, object()).active_window_fullscreen() is True
    assert len(full.freed) == 2  # every property read is freed
    assert X11Fullscreen(FakeX11Windows(7, {7: [999]}), object()).active_window_fullscreen() is False
    assert X11Fullscreen(FakeX11Windows(0, {}), object()).active_window_fullscreen() is False  # no focus
    assert X11Fullscreen(FakeX11Windows(7, {}), object()).active_window_fullscreen() is None  # closed
    assert (
        X11Fullscreen(FakeX11Windows(7, {7: [303]}, ewmh=False), object()).active_window_fullscreen() is None
    )


def test_full_screen_is_not_read_on_wayland_nor_without_a_display() -> None:
    assert (
        DesktopSensors(platform="linux", env={"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}).fullscreen()
        is None
    )
    assert DesktopSensors(platform="linux", env={}).fullscreen() is None


def test_on_wayland_idle_comes_from_logind_not_from_xwayland(monkeypatch: pytest.MonkeyPatch) -> None:
    sensors = DesktopSensors(platform="linux", env={"XDG_SESSION_TYPE": "wayland", "DISPLAY": ":0"})
    monkeypatch.setattr(sensors, "_open_xlib", lambda: (FakeXlib(), object()))
    monkeypatch.setattr(sensors, "_open_xss", lambda: FakeXss(idle_ms=3_600_000))  # XWayland: "idle"
    bus = FakeBus(idle=False, screensaver=False)
    monkeypatch.setattr(desktop_sensors, "_jeepney_call", lambda: bus)
    assert sensors.idle_s() == 0.0 and bus.calls[0] == ("system", "GetSessionByPID")


# ---- the GPU, and the tests' sensor file ------------------------------------------------------


def test_system_sensors_read_the_chosen_gpu_through_nvml_with_this_worker_s_own_memory() -> None:
    me, stranger = os.getpid(), 999_999_999  # no such process: not ours
    nvml = FakeNvml(
        devices=[
            {"name": "A", "uuid": "GPU-a", "total": 8192 * MIB, "used": 100 * MIB, "temperature": 40},
            {
                "name": "B",
                "uuid": "GPU-b",
                "total": 24576 * MIB,
                "used": 20480 * MIB,
                "temperature": 86,
                "processes": [(me, 1500 * MIB), (stranger, 18000 * MIB), (me + 0, None)],
            },
        ]
    )
    sensors: Sensors = SystemSensors(NvmlProbe(nvml), 1, DesktopSensors(platform="linux", env={}))
    assert sensors.gpu() == GpuReading(86, 4096, 1500)
    now = [0.0]
    gone = SystemSensors(NvmlProbe(nvml), 7, DesktopSensors(env={}), gpu_retry_s=60, clock=lambda: now[0])
    assert gone.gpu() is None and nvml.initialised == 2
    now[0] = 59.0
    assert gone.gpu() is None and nvml.initialised == 2  # not asked again for a minute
    now[0] = 61.0
    assert gone.gpu() is None and nvml.initialised == 3
    assert SystemSensors(None, None, DesktopSensors(env={})).gpu() is None  # no GPU chosen


def test_the_test_sensor_file_is_read_at_each_call(tmp_path: Path) -> None:
    path = tmp_path / "sensors.json"
    sensors = sensors_from_env({"MORAG_TEST_SENSORS": str(path)})
    assert isinstance(sensors, FileSensors)
    assert (sensors.gpu(), sensors.idle_s(), sensors.on_battery(), sensors.fullscreen()) == (None,) * 4
    path.write_text(
        json.dumps({"gpu": {"temperature_c": 86, "free_mb": 8000}, "idle_s": 5, "on_battery": True})
    )
    assert sensors.gpu() == GpuReading(86, 8000, 0)
    assert (sensors.idle_s(), sensors.on_battery(), sensors.fullscreen()) == (5.0, True, None)
    path.write_text('{"gpu": {"temperature_c": 8')  # caught half-written: unknown this time
    assert sensors.gpu() is None


def test_without_the_test_file_the_machine_s_sensors_are_used() -> None:
    sensors = sensors_from_env({"MORAG_WORKER_GPU_INDEX": "0"})
    assert isinstance(sensors, SystemSensors)
    assert isinstance(sensors_from_env({}), SystemSensors) and sensors_from_env({}).gpu() is None
