"""Audio and video transcription through faster-whisper, an optional extra (``morag-worker[audio]``).

:class:`WhisperProcessor` depends only on the narrow :class:`Transcriber` protocol;
:class:`FasterWhisperTranscriber` implements it and imports ``faster_whisper`` on first use, so this module
imports without the extra. When the extra is missing, :func:`register` routes audio and video to an
:class:`.registry.Unavailable` entry whose message says how to install it. The model (``MORAG_WHISPER_*``,
found or fetched once by :mod:`.whisper_model`) is loaded before the first file of a process and reused;
progress is reported in seconds of media done of the total after each segment (a cancellation
checkpoint). A plain :class:`~.base.Processor`, so it runs unchanged in whatever process converts.
Runs on the calling task's thread.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import structlog

from morag_worker.core.fork_guard import import_guard
from morag_worker.core.processing.base import (
    CorruptInput,
    ProcessedContent,
    ProcessingError,
    ProgressFn,
    damaged,
    finish,
    guarded,
    no_progress,
)
from morag_worker.core.processing.whisper_model import (
    ENV_COMPUTE_TYPE,
    ENV_DEVICE,
    ModelResolver,
    ModelUnavailable,
    WhisperSettings,
)

if TYPE_CHECKING:
    from morag_worker.core.processing.registry import ProcessorRegistry

__all__ = [
    "AUDIO_EXTRA_MESSAGE",
    "FasterWhisperTranscriber",
    "Loadable",
    "Segment",
    "Transcriber",
    "TranscriptInfo",
    "WhisperProcessor",
    "is_available",
    "register",
]

log = structlog.get_logger(__name__)

AUDIO_EXTRA_MESSAGE = "audio transcription needs the 'audio' extra: pip install morag-worker[audio]"
AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".m4a", ".ogg", ".oga", ".opus", ".aac", ".wma")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".wmv", ".flv", ".mpeg", ".mpg")


@dataclass(frozen=True)
class Segment:
    """A transcribed stretch of speech, times in seconds from the start."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class TranscriptInfo:
    """What the transcriber learnt about the whole file."""

    language: str | None
    language_probability: float | None
    duration: float | None


class Transcriber(Protocol):
    """Speech to text; segments may be produced lazily while the caller iterates."""

    def transcribe(self, path: Path, options: Mapping[str, Any]) -> tuple[Iterable[Segment], TranscriptInfo]:
        """Start transcribing ``path``; raise on undecodable media."""
        ...


def is_available() -> bool:
    """Whether ``faster_whisper`` is installed (checked without importing it)."""
    return importlib.util.find_spec("faster_whisper") is not None


class FasterWhisperTranscriber:
    """:class:`Transcriber` on ``faster_whisper.WhisperModel``, loaded on first use and then kept.

    Args:
        model: A local model folder, or a model name (``small``) that :class:`.ModelResolver` finds in
            the platform cache or fetches once from the hub or the internet.
        device: ``auto``, ``cuda`` or ``cpu``.
        compute_type: ``default``, ``float16``, ``int8``... (CPU supports int8 and float32 only).
        cpu_threads: Threads on CPU; 0 lets CTranslate2 choose.
        resolver: Finds the model's folder; one for ``model`` with no hub when None.
    """

    def __init__(
        self,
        model: str = "small",
        device: str = "auto",
        compute_type: str = "default",
        cpu_threads: int = 0,
        resolver: ModelResolver | None = None,
    ) -> None:
        self.model_name = model
        self._device = device
        self._compute_type = compute_type
        self._cpu_threads = cpu_threads
        self._resolver = resolver or ModelResolver(WhisperSettings(model=model))
        self._model: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: WhisperSettings) -> FasterWhisperTranscriber:
        """The transcriber ``MORAG_WHISPER_*`` describe (see :mod:`.whisper_model`)."""
        return cls(
            settings.model,
            settings.device,
            settings.compute_type,
            settings.cpu_threads,
            resolver=ModelResolver(settings),
        )

    def load(self, progress: ProgressFn) -> None:
        """Find (fetching it once when needed) and load the model; reports the fetch through ``progress``."""
        with self._lock:
            if self._model is not None:
                return
            found = self._resolver.resolve(progress)
            progress(0, None, "loading the speech model")
            with import_guard():  # a converter child forked meanwhile must not inherit it half-imported
                from faster_whisper import WhisperModel

            try:
                self._model = WhisperModel(
                    str(found.path),
                    device=self._device,
                    compute_type=self._compute_type,
                    cpu_threads=self._cpu_threads,
                )
            except Exception as exc:
                detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise ModelUnavailable(
                    f"the speech model {self.model_name} could not be loaded on device {self._device} "
                    f"with compute type {self._compute_type} ({detail}); check {ENV_DEVICE} and "
                    f"{ENV_COMPUTE_TYPE}"
                ) from exc
            log.info("whisper.model_loaded", model=self.model_name, origin=found.origin.value)

    def transcribe(self, path: Path, options: Mapping[str, Any]) -> tuple[Iterable[Segment], TranscriptInfo]:
        """Start a transcription (options: language, task, beam_size, vad_filter)."""
        self.load(no_progress)
        raw_segments, info = self._model.transcribe(
            str(path),
            language=options.get("language") or None,
            task=str(options.get("task") or "transcribe"),
            beam_size=int(options.get("beam_size") or 5),
            vad_filter=bool(options.get("vad_filter", False)),
        )
        segments = (Segment(float(s.start), float(s.end), str(s.text)) for s in raw_segments)
        return segments, TranscriptInfo(
            language=getattr(info, "language", None),
            language_probability=getattr(info, "language_probability", None),
            duration=getattr(info, "duration", None),
        )


