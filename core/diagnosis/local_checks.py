"""The checks that stay on this machine: a tiny conversion, a tiny transcription, the GPU.

The inputs are made here, in a temporary folder the caller owns, so the checks need no bundled
file and no network (except a speech model fetched by name, which is what they find out).
"""

from __future__ import annotations

import math
import struct
import time
import wave
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from morag_worker.core.config.settings import Settings
from morag_worker.core.diagnosis.report import CheckName, CheckResult, Outcome
from morag_worker.core.naming import WorkerType
from morag_worker.core.processing import ProcessingError, ProcessorRegistry, no_progress
from morag_worker.core.processing.media import Transcriber, is_available
from morag_worker.core.supervisor.gpu import GpuInfo, GpuProbe, gpu_for_tasks

__all__ = [
    "TEMPERATURE_WARNING_C",
    "TranscriberFactory",
    "check_conversion",
    "check_gpu",
    "check_transcription",
    "default_transcriber",
    "gpu_facts",
]

TEMPERATURE_WARNING_C = 83  # the default intake limit (issue 13): above it a worker takes no new task
_MARKER = "MoRAG self-test"
_HTML = (
    f"<html><head><title>{_MARKER}</title></head>"
    f"<body><h1>{_MARKER}</h1><p>One small paragraph.</p></body></html>"
)

TranscriberFactory = Callable[[Mapping[str, str]], Transcriber]
ModelLocator = Callable[[Mapping[str, str]], Path | None]


def local_model(env: Mapping[str, str]) -> Path | None:
    """The configured speech model's folder when it is on this machine; a self-test never downloads one."""
    from morag_worker.core.processing.whisper_model import ModelResolver, WhisperSettings

    found = ModelResolver(WhisperSettings.from_env(env)).find_local()
    return found.path if found is not None else None


def check_conversion(
    work_dir: Path, registry_factory: Callable[[], ProcessorRegistry] = ProcessorRegistry.default
) -> CheckResult:
    """Convert a small HTML page to markdown through the same registry a task uses."""
    name = CheckName.CONVERSION
    path = work_dir / "self-test.html"
    path.write_text(_HTML, encoding="utf-8")
    started = time.monotonic()
    try:
        processor = registry_factory().resolve("text/html", path.name, path)
        content = processor.process(path, {}, no_progress)
    except ProcessingError as exc:
        return CheckResult(
            name,
            Outcome.FAILED,
            f"a small HTML page did not convert: {exc}",
            "reinstall MoRAG Worker; without conversion no document task can succeed",
        )
    seconds = time.monotonic() - started
    if _MARKER not in content.markdown:
        return CheckResult(
            name,
            Outcome.FAILED,
            "a small HTML page converted, but its text is missing from the markdown",
            "reinstall MoRAG Worker, and send `morag-worker diagnostics` to the hub's operator",
        )
    details = {"processor": processor.name, "words": content.metadata.get("word_count")}
    return CheckResult(
        name,
        Outcome.PASSED,
        f"a small HTML page converted to markdown in {seconds:.2f} s",
        details=details,
    )


def default_transcriber(env: Mapping[str, str]) -> Transcriber:
    """faster-whisper as a worker would set it up (``MORAG_WHISPER_*``; defaults otherwise)."""
    from morag_worker.core.processing.media import FasterWhisperTranscriber

    return FasterWhisperTranscriber(
        model=env.get("MORAG_WHISPER_MODEL") or "small",
        device=env.get("MORAG_WHISPER_DEVICE") or "auto",
        compute_type=env.get("MORAG_WHISPER_COMPUTE_TYPE") or "default",
    )


def _tone(path: Path, seconds: float = 1.0, rate: int = 16000) -> None:
    """A quiet 440 Hz tone as 16-bit mono WAV (speech models decode it; what they hear does not matter)."""
    frames = b"".join(
        struct.pack("<h", int(3000 * math.sin(2 * math.pi * 440 * i / rate)))
        for i in range(int(seconds * rate))
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)


