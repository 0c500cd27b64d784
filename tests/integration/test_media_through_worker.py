"""Audio and video through hub → worker → result, transcribed by faster-whisper with a tiny model built here.

The model (tests/media.py) always says "hello world" from 0 to 2 s, so the transcripts are exact; the media
are 3 s tones that PyAV writes in each format (video tracks decoded by PyAV too). One worker reads the model
from a folder (``MORAG_WHISPER_MODEL=<path>``). A second user's worker is given only the model's name and no
internet: it fetches the model once from the hub (``--models-dir``) into its platform cache.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from morag_worker.core.processing import no_progress
from morag_worker.core.processing.whisper_model import (
    ModelOrigin,
    ModelResolver,
    ModelUnavailable,
    WhisperSettings,
)
from morag_worker.core.transfer.models import MANIFEST_NAME, ModelManifest
from tests.conftest import Stack
from tests.integration.test_formats_through_worker import submit

pytestmark = pytest.mark.integration

pytest.importorskip("faster_whisper", reason="the 'audio' extra (faster-whisper) is not installed")

from tests.media import MEDIA, build_tiny_whisper, write_media  # noqa: E402  (needs the extra's numpy)

USER = "listener"
OFFLINE_USER = "offline"
MODEL = "tiny-scripted"
CPU = {"MORAG_WHISPER_DEVICE": "cpu", "MORAG_WHISPER_COMPUTE_TYPE": "float32", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / MODEL).mkdir()
    build_tiny_whisper(root / MODEL)
    return root


@pytest.fixture(scope="module")
def hub_args(models_dir: Path) -> tuple[str, ...]:
    return ("--models-dir", str(models_dir))


@pytest.fixture(scope="module")
def key(stack: Stack, models_dir: Path) -> str:
    api_key = stack.key(USER)
    stack.start_worker(USER, api_key, MORAG_WHISPER_MODEL=str(models_dir / MODEL), **CPU)
    return api_key


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "mp4", "webm"])
def test_each_format_is_transcribed_with_timestamps(stack: Stack, key: str, tmp_path: Path, fmt: str) -> None:
    kind = MEDIA[fmt]
    clip = write_media(tmp_path / f"talk{kind.suffix}", kind)
    result = submit(stack, key, clip, name=clip.name)
    assert result["success"] is True, result["error_message"]
    assert result["content"] == "[00:00:00] hello world\n"
    meta: dict[str, Any] = result["metadata"]
    assert meta["format"] == ("video" if kind.video_codec else "audio") and meta["processor"] == "whisper"
    assert meta["language"] == "en" and meta["duration"] == pytest.approx(3.0, abs=0.05)
    assert meta["segments"] == 1 and meta["filename"] == clip.name


def test_a_video_without_sound_fails_clearly(stack: Stack, key: str, tmp_path: Path) -> None:
    silent = write_media(tmp_path / "silent.mp4", MEDIA["mp4-silent"])
    result = submit(stack, key, silent, name=silent.name)
    assert result["success"] is False and result["content"] is None
    assert result["error_message"].startswith("the video file has no audio track to transcribe")


def test_an_undecodable_file_fails_clearly(stack: Stack, key: str, tmp_path: Path) -> None:
    junk = tmp_path / "talk.mp3"
    junk.write_bytes(b"ID3" + os.urandom(8192))  # an MP3's tag header, then noise
    result = submit(stack, key, junk, name=junk.name)
    assert result["success"] is False and result["content"] is None
    assert result["error_message"].startswith("the audio file is damaged or not an audio or video file"), (
        result["error_message"]
    )
    assert "Traceback" not in result["error_message"]


def test_a_worker_without_internet_fetches_the_model_from_the_hub(
    stack: Stack, key: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = tmp_path_factory.mktemp("offline-cache")
    offline_key = stack.key(OFFLINE_USER)
    stack.start_worker(OFFLINE_USER, offline_key, MORAG_WHISPER_MODEL=MODEL, XDG_CACHE_HOME=str(cache), **CPU)
    clip = write_media(tmp_path_factory.mktemp("clips") / "talk.flac", MEDIA["flac"])
    for _ in range(2):  # the second task finds the model in the cache
        result = submit(stack, offline_key, clip, name=clip.name)
        assert result["success"] is True, result["error_message"]
        assert result["content"] == "[00:00:00] hello world\n"
    fetched = cache / "morag-worker" / "models" / MODEL
    manifest = ModelManifest.from_dict(json.loads((fetched / MANIFEST_NAME).read_text()))
    assert {f.name for f in manifest.files} >= {"model.bin", "tokenizer.json", "preprocessor_config.json"}


def test_the_hub_serves_models_to_keys_only_and_verifiably(
    stack: Stack, key: str, models_dir: Path, tmp_path: Path
) -> None:
    url = f"{stack.hub_url}/api/v1/models/{MODEL}"
    assert requests.get(url, timeout=10).status_code == 401
    auth = {"Authorization": f"Bearer {key}"}
    listed = requests.get(url, headers=auth, timeout=10)
    assert listed.status_code == 200
    manifest = ModelManifest.from_dict(listed.json())
    tokenizer = next(f for f in manifest.files if f.name == "tokenizer.json")
    got = requests.get(f"{url}/tokenizer.json", headers=auth, timeout=10)
    assert got.content == (models_dir / MODEL / "tokenizer.json").read_bytes()
    assert got.headers["x-checksum-sha256"] == tokenizer.sha256
    for missing in ("nope", "..", ".hidden"):
        assert requests.get(
            f"{stack.hub_url}/api/v1/models/{missing}", headers=auth, timeout=10
        ).status_code in (
            404,
            405,
        )
    assert requests.get(f"{url}/..%2F..%2Fetc%2Fpasswd", headers=auth, timeout=10).status_code == 404


def test_the_resolver_fetches_from_the_hub_once_with_progress(stack: Stack, key: str, tmp_path: Path) -> None:
    messages: list[str] = []
    settings = WhisperSettings(model=MODEL, hub_url=stack.hub_url, api_key=key)
    resolver = ModelResolver(settings, tmp_path, online=_no_internet)
    found = resolver.resolve(lambda done, total, message: messages.append(message))
    assert found.origin is ModelOrigin.HUB and (found.path / "model.bin").is_file()
    assert messages[0].startswith(f"fetching the speech model {MODEL} from the hub: 0 B of ")
    done, total = messages[-1].split(": ")[1].split(" of ")
    assert done == total and len(messages) >= 2  # the last report: every byte of the model
    assert (
        ModelResolver(settings, tmp_path, online=_no_internet).resolve(no_progress).origin
        is ModelOrigin.CACHE
    )

    unknown = WhisperSettings(model="medium", hub_url=stack.hub_url, api_key=key)
    with pytest.raises(
        ModelUnavailable, match="could not be fetched: the hub does not serve it; downloading"
    ):
        ModelResolver(unknown, tmp_path, online=_no_internet).resolve(no_progress)
    refused = WhisperSettings(model="medium", hub_url=stack.hub_url, api_key="not-a-key")
    with pytest.raises(ModelUnavailable, match=r"the hub could not be asked for it \(The hub answered 401"):
        ModelResolver(refused, tmp_path, online=_no_internet).resolve(no_progress)


def _no_internet(name: str, folder: Path) -> None:
    raise OSError(f"no network here to fetch {name}")


def test_a_model_file_that_does_not_match_its_manifest_is_refused(
    stack: Stack, key: str, models_dir: Path, tmp_path: Path
) -> None:
    shutil.copytree(models_dir / MODEL, models_dir / "tampered")
    settings = WhisperSettings(model="tampered", hub_url=stack.hub_url, api_key=key)
    auth = {"Authorization": f"Bearer {key}"}
    assert requests.get(f"{stack.hub_url}/api/v1/models/tampered", headers=auth, timeout=10).ok
    # Same size and modification time: the hub keeps its manifest, but the bytes are no longer those.
    config = models_dir / "tampered" / "preprocessor_config.json"
    stamp = config.stat()
    config.write_bytes(config.read_bytes().replace(b"16000", b"16001"))
    os.utime(config, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    with pytest.raises(ModelUnavailable, match="the speech model tampered could not be fetched from the hub"):
        ModelResolver(settings, tmp_path / "cache", online=_no_internet).resolve(no_progress)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # nothing half-fetched is kept