@runtime_checkable
class Loadable(Protocol):
    """A transcriber whose model is fetched and loaded before the first file (progress shown meanwhile)."""

    def load(self, progress: ProgressFn) -> None: ...


def _clock(seconds: float) -> str:
    whole = max(0, int(seconds))
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class WhisperProcessor:
    """Audio or video to a transcript (progress unit: seconds of media).

    Options (besides the transcriber's): ``timestamps`` (default true) prefixes each segment with its start.
    """

    # Runs in the worker, not in a converter child (core/processing/sandbox.py): the model is loaded once
    # and kept between tasks, CUDA does not survive a fork, and a GPU's address space dwarfs RLIMIT_AS.
    # Celery's task time limits still bound it.
    isolated = False

    def __init__(self, transcriber: Transcriber, fmt: str = "audio") -> None:
        self.name = "whisper"
        self._fmt = fmt
        self._transcriber = transcriber

    def process(self, path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        """Transcribe ``path`` segment by segment."""
        what, kind = f"the {self._fmt} file", "an audio or video file"
        if isinstance(self._transcriber, Loadable):
            self._transcriber.load(progress)
        progress(0, None, "decoding the media")
        try:
            segments, info = self._transcriber.transcribe(path, options)
        except IndexError as exc:  # faster-whisper's way of saying "no audio stream"
            raise CorruptInput(f"{what} has no audio track to transcribe") from exc
        except ProcessingError:
            raise
        except Exception as exc:
            raise damaged(what, kind, exc) from exc
        timestamps = options.get("timestamps", True) is not False
        lines: list[str] = []
        count = 0
        for segment in guarded(segments, what, kind):
            count += 1
            text = segment.text.strip()
            if text:
                lines.append(f"[{_clock(segment.start)}] {text}" if timestamps else text)
            done = min(segment.end, info.duration) if info.duration else segment.end
            progress(done, info.duration, f"transcribed {_clock(done)}")
        metadata = {
            "duration": info.duration,
            "language": info.language,
            "language_probability": info.language_probability,
            "segments": count,
            "model": getattr(self._transcriber, "model_name", None),
        }
        joiner = "\n\n" if timestamps else "\n"
        result = finish(joiner.join(lines), processor=self.name, fmt=self._fmt, what=what, metadata=metadata)
        if info.duration:
            progress(info.duration, info.duration, "transcription finished")
        return result


def register(registry: ProcessorRegistry, transcriber: Transcriber | None = None) -> None:
    """Route audio and video to Whisper, or to a message naming the extra when faster-whisper is missing."""
    from morag_worker.core.processing.registry import Unavailable

    audio_keys = ("audio", "audio/*")
    video_keys = ("video", "video/*")
    reason = None if transcriber is not None or is_available() else AUDIO_EXTRA_MESSAGE
    if reason is None and transcriber is None:
        try:
            transcriber = FasterWhisperTranscriber.from_settings(WhisperSettings.from_env(os.environ))
        except ValueError as exc:  # a misspelt MORAG_WHISPER_DEVICE: every media task says so
            reason = str(exc)
    if reason is not None or transcriber is None:
        missing = Unavailable(name="whisper", reason=reason or AUDIO_EXTRA_MESSAGE)
        registry.register(
            missing, content_types=audio_keys + video_keys, extensions=AUDIO_EXTENSIONS + VIDEO_EXTENSIONS
        )
        return
    shared = transcriber
    registry.register(
        WhisperProcessor(shared, "audio"), content_types=audio_keys, extensions=AUDIO_EXTENSIONS
    )
    registry.register(
        WhisperProcessor(shared, "video"), content_types=video_keys, extensions=VIDEO_EXTENSIONS
    )
