"""What the intake rules read: the ``Sensors`` protocol, the machine's sensors and the tests' file.

``SystemSensors`` reads the chosen GPU through a ``GpuProbe`` (NVML, ``supervisor/gpu.py``) and
the desktop through ``DesktopSensors``. ``FileSensors`` reads a JSON file instead, named by
``MORAG_TEST_SENSORS``, which only tests set: the integration tests rewrite it to play a hot GPU
or a laptop unplugged while a real worker runs. Its format::

    {"gpu": {"temperature_c": 86, "free_mb": 8000, "own_mb": 0},
     "idle_s": 30, "on_battery": false, "fullscreen": false}

Any key may be missing or null (unknown). Called from the intake gate's thread.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog

from morag_worker.core.execution.health.desktop_sensors import DesktopSensors
from morag_worker.core.execution.health.intake_rules import GpuReading

__all__ = ["TEST_SENSORS_ENV", "FileSensors", "Sensors", "SystemSensors", "sensors_from_env"]

log = structlog.get_logger(__name__)

TEST_SENSORS_ENV = "MORAG_TEST_SENSORS"
GPU_INDEX_ENV = "MORAG_WORKER_GPU_INDEX"  # NVML index of the GPU the supervisor chose for the child


class Sensors(Protocol):
    """What the intake rules need to know; None for anything that cannot be read."""

    def gpu(self) -> GpuReading | None: ...

    def idle_s(self) -> float | None: ...

    def on_battery(self) -> bool | None: ...

    def fullscreen(self) -> bool | None: ...


class _Probe(Protocol):
    def list_gpus(self) -> list[Any]: ...


class SystemSensors:
    """This machine's sensors: the GPU at NVML index ``gpu_index`` (None: no GPU) and the desktop.

    When NVML does not find the GPU, it is asked again only after ``gpu_retry_s`` (the probe logs
    each failure, and a missing driver stays missing).
    """

    def __init__(
        self,
        probe: _Probe | None,
        gpu_index: int | None,
        desktop: DesktopSensors,
        *,
        gpu_retry_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._index = gpu_index
        self._desktop = desktop
        self._retry_s, self._clock = gpu_retry_s, clock
        self._gpu_retry_at = 0.0

    def gpu(self) -> GpuReading | None:
        if self._probe is None or self._index is None or self._clock() < self._gpu_retry_at:
            return None
        for info in self._probe.list_gpus():
            if info.index == self._index:
                return GpuReading(info.temperature_c, info.memory_free_mb, info.memory_own_mb)
        self._gpu_retry_at = self._clock() + self._retry_s
        return None

    def idle_s(self) -> float | None:
        return self._desktop.idle_s()

    def on_battery(self) -> bool | None:
        return self._desktop.on_battery()

    def fullscreen(self) -> bool | None:
        return self._desktop.fullscreen()


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _flag(data: Mapping[str, Any], key: str) -> bool | None:
    value = data.get(key)
    return value if isinstance(value, bool) else None


class FileSensors:
    """Sensors read from a JSON file at each call (tests only; see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _data(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, or caught half-written: unknown this time
            return {}
        return data if isinstance(data, dict) else {}

    def gpu(self) -> GpuReading | None:
        gpu = self._data().get("gpu")
        if not isinstance(gpu, dict):
            return None
        temp, free, own = _number(gpu, "temperature_c"), _number(gpu, "free_mb"), _number(gpu, "own_mb")
        return GpuReading(
            None if temp is None else int(temp), None if free is None else int(free), int(own or 0)
        )

    def idle_s(self) -> float | None:
        return _number(self._data(), "idle_s")

    def on_battery(self) -> bool | None:
        return _flag(self._data(), "on_battery")

    def fullscreen(self) -> bool | None:
        return _flag(self._data(), "fullscreen")


def sensors_from_env(env: Mapping[str, str]) -> Sensors:
    """The test file when ``MORAG_TEST_SENSORS`` names one, else this machine's sensors."""
    if path := env.get(TEST_SENSORS_ENV, "").strip():
        log.warning("intake.test_sensors", path=path)
        return FileSensors(Path(path))
    raw = env.get(GPU_INDEX_ENV, "").strip()
    index = int(raw) if raw.isdecimal() else None
    probe: _Probe | None = None
    if index is not None:
        from morag_worker.core.supervisor.gpu import NvmlProbe  # the supervisor's NVML reader

        probe = NvmlProbe()
    return SystemSensors(probe, index, DesktopSensors(env=dict(env)))
