"""GPUs: what NVIDIA GPUs this machine has, and which one the worker's tasks may use.

``NvmlProbe`` asks NVML (``pynvml`` from the ``nvidia-ml-py`` package, an optional extra) and
answers ``[]`` with a logged reason when the library, the driver or the device is missing: a
probe never raises at the user. ``gpu_for_tasks`` and ``cuda_visible_devices`` are pure. Which
queues a worker consumes never depends on them (``naming.consumed_queues``).

A probe call blocks briefly (driver calls); run it off the GUI thread.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from morag_worker.core.config.settings import Settings
from morag_worker.core.naming import WorkerType

__all__ = [
    "GpuInfo",
    "GpuProbe",
    "NvmlProbe",
    "choose_gpu",
    "cuda_visible_devices",
    "gpu_for_tasks",
]

log = structlog.get_logger(__name__)
_MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML reports it.

    Attributes:
        index: NVML index (PCI bus order, which may differ from CUDA's default order).
        name: Marketing name, e.g. ``"NVIDIA GeForce RTX 4090"``.
        uuid: Stable id, e.g. ``"GPU-5c1b..."``; what ``CUDA_VISIBLE_DEVICES`` should name.
        memory_total_mb: Total memory in MiB.
        memory_used_mb: Memory in use in MiB, when known.
        temperature_c: Core temperature in degrees Celsius, when known.
        utilization_percent: Recent GPU utilisation, when known.
        memory_own_mb: Memory in MiB held by processes of the caller's process group (a worker
            child and its pool), which a worker may count as its own; 0 when none or unknown.
    """

    index: int
    name: str
    uuid: str
    memory_total_mb: int
    memory_used_mb: int | None = None
    temperature_c: int | None = None
    utilization_percent: int | None = None
    memory_own_mb: int = 0

    @property
    def memory_free_mb(self) -> int | None:
        return None if self.memory_used_mb is None else max(0, self.memory_total_mb - self.memory_used_mb)


class GpuProbe(Protocol):
    """Something that lists the machine's GPUs (NVML in production, a fake in tests)."""

    def list_gpus(self) -> list[GpuInfo]:
        """The GPUs, in index order; ``[]`` when there are none or they cannot be queried."""
        ...


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class NvmlProbe:
    """Lists NVIDIA GPUs through NVML, imported lazily.

    Args:
        nvml: The ``pynvml`` module or a stand-in with the same functions; None imports
            ``pynvml`` on each ``list_gpus`` call.
    """

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml

    def list_gpus(self) -> list[GpuInfo]:
        """The GPUs NVML sees; ``[]`` (and a logged reason) when NVML is missing or fails."""
        nvml = self._nvml
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                log.info("gpu.nvml_missing", reason=f"pynvml is not installed ({exc})")
                return []
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            log.info("gpu.nvml_unavailable", reason=f"{exc.__class__.__name__}: {exc}")
            return []
        try:
            count = int(nvml.nvmlDeviceGetCount())
            gpus = [gpu for index in range(count) if (gpu := self._query(nvml, index)) is not None]
        except Exception as exc:
            log.warning("gpu.nvml_failed", reason=f"{exc.__class__.__name__}: {exc}")
            return []
        finally:
            try:
                nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("gpu.nvml_shutdown_failed", reason=f"{exc.__class__.__name__}: {exc}")
        log.debug("gpu.listed", count=len(gpus), names=[g.name for g in gpus])
        return gpus

    @staticmethod
    def _query(nvml: Any, index: int) -> GpuInfo | None:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(nvml.nvmlDeviceGetName(handle))
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:  # a GPU that fell off the bus, lost permissions, ...
            log.warning("gpu.device_skipped", index=index, reason=f"{exc.__class__.__name__}: {exc}")
            return None
        return GpuInfo(
            index=index,
            name=name,
            uuid=uuid,
            memory_total_mb=int(memory.total) // _MIB,
            memory_used_mb=int(memory.used) // _MIB,
            temperature_c=_optional(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
            utilization_percent=_optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            memory_own_mb=_optional(lambda: _own_memory(nvml, handle)) or 0,
        )


def _own_memory(nvml: Any, handle: Any) -> int:
    """MiB used on the device by processes of our process group (POSIX; our own pid elsewhere)."""
    getpgid = getattr(os, "getpgid", None)
    own_group = getpgid(0) if getpgid is not None else None
    total = 0
    for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
        pid, used = int(proc.pid), getattr(proc, "usedGpuMemory", None)
        if not isinstance(used, int):
            continue  # NVML_VALUE_NOT_AVAILABLE arrives as None (no permission, Windows WDDM)
        try:
            ours = pid == os.getpid() or (getpgid is not None and getpgid(pid) == own_group)
        except OSError:  # gone, or another user's process
            ours = False
        if ours:
            total += used
    return total // _MIB


def _optional(read: Callable[[], Any]) -> int | None:
    # Temperature and utilisation are not supported on every GPU (vGPU, MIG, some laptops).
    try:
        return int(read())
    except Exception:
        return None


def choose_gpu(settings: Settings, gpus: Sequence[GpuInfo]) -> GpuInfo | None:
    """The GPU a GPU worker would use: ``settings.gpu_index``, or the first when it is None.

    Returns None when there is no GPU or the configured one is not present.
    """
    if not gpus:
        return None
    if settings.gpu_index is None:
        return min(gpus, key=lambda g: g.index)
    for gpu in gpus:
        if gpu.index == settings.gpu_index:
            return gpu
    log.warning("gpu.configured_gpu_missing", gpu_index=settings.gpu_index, present=[g.index for g in gpus])
    return None


def gpu_for_tasks(gpus: Sequence[GpuInfo], settings: Settings) -> GpuInfo | None:
    """The GPU the worker's tasks may use: None when the contributor chose CPU work only, or
    when the chosen GPU is not there (transcription then runs on the CPU)."""
    if settings.worker_type is WorkerType.CPU:
        return None
    return choose_gpu(settings, gpus)


def cuda_visible_devices(settings: Settings, gpus: Sequence[GpuInfo]) -> str | None:
    """The value for the worker child's ``CUDA_VISIBLE_DEVICES``, or None to leave it unset.

    - A GPU worker gets its chosen GPU by UUID (NVML's index order is PCI order while CUDA's
      default order is fastest first, so an index could name another GPU); by index when NVML
      gave no UUID.
    - A worker that may not use a GPU (CPU work only, or the configured GPU is missing) on a
      machine with GPUs gets ``""``, which hides them all from the child.
    - With no GPU detected, None: there is nothing to choose or hide.
    """
    if not gpus:
        return None
    gpu = gpu_for_tasks(gpus, settings)
    if gpu is None:
        return ""
    return gpu.uuid or str(gpu.index)
