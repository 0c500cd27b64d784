"""The rules for when this worker takes a new task, as pure functions of what the sensors read.

``evaluate`` answers one question: may the next task be taken now, and if not, why (a sentence a
person reads in the tray, the terminal and the hub's worker list). The rules, in the order their
reasons are shown:

1. weekly time windows (``config/schedule.py``; local wall-clock time),
2. not on battery,
3. only after N minutes without keyboard or mouse input,
4. not while a full-screen app or game holds the screen,
5. the GPU under the temperature limit, with hysteresis (held at ``limit`` or above, taken again
   once below ``resume``): a GPU at 80 °C after a hold at 84 °C stays held until it cools to 78 °C,
   so intake does not flap around the limit,
6. the GPU's free memory covers the speech model a transcription would load.

The worker cannot see a task before it takes it (prefetch 1), so rule 6 asks for the memory of the
model this worker loads for audio and video whenever it transcribes on the GPU, documents
included; memory the worker's own processes already hold (a model loaded by an earlier task)
counts as free for it. A sensor that cannot read (no GPU, no display, no battery) never holds
work back. Any thread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from morag_worker.core.config.schedule import WeeklyWindows, parse_windows
from morag_worker.core.config.settings import Settings, apply_env

__all__ = [
    "GpuReading",
    "IntakeRules",
    "Readings",
    "Verdict",
    "evaluate",
    "vram_needed_mb",
]

# Memory faster-whisper (CTranslate2) uses on the GPU with float16 weights, in MiB, rounded up
# from its published benchmarks (large-v2: 4.5 GB fp16, 2.9 GB int8) and model sizes; a margin
# for the activations of a 30 s window is included.
_MODEL_MB = {
    "tiny": 600,
    "base": 800,
    "small": 1600,
    "medium": 3200,
    "large": 4800,
    "turbo": 2600,
    "distil-large": 2600,
    "distil-medium": 1800,
    "distil-small": 1100,
}
_COMPUTE_SCALE = {"int8": 0.65, "int8_float16": 0.65, "int8_bfloat16": 0.65, "float32": 2.0}


def vram_needed_mb(model: str, compute_type: str = "default", *, model_bytes: int | None = None) -> int:
    """GPU memory (MiB) that transcribing with ``model`` needs, estimated.

    ``model`` is a faster-whisper name (``small``, ``large-v3``, ``distil-large-v3``...) or a folder;
    for a folder or an unknown name, ``model_bytes`` (the size of its weights) gives the estimate:
    the weights, plus half again, plus 300 MiB for the runtime.
    """
    name = model.strip().lower().rsplit("/", 1)[-1].removeprefix("faster-whisper-")
    base = None
    for prefix in sorted(_MODEL_MB, key=len, reverse=True):
        if name.startswith(prefix) or name.endswith(prefix):
            base = _MODEL_MB[prefix]
            break
    if "turbo" in name:
        base = _MODEL_MB["turbo"]
    if base is None:
        if model_bytes is None:
            base = _MODEL_MB["small"]
        else:
            return int(math.ceil(model_bytes * 1.5 / (1024 * 1024))) + 300
    return int(math.ceil(base * _COMPUTE_SCALE.get(compute_type.lower(), 1.0)))


@dataclass(frozen=True)
class GpuReading:
    """What the chosen GPU says now (NVML in production)."""

    temperature_c: int | None
    free_mb: int | None  # memory free on the device
    own_mb: int = 0  # memory this worker's processes hold (counts as free for it)


@dataclass(frozen=True)
class Readings:
    """One look at the sensors; None for whatever could not be read."""

    now: datetime  # local wall-clock time, naive
    gpu: GpuReading | None = None
    idle_s: float | None = None  # seconds since the last keyboard or mouse input
    on_battery: bool | None = None
    fullscreen: bool | None = None


@dataclass(frozen=True)
class IntakeRules:
    """The person's rules, as the worker child runs them."""

    temp_limit_c: int | None = 83
    temp_resume_c: int | None = 78
    vram_needed_mb: int = 0  # 0: this worker does not transcribe on the GPU
    vram_for: str = ""  # what needs it, for the reason ("the small speech model")
    idle_minutes: int = 0
    pause_on_battery: bool = True
    windows: WeeklyWindows | None = None
    pause_when_fullscreen: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> IntakeRules:
        return cls(
            temp_limit_c=settings.gpu_temp_limit_c,
            temp_resume_c=settings.temp_resume_c,
            idle_minutes=settings.idle_minutes,
            pause_on_battery=settings.pause_on_battery,
            windows=parse_windows(settings.time_windows),
            pause_when_fullscreen=settings.pause_when_fullscreen,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IntakeRules:
        """The rules the supervisor handed down (``settings.INTAKE_ENV``), defaults for the rest.

        Raises:
            SettingsError: A variable holds a value that is not allowed.
        """
        return cls.from_settings(
            apply_env(Settings(), {k: v for k, v in env.items() if k.startswith("MORAG_")})
        )

    def needing(self, vram_mb: int, what: str) -> IntakeRules:
        return replace(self, vram_needed_mb=vram_mb, vram_for=what)


@dataclass(frozen=True)
class Verdict:
    """``reason`` is None when a new task may be taken; ``hot`` carries the hysteresis forward."""

    reason: str | None
    hot: bool = False

    @property
    def held(self) -> bool:
        return self.reason is not None


def _gigabytes(mb: int) -> str:
    return f"{mb / 1024:.1f} GB"


def _minutes(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes} minute" + ("s" if minutes != 1 else "")


def _gpu_reasons(rules: IntakeRules, gpu: GpuReading, hot: bool) -> tuple[str | None, bool]:
    limit, resume = rules.temp_limit_c, rules.temp_resume_c
    temp = gpu.temperature_c
    if limit is not None and temp is not None:
        resume = resume if resume is not None else limit
        hot = temp > resume if hot else temp >= limit
        if hot:
            return f"GPU at {temp} °C, waiting for {resume} °C", True
    else:
        hot = False
    need = rules.vram_needed_mb
    if need and gpu.free_mb is not None and gpu.free_mb + gpu.own_mb < need:
        what = rules.vram_for or "a transcription"
        return (
            f"The GPU has {_gigabytes(gpu.free_mb)} free; {what} needs about {_gigabytes(need)}",
            hot,
        )
    return None, hot


def evaluate(rules: IntakeRules, readings: Readings, *, hot: bool = False) -> Verdict:
    """May a new task be taken? ``hot``: the previous verdict's, for the temperature hysteresis."""
    reason: str | None = None
    windows = rules.windows
    if windows is not None and not windows.contains(readings.now):
        start = windows.next_start(readings.now)
        reason = f"Outside your contribution hours ({windows.text})"
        if start is not None:
            when = (
                start.strftime("%H:%M") if start.date() == readings.now.date() else start.strftime("%a %H:%M")
            )
            reason += f"; resuming at {when}"
    elif rules.pause_on_battery and readings.on_battery:
        reason = "The computer runs on its battery"
    elif rules.idle_minutes and readings.idle_s is not None and readings.idle_s < rules.idle_minutes * 60:
        reason = f"The computer is in use; waiting for {_minutes(rules.idle_minutes * 60)} without input"
    elif rules.pause_when_fullscreen and readings.fullscreen:
        reason = "A full-screen app or game is running"
    new_hot = hot
    if readings.gpu is not None:
        gpu_reason, new_hot = _gpu_reasons(rules, readings.gpu, hot)
        reason = reason or gpu_reason
    else:
        new_hot = False
    return Verdict(reason, new_hot)
