"""The self-test's report, the GPU check through NVML fakes, and the bundle's scrubbing, without
processes or network."""

from __future__ import annotations

import base64
import json
import secrets
import wave
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from morag_worker.core.config.settings import Settings
from morag_worker.core.diagnosis.bundle import environment_facts, log_tail
from morag_worker.core.diagnosis.local_checks import check_gpu, check_transcription
from morag_worker.core.diagnosis.report import (
    CHECK_NAMES,
    CheckName,
    CheckResult,
    Outcome,
    SelfTestReport,
    render_text,
)
from morag_worker.core.diagnosis.scrub import Scrubber
from morag_worker.core.naming import WorkerType
from morag_worker.core.processing.media import Segment, TranscriptInfo
from morag_worker.core.supervisor.gpu import NvmlProbe
from tests.fakes import FakeNvml, FakeNvmlError

pytestmark = pytest.mark.unit

GIB = 1024**3


def _report(*outcomes: Outcome) -> SelfTestReport:
    checks = [
        CheckResult(
            name, outcome, f"{name.value} was looked at", "do this" if outcome is Outcome.FAILED else ""
        )
        for name, outcome in zip(CHECK_NAMES, outcomes, strict=False)
    ]
    return SelfTestReport(app_version="1.2.3", hub_url="http://hub.example", checks=checks)


def test_the_json_document_is_stable_and_fails_only_on_a_failed_check() -> None:
    report = _report(Outcome.PASSED, Outcome.WARNING, Outcome.SKIPPED, Outcome.PASSED, Outcome.SKIPPED)
    data = json.loads(json.dumps(report.to_json()))
    assert set(data) == {"format", "format_version", "app_version", "hub_url", "ok", "counts", "checks"}
    assert data["format"] == "morag-worker-self-test" and data["format_version"] == 1 and data["ok"] is True
    assert set(data["checks"][0]) == {"name", "title", "outcome", "summary", "advice", "seconds", "details"}
    assert [c["name"] for c in data["checks"]] == ["keychain", "hub", "broker", "conversion", "transcription"]
    assert data["checks"][0]["summary"] == "Keychain was looked at."
    assert data["counts"] == {"passed": 2, "warning": 1, "failed": 0, "skipped": 2}
    failing = _report(Outcome.PASSED, Outcome.FAILED)
    assert failing.ok is False and failing.to_json()["checks"][1]["advice"] == "Do this."


def test_the_readable_list_names_each_check_and_its_advice() -> None:
    text = render_text(_report(Outcome.PASSED, Outcome.FAILED))
    assert "PASSED   API key and keychain: Keychain was looked at." in text
    assert "FAILED   Hub: Hub was looked at.\n" in text and "           Do this.\n" in text
    assert text.rstrip().endswith("Something needs fixing (see FAILED above).")


def _nvml(**device: object) -> NvmlProbe:
    base = {"name": b"NVIDIA GeForce RTX 4090", "uuid": "GPU-1", "total": 24 * GIB, "used": 4 * GIB}
    return NvmlProbe(FakeNvml(devices=[{**base, **device}]))


def test_gpu_check_through_nvml_fakes() -> None:
    cool = check_gpu(_nvml(temperature=45), Settings())
    assert cool.outcome is Outcome.PASSED
    assert cool.summary == "NVIDIA GeForce RTX 4090 (GPU 0): 20480 of 24576 MiB free, 45 °C"
    assert cool.details["gpus"][0]["temperature_c"] == 45
    hot = check_gpu(_nvml(temperature=88), Settings())
    assert hot.outcome is Outcome.WARNING and "hot" in hot.summary and "cooling" in hot.advice
    missing = check_gpu(_nvml(), Settings(gpu_index=3))
    assert missing.outcome is Outcome.WARNING and "GPU 3" in missing.summary
    cpu_only = check_gpu(_nvml(), Settings(worker_type=WorkerType.CPU))
    assert cpu_only.outcome is Outcome.SKIPPED


def test_no_gpu_is_an_outcome_not_a_failure() -> None:
    for probe in (NvmlProbe(FakeNvml()), NvmlProbe(FakeNvml(init_error=FakeNvmlError("Driver Not Loaded")))):
        result = check_gpu(probe, Settings())
        assert result.outcome is Outcome.WARNING
        assert result.summary == "no NVIDIA GPU found; documents still convert"
        assert result.advice


def test_transcription_is_skipped_as_not_installed_without_the_extra(tmp_path: Path) -> None:
    result = check_transcription(tmp_path, {}, available=lambda: False)
    assert result.outcome is Outcome.SKIPPED and result.summary.startswith("not installed")
    assert "morag-worker[audio]" in result.advice


def test_a_transcription_that_cannot_load_its_model_fails_with_advice(tmp_path: Path) -> None:
    def no_model(env: object) -> object:
        raise RuntimeError("model 'small' not found and downloads are off")

    result = check_transcription(
        tmp_path,
        {},
        no_model,  # type: ignore[arg-type]
        available=lambda: True,
        locate=lambda env: tmp_path,
    )
    assert result.outcome is Outcome.FAILED and "MORAG_WHISPER_MODEL" in result.advice
    assert result.name is CheckName.TRANSCRIPTION


