"""The real faster-whisper path on CPU, with a tiny "scripted" model the test builds in milliseconds
(tests/media.py), and where the model comes from: a folder, the platform cache, or a real hub.

The model's decoder ignores the audio and always says ``<|0.00|> hello world <|2.00|>``, so the
assertions are exact. Skipped when the ``audio`` extra is missing.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from morag_worker.core.processing import CorruptInput, ProcessorRegistry, media, no_progress
from morag_worker.core.processing.whisper_model import (
    ModelOrigin,
    ModelResolver,
    ModelUnavailable,
    WhisperSettings,
)
from morag_worker.core.transfer.models import MANIFEST_NAME, manifest_of_folder

pytestmark = pytest.mark.unit

pytest.importorskip("faster_whisper", reason="the 'audio' extra (faster-whisper) is not installed")

from tests.media import MEDIA, build_tiny_whisper, write_media  # noqa: E402  (needs the extra's numpy)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never wait on the hub
    return build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="module")
def whisper_registry(tiny_model: Path) -> ProcessorRegistry:
    registry = ProcessorRegistry()
    transcriber = media.FasterWhisperTranscriber(
        str(tiny_model), device="cpu", compute_type="float32", cpu_threads=2
    )
    media.register(registry, transcriber)
    return registry


def test_the_extra_is_detected() -> None:
    assert media.is_available()
    registry = ProcessorRegistry.default(entry_points=[])
    assert {"audio", "video"} <= set(registry.supported())


def test_a_wav_is_transcribed_by_faster_whisper(whisper_registry: ProcessorRegistry, tmp_path: Path) -> None:
    clip = write_media(tmp_path / "tone.wav", MEDIA["wav"])
    calls: list[tuple[float, float | None, str]] = []
    processor = whisper_registry.resolve(None, None, clip)
    content = processor.process(clip, {}, lambda done, total, message: calls.append((done, total, message)))
    assert content.markdown == "[00:00:00] hello world\n"
    assert content.metadata["language"] == "en" and content.metadata["segments"] == 1
    assert content.metadata["duration"] == pytest.approx(3.0, abs=0.05)
    # Seconds of media done of the total: after the segment, then the whole file.
    duration = content.metadata["duration"]
    assert [c[:2] for c in calls if c[1] is not None] == [(2.0, duration), (duration, duration)]
    assert calls[0][:2] == (0, None)


def test_garbage_audio_is_corrupt_input(whisper_registry: ProcessorRegistry, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CorruptInput, match="the audio file is damaged or not an audio or video file"):
        whisper_registry.resolve(None, None, junk).process(junk, {}, no_progress)


def test_a_video_is_transcribed_and_one_without_sound_refused(
    whisper_registry: ProcessorRegistry, tmp_path: Path
) -> None:
    talk = write_media(tmp_path / "talk.mp4", MEDIA["mp4"])
    processor = whisper_registry.resolve("video/mp4", None, talk)
    content = processor.process(talk, {"timestamps": False}, no_progress)
    assert content.markdown == "hello world\n" and content.metadata["format"] == "video"
    silent = write_media(tmp_path / "silent.mp4", MEDIA["mp4-silent"])
    with pytest.raises(CorruptInput, match="the video file has no audio track to transcribe"):
        whisper_registry.resolve(None, None, silent).process(silent, {}, no_progress)


# --- Where the model comes from -------------------------------------------------------------------------


class Recorder:
    """A :data:`ProgressFn` that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, done: float, total: float | None, message: str) -> None:
        self.messages.append(message)


def no_internet(name: str, folder: Path) -> None:
    raise OSError(f"no network here to fetch {name}")


def test_settings_come_from_the_environment() -> None:
    assert WhisperSettings.from_env({}) == WhisperSettings("small", "auto", "default")
    env = {
        "MORAG_WHISPER_MODEL": " large-v3 ",
        "MORAG_WHISPER_DEVICE": "CUDA",
        "MORAG_WHISPER_COMPUTE_TYPE": "float16",
        "MAIN_SERVER_URL": "https://hub.example",
        "MORAG_API_KEY": "secret",
    }
    settings = WhisperSettings.from_env(env)
    assert (settings.model, settings.device, settings.compute_type) == ("large-v3", "cuda", "float16")
    assert settings.hub_url == "https://hub.example" and "secret" not in repr(settings)
    with pytest.raises(ValueError, match="MORAG_WHISPER_DEVICE must be auto, cpu or cuda, not 'gpu'"):
        WhisperSettings.from_env({"MORAG_WHISPER_DEVICE": "gpu"})