def check_transcription(
    work_dir: Path,
    env: Mapping[str, str],
    factory: TranscriberFactory = default_transcriber,
    *,
    available: Callable[[], bool] = is_available,
    locate: ModelLocator = local_model,
) -> CheckResult:
    """Run the speech model over a one-second clip, when faster-whisper (the ``audio`` extra) is here."""
    name = CheckName.TRANSCRIPTION
    if not available():
        return CheckResult(
            name,
            Outcome.SKIPPED,
            "not installed: faster-whisper (the audio extra) is missing, so audio and video tasks "
            "are refused",
            "to transcribe audio and video, install it: pip install 'morag-worker[audio]'",
            details={"installed": False},
        )
    model_setting = env.get("MORAG_WHISPER_MODEL") or "small"
    if locate(env) is None:
        return CheckResult(
            name,
            Outcome.WARNING,
            f"the speech model {model_setting} is not on this machine yet; the first audio or video "
            "task fetches it, from the hub or the internet",
            "to check transcription now, set MORAG_WHISPER_MODEL to a model folder on this machine",
            details={"installed": True, "model": model_setting, "local": False},
        )
    path = work_dir / "self-test.wav"
    _tone(path)
    started = time.monotonic()
    transcriber: Any = None
    try:
        transcriber = factory(env)
        segments, info = transcriber.transcribe(path, {"beam_size": 1})
        count = sum(1 for _ in segments)
    except Exception as exc:  # noqa: BLE001 - model missing, download refused, CUDA errors...: all one outcome
        return CheckResult(
            name,
            Outcome.FAILED,
            f"the speech model did not run: {type(exc).__name__}: {exc}",
            "set MORAG_WHISPER_MODEL to a local model folder, or let this machine download the model once; "
            "MORAG_WHISPER_DEVICE=cpu avoids GPU problems",
            details={"installed": True},
        )
    seconds = time.monotonic() - started
    model = getattr(transcriber, "model_name", None)
    details = {"installed": True, "model": model, "segments": count, "duration": info.duration}
    which = f"the speech model {model}" if model else "the speech model"
    summary = f"{which} transcribed a one-second clip in {seconds:.1f} s"
    return CheckResult(name, Outcome.PASSED, summary, details=details)


def gpu_facts(gpus: Sequence[GpuInfo]) -> list[dict[str, Any]]:
    return [
        {
            "index": g.index,
            "name": g.name,
            "uuid": g.uuid,
            "memory_total_mb": g.memory_total_mb,
            "memory_used_mb": g.memory_used_mb,
            "temperature_c": g.temperature_c,
            "utilization_percent": g.utilization_percent,
        }
        for g in gpus
    ]


def check_gpu(probe: GpuProbe, settings: Settings) -> CheckResult:
    """The GPU the worker's tasks would use, through NVML. No GPU is an outcome, not a failure."""
    name = CheckName.GPU
    gpus = probe.list_gpus()
    details: dict[str, Any] = {"gpus": gpu_facts(gpus)}
    if settings.worker_type is WorkerType.CPU:
        return CheckResult(name, Outcome.SKIPPED, "CPU work only is chosen in the settings", details=details)
    if not gpus:
        return CheckResult(
            name,
            Outcome.WARNING,
            "no NVIDIA GPU found; documents still convert",
            "audio and video are transcribed on the CPU, more slowly; if this machine has an NVIDIA GPU, "
            "install its driver (nvidia-smi should list it) and the nvidia-ml-py package",
            details=details,
        )
    gpu = gpu_for_tasks(gpus, settings)
    if gpu is None:
        return CheckResult(
            name,
            Outcome.WARNING,
            f"GPU {settings.gpu_index} chosen in the settings is not present",
            "choose one of this machine's GPUs in Settings; until then transcription runs on the CPU",
            details=details,
        )
    free = (
        f"{gpu.memory_free_mb} of {gpu.memory_total_mb} MiB free"
        if gpu.memory_free_mb is not None
        else f"{gpu.memory_total_mb} MiB"
    )
    heat = f", {gpu.temperature_c} °C" if gpu.temperature_c is not None else ""
    summary = f"{gpu.name} (GPU {gpu.index}): {free}{heat}"
    if gpu.temperature_c is not None and gpu.temperature_c >= TEMPERATURE_WARNING_C:
        return CheckResult(
            name,
            Outcome.WARNING,
            f"{summary}, which is hot",
            f"at {TEMPERATURE_WARNING_C} °C or more the worker waits before taking a task; check the "
            "GPU's cooling and airflow",
            details=details,
        )
    return CheckResult(name, Outcome.PASSED, summary, details=details)
