"""GPU probing through NVML (a fake module, and the real one with no GPU here) and GPU choice."""

from __future__ import annotations

import sys

import pytest
import structlog

from morag_worker.core.gpu import (
    GpuInfo,
    GpuProbe,
    NvmlProbe,
    choose_gpu,
    cuda_visible_devices,
    gpu_for_tasks,
)
from morag_worker.core.naming import WorkerType
from morag_worker.core.settings import Settings
from tests.fakes import FakeGpuProbe, FakeNvml, make_gpu

pytestmark = pytest.mark.unit

MIB = 1024 * 1024


def test_fake_probe_is_a_gpu_probe() -> None:
    probe: GpuProbe = FakeGpuProbe([make_gpu(0)])
    assert probe.list_gpus() == [make_gpu(0)]


def test_nvml_probe_reads_every_gpu() -> None:
    nvml = FakeNvml(
        devices=[
            {
                "name": b"NVIDIA GeForce RTX 4090",
                "uuid": b"GPU-aaaa",
                "total": 24564 * MIB,
                "used": 300 * MIB,
            },
            {
                "name": "NVIDIA A100-SXM4-80GB",
                "uuid": "GPU-bbbb",
                "total": 81920 * MIB,
                "used": 0,
                "temperature": 61,
                "utilization": 97,
            },
        ]
    )
    gpus = NvmlProbe(nvml).list_gpus()
    assert gpus == [
        GpuInfo(0, "NVIDIA GeForce RTX 4090", "GPU-aaaa", 24564, 300, 50, 0),
        GpuInfo(1, "NVIDIA A100-SXM4-80GB", "GPU-bbbb", 81920, 0, 61, 97),
    ]
    assert (nvml.initialised, nvml.shut_down) == (1, 1)


def test_nvml_probe_tolerates_unsupported_queries_and_lost_gpus() -> None:
    not_supported = RuntimeError("Not Supported")
    nvml = FakeNvml(
        devices=[
            {"broken": True},
            {"name": "MIG 1g.10gb", "uuid": "GPU-cccc", "total": 10 * 1024 * MIB, "used": 0,
             "temperature": not_supported, "utilization": not_supported},
        ]
    )  # fmt: skip
    with structlog.testing.capture_logs() as events:
        gpus = NvmlProbe(nvml).list_gpus()
    assert gpus == [GpuInfo(1, "MIG 1g.10gb", "GPU-cccc", 10240, 0, None, None)]
    assert any(e["event"] == "gpu.device_skipped" and e["index"] == 0 for e in events)
    assert nvml.shut_down == 1


def test_nvml_probe_when_the_driver_is_missing() -> None:
    nvml = FakeNvml(init_error=RuntimeError("NVML Shared Library Not Found"))
    with structlog.testing.capture_logs() as events:
        assert NvmlProbe(nvml).list_gpus() == []
    assert [e["event"] for e in events] == ["gpu.nvml_unavailable"]
    assert "NVML Shared Library Not Found" in events[0]["reason"]


def test_nvml_probe_when_a_query_fails_midway() -> None:
    class CountFails(FakeNvml):
        def nvmlDeviceGetCount(self) -> int:
            raise RuntimeError("Unknown Error")

    nvml = CountFails()
    with structlog.testing.capture_logs() as events:
        assert NvmlProbe(nvml).list_gpus() == []
    assert [e["event"] for e in events] == ["gpu.nvml_failed"]
    assert nvml.shut_down == 1


def test_nvml_probe_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with structlog.testing.capture_logs() as events:
        assert NvmlProbe().list_gpus() == []
    assert [e["event"] for e in events] == ["gpu.nvml_missing"]


def test_real_nvml_probe_never_raises() -> None:
    # On a machine without an NVIDIA driver (this one) NVML cannot initialise: [] and a reason.
    # On a GPU machine, every entry must be well formed.
    with structlog.testing.capture_logs() as events:
        gpus = NvmlProbe().list_gpus()
    if not gpus:
        reasons = [e for e in events if e["event"] in ("gpu.nvml_missing", "gpu.nvml_unavailable")]
        assert reasons and reasons[0]["reason"]
    for index, gpu in enumerate(gpus):
        assert gpu.index == index and gpu.name and gpu.memory_total_mb > 0


# -- choosing -------------------------------------------------------------------------------

TWO_GPUS = [make_gpu(0, uuid="GPU-zero"), make_gpu(1, uuid="GPU-one")]


def test_no_gpu_means_no_gpu_for_tasks_and_nothing_to_set() -> None:
    settings = Settings(worker_type=WorkerType.GPU)
    assert gpu_for_tasks([], settings) is None
    assert choose_gpu(settings, []) is None
    assert cuda_visible_devices(settings, []) is None


def test_gpu_worker_gets_the_first_gpu_by_uuid() -> None:
    settings = Settings()
    assert gpu_for_tasks(TWO_GPUS, settings) == TWO_GPUS[0]
    assert choose_gpu(settings, list(reversed(TWO_GPUS))) == TWO_GPUS[0]
    assert cuda_visible_devices(settings, TWO_GPUS) == "GPU-zero"


def test_gpu_worker_gets_the_configured_gpu() -> None:
    settings = Settings(gpu_index=1)
    assert choose_gpu(settings, TWO_GPUS) == TWO_GPUS[1]
    assert cuda_visible_devices(settings, TWO_GPUS) == "GPU-one"


def test_index_when_nvml_gave_no_uuid() -> None:
    assert cuda_visible_devices(Settings(gpu_index=1), [make_gpu(0, uuid=""), make_gpu(1, uuid="")]) == "1"


def test_configured_gpu_missing_falls_back_to_cpu() -> None:
    settings = Settings(gpu_index=3)
    with structlog.testing.capture_logs() as events:
        assert gpu_for_tasks(TWO_GPUS, settings) is None
    assert events[0]["event"] == "gpu.configured_gpu_missing"
    assert cuda_visible_devices(settings, TWO_GPUS) == ""


def test_cpu_worker_hides_the_gpus() -> None:
    settings = Settings(worker_type=WorkerType.CPU)
    assert gpu_for_tasks(TWO_GPUS, settings) is None
    assert cuda_visible_devices(settings, TWO_GPUS) == ""