def test_a_model_folder_is_used_where_it_is(tiny_model: Path, tmp_path: Path) -> None:
    resolver = ModelResolver(WhisperSettings(model=str(tiny_model)), tmp_path / "cache", online=no_internet)
    found = resolver.resolve(no_progress)
    assert found.path == tiny_model and found.origin is ModelOrigin.FOLDER
    assert not (tmp_path / "cache").exists()


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    resolver = ModelResolver(WhisperSettings(model=str(tmp_path / "gone")), tmp_path, online=no_internet)
    with pytest.raises(
        ModelUnavailable, match=r"the speech model folder .*gone \(MORAG_WHISPER_MODEL\) does not"
    ):
        resolver.resolve(no_progress)


def test_a_name_in_the_platform_cache_is_used(tiny_model: Path, tmp_path: Path) -> None:
    cached = tmp_path / "cache" / "Systran--faster-whisper-tiny"
    shutil.copytree(tiny_model, cached)
    (cached / MANIFEST_NAME).write_text(manifest_of_folder(cached.name, cached).to_json())
    settings = WhisperSettings(model="Systran/faster-whisper-tiny")
    found = ModelResolver(settings, tmp_path / "cache", online=no_internet).resolve(no_progress)
    assert found.path == cached and found.origin is ModelOrigin.CACHE


def test_a_name_is_fetched_online_once_then_taken_from_the_cache(tiny_model: Path, tmp_path: Path) -> None:
    fetched: list[str] = []

    def online(name: str, folder: Path) -> None:
        fetched.append(name)
        shutil.copytree(tiny_model, folder, dirs_exist_ok=True)

    progress = Recorder()
    first = ModelResolver(WhisperSettings(model="tiny"), tmp_path, online=online).resolve(progress)
    assert first.origin is ModelOrigin.ONLINE and first.path == tmp_path / "tiny"
    assert progress.messages[0] == "downloading the speech model tiny (once; it is kept in the cache)"
    again = ModelResolver(WhisperSettings(model="tiny"), tmp_path, online=online).resolve(progress)
    assert again.origin is ModelOrigin.CACHE and fetched == ["tiny"]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no staging folder left behind


def test_an_online_download_shows_the_bytes_so_far(tiny_model: Path, tmp_path: Path) -> None:
    seen = threading.Event()

    def online(name: str, folder: Path) -> None:
        (folder / "model.bin").write_bytes(b"\0" * 1024 * 1024)
        assert seen.wait(30), "no progress was reported while the download ran"

    def progress(done: float, total: float | None, message: str) -> None:
        if message.endswith(": 1.0 MiB so far"):
            seen.set()

    resolver = ModelResolver(WhisperSettings(model="tiny"), tmp_path, online=online, poll_s=0.01)
    assert resolver.resolve(progress).origin is ModelOrigin.ONLINE and seen.is_set()


def test_a_name_found_nowhere_says_what_was_tried(tmp_path: Path) -> None:
    resolver = ModelResolver(WhisperSettings(model="small"), tmp_path, online=no_internet)
    with pytest.raises(ModelUnavailable) as caught:
        resolver.resolve(no_progress)
    assert caught.value.message == (
        "the speech model small is not on this machine and could not be fetched: downloading it failed "
        "(OSError: no network here to fetch small). Set MORAG_WHISPER_MODEL to a model folder, or ask "
        "the hub's operator to serve it"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_compute_type_the_device_lacks_fails_with_advice(tiny_model: Path, tmp_path: Path) -> None:
    transcriber = media.FasterWhisperTranscriber(str(tiny_model), device="cpu", compute_type="float16")
    registry = ProcessorRegistry()
    media.register(registry, transcriber)
    clip = write_media(tmp_path / "tone.wav", MEDIA["wav"])
    with pytest.raises(ModelUnavailable, match="could not be loaded on device cpu with compute type float16"):
        registry.resolve(None, None, clip).process(clip, {}, no_progress)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "mp4", "webm"])
def test_each_format_is_decoded_and_transcribed(
    whisper_registry: ProcessorRegistry, tmp_path: Path, fmt: str
) -> None:
    kind = MEDIA[fmt]
    clip = write_media(tmp_path / f"clip{kind.suffix}", kind)
    content = whisper_registry.resolve(None, None, clip).process(clip, {}, no_progress)
    assert content.markdown == "[00:00:00] hello world\n"
    assert content.metadata["format"] == ("video" if kind.video_codec else "audio")