def test_scrubber_removes_a_key_in_every_form_at_any_offset() -> None:
    key = secrets.token_urlsafe(32)
    scrub = Scrubber([key])
    for prefix in ("", "a", "ab", "abc", "worker-alice:", "u:"):
        basic = base64.b64encode((prefix + key).encode()).decode()
        url_b64 = base64.urlsafe_b64encode((prefix + key).encode()).decode()
        percent = "".join(f"%{b:02x}" for b in key.encode())
        text = f"Authorization: Basic {basic}\nx={url_b64}\nq={percent}\nhex={key.encode().hex()}\n{key}\n"
        out = scrub.text(text)
        assert key not in out
        for stable in _base64_stable(key):
            assert stable not in out, (prefix, stable)
        assert percent not in out and key.encode().hex() not in out


def _base64_stable(key: str) -> list[str]:
    """Independently of the scrubber: the base64 of ``key`` at offsets 0..2, minus the edge groups."""
    found = []
    for offset in range(3):
        encoded = base64.b64encode(b"\x00" * offset + key.encode()).decode()
        found.append(encoded[4:-4])
    return found


def test_log_tail_starts_at_a_whole_line(tmp_path: Path) -> None:
    path = tmp_path / "tray.log"
    path.write_bytes(b"".join(b"line %04d %s\n" % (i, b"x" * 40) for i in range(200)))
    tail = log_tail(path, 1000)
    assert len(tail) <= 1000 and tail.startswith(b"line ") and tail.endswith(b"\n")
    assert log_tail(path, 10**6) == path.read_bytes()


def test_environment_facts_name_secret_variables_without_their_values() -> None:
    facts = environment_facts(
        {"MORAG_API_KEY": "k" * 43, "REDIS_PASSWORD": "pw", "WORKER_TYPE": "gpu", "HOME": "/home/x"}
    )
    assert facts == {
        "MORAG_API_KEY": "(set; value removed)",
        "REDIS_PASSWORD": "(set; value removed)",
        "WORKER_TYPE": "gpu",
    }


class _WaveReader:
    """A transcriber that only decodes the clip (the real model needs the audio extra, which CI lacks)."""

    model_name = "wave-only"

    def transcribe(self, path: Path, options: Mapping[str, Any]) -> tuple[Iterable[Segment], TranscriptInfo]:
        with wave.open(str(path)) as clip:
            duration = clip.getnframes() / clip.getframerate()
        return iter([Segment(0.0, duration, "")]), TranscriptInfo(None, None, duration)


def test_a_transcription_that_runs_passes_on_a_one_second_clip(tmp_path: Path) -> None:
    result = check_transcription(
        tmp_path, {}, lambda env: _WaveReader(), available=lambda: True, locate=lambda env: tmp_path
    )
    assert result.outcome is Outcome.PASSED, result
    assert result.summary.startswith("the speech model wave-only transcribed a one-second clip")
    assert result.details["duration"] == 1.0 and result.details["segments"] == 1


def test_a_speech_model_not_on_this_machine_is_a_warning_and_nothing_is_downloaded(tmp_path: Path) -> None:
    def must_not_load(env: object) -> object:
        raise AssertionError("the self-test tried to load (and so fetch) the model")

    env = {"MORAG_WHISPER_MODEL": "tiny-not-here", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = check_transcription(tmp_path, env, must_not_load, available=lambda: True)  # type: ignore[arg-type]
    assert result.outcome is Outcome.WARNING and "tiny-not-here is not on this machine yet" in result.summary
    assert "MORAG_WHISPER_MODEL" in result.advice


def test_the_real_speech_model_transcribes_the_clip(tmp_path: Path) -> None:
    pytest.importorskip("faster_whisper")
    from tests.media import build_tiny_whisper

    model = build_tiny_whisper(tmp_path / "model")
    env = {"MORAG_WHISPER_MODEL": str(model), "MORAG_WHISPER_DEVICE": "cpu"}
    result = check_transcription(tmp_path, env)
    assert result.outcome is Outcome.PASSED, result
    assert result.details["duration"] == pytest.approx(1.0, abs=0.05)


def test_diagnostics_scrubs_a_key_kept_in_the_config_folders_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key ``login --keep-key-in-file`` stored is one of the secrets the bundle removes."""
    import argparse

    import keyring
    from keyring.backends.fail import Keyring as FailKeyring

    from morag_worker.core.cli.checkup import _known_secrets
    from morag_worker.core.config.credentials import KeyFile, key_file_path

    monkeypatch.setattr(keyring, "get_keyring", FailKeyring)  # no keychain: only the file holds it
    monkeypatch.delenv("MORAG_API_KEY", raising=False)
    key = "mrg_" + secrets.token_urlsafe(32)
    config = tmp_path / "config"
    KeyFile(key_file_path(config)).set("http://hub.test:8700", key)
    args = argparse.Namespace(config_dir=config, api_key_file=None)
    assert _known_secrets(args, "http://hub.test:8700") == [key]
