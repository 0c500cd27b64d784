"""Settings: validation, the versioned file, migrations, env overrides and default folders."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import sys
import typing
from pathlib import Path

import platformdirs
import pytest
import structlog

from morag_worker.core.config.settings import (
    SETTINGS_VERSION,
    InvalidHubUrl,
    Settings,
    SettingsError,
    SettingsStore,
    apply_env,
    default_log_dir,
    default_temp_dir,
    migrate,
    normalise_hub_url,
)
from morag_worker.core.naming import WorkerType

pytestmark = pytest.mark.unit

ABS_TMP = str(Path("/var/tmp/morag").resolve()) if sys.platform != "win32" else "C:\\Temp\\morag"


def test_defaults() -> None:
    settings = Settings()
    assert settings.hub_url == "http://127.0.0.1:8700"
    assert settings.worker_type is WorkerType.GPU
    assert settings.concurrency == 1
    assert settings.gpu_index is None
    assert settings.start_working_on_launch is False
    assert settings.start_at_login is False
    assert settings.temp_dir is None
    assert settings.snooze_until is None


def test_no_field_can_hold_a_key() -> None:
    hints = typing.get_type_hints(Settings)
    # Adding a field means adding it here, after checking that it can never hold a secret.
    assert hints == {
        "hub_url": str,
        "worker_type": WorkerType,
        "concurrency": int,
        "gpu_index": int | None,
        "start_working_on_launch": bool,
        "start_at_login": bool,
        "temp_dir": str | None,
        "snooze_until": float | None,
        "gpu_temp_limit_c": int | None,
        "gpu_temp_resume_c": int | None,
        "idle_minutes": int,
        "pause_on_battery": bool,
        "time_windows": str,
        "pause_when_fullscreen": bool,
    }
    secretish = re.compile(r"key|secret|token|pass|credential|auth", re.IGNORECASE)
    assert not [f.name for f in dataclasses.fields(Settings) if secretish.search(f.name)]
    # The free-text fields cannot smuggle one either: the URL refuses credentials and
    # queries, the folder must be an absolute path, the time windows must parse as windows.
    for url in ("http://worker:mk_secret@hub", "http://hub/?api_key=mk_secret", "http://hub/#mk_secret"):
        with pytest.raises(SettingsError):
            Settings(hub_url=url)
    with pytest.raises(SettingsError):
        Settings(temp_dir="mk_Q2hhbmdlTWVfMTIzNDU2Nzg5MGFiY2RlZmdoaWprbA")
    with pytest.raises(SettingsError):
        Settings(time_windows="mk_Q2hhbmdlTWVfMTIzNDU2Nzg5MGFiY2RlZmdoaWprbA")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8700", "http://127.0.0.1:8700"),
        ("  HTTPS://Hub.Example.ORG:443/  ", "https://hub.example.org"),
        ("http://hub.example:80/morag//", "http://hub.example/morag"),
        ("https://hub.example:8443/Base", "https://hub.example:8443/Base"),
        ("http://[::1]:8700/", "http://[::1]:8700"),
    ],
)
def test_normalise_hub_url(given: str, expected: str) -> None:
    assert normalise_hub_url(given) == expected
    assert normalise_hub_url(expected) == expected


@pytest.mark.parametrize(
    "bad",
    ["", "hub.example", "ftp://hub", "http://", "http://u:p@hub", "http://hub:99999", "http://h?", "h://x"],
)
def test_normalise_hub_url_refuses(bad: str) -> None:
    with pytest.raises(InvalidHubUrl):
        normalise_hub_url(bad)


@pytest.mark.parametrize(
    "changes",
    [
        {"concurrency": 0},
        {"concurrency": True},
        {"concurrency": 1.5},
        {"gpu_index": -1},
        {"gpu_index": "0"},
        {"worker_type": "tpu"},
        {"start_at_login": "yes"},
        {"temp_dir": "relative/dir"},
        {"snooze_until": float("nan")},
        {"snooze_until": "tomorrow"},
        {"hub_url": 8700},
    ],
)
def test_invalid_values_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(SettingsError):
        Settings(**changes)  # type: ignore[arg-type]


def test_values_are_normalised() -> None:
    settings = Settings(hub_url="HTTP://LOCALHOST:80/", worker_type="cpu", snooze_until=5)  # type: ignore[arg-type]
    assert settings.hub_url == "http://localhost"
    assert settings.worker_type is WorkerType.CPU
    assert settings.snooze_until == 5.0 and isinstance(settings.snooze_until, float)


# -- the file -------------------------------------------------------------------------------


def test_nothing_is_created_until_save(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path / "cfg")
    assert store.load() == Settings()
    assert not (tmp_path / "cfg").exists()


def test_default_config_dir_is_platformdirs_and_untouched() -> None:
    store = SettingsStore()
    assert store.config_dir == platformdirs.user_config_path("morag-worker")
    assert store.path.name == "settings.json"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path / "cfg" / "nested")
    settings = Settings(
        hub_url="https://hub.example",
        worker_type=WorkerType.CPU,
        concurrency=3,
        gpu_index=1,
        start_working_on_launch=True,
        start_at_login=True,
        temp_dir=ABS_TMP,
        snooze_until=1_700_000_000.5,
    )
    store.save(settings)
    assert store.load() == settings
    data = json.loads(store.path.read_text())
    assert data["version"] == SETTINGS_VERSION
    assert data["worker_type"] == "cpu"
    assert sorted(p.name for p in store.config_dir.iterdir()) == ["settings.json"]  # no temp file left


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_save_is_private(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path / "cfg")
    store.save(Settings())
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.config_dir.stat().st_mode) == 0o700
    store.path.chmod(0o644)
    store.save(Settings(concurrency=2))  # replaced, not rewritten in place: private again
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_save_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SettingsStore(tmp_path)
    store.save(Settings(concurrency=2))

    def fail_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(SettingsError) as caught:
        store.save(Settings(concurrency=5))
    assert str(store.path) in str(caught.value) and "No space left" in str(caught.value)
    monkeypatch.undo()
    assert store.load().concurrency == 2  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]  # the temp file is gone


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON (line 1, column 2"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"version": 1, "concurrency": 0}', "concurrency must be a whole number"),
        ('{"version": 1, "hub_url": "ftp://x"}', "hub URL"),
        ('{"version": "one"}', "version must be a whole number"),
        ('{"version": 99}', "newer MoRAG Worker"),
    ],
)
def test_bad_files_give_a_settings_error_naming_the_file(tmp_path: Path, content: str, expected: str) -> None:
    store = SettingsStore(tmp_path)
    store.path.write_text(content)
    with pytest.raises(SettingsError) as caught:
        store.load()
    error = caught.value
    assert expected in error.message
    assert error.path == store.path and str(store.path) in str(error)
    assert error.advice


def test_unreadable_file(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path)
    store.path.mkdir()  # a folder where the file should be
    with pytest.raises(SettingsError, match="cannot read the settings file"):
        store.load()


def test_unknown_keys_are_ignored_with_a_warning(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path)
    store.path.write_text(json.dumps({"version": 1, "concurrency": 2, "window_geometry": [1, 2], "zzz": 1}))
    with structlog.testing.capture_logs() as events:
        settings = store.load()
    assert settings.concurrency == 2
    warnings = [e for e in events if e["event"] == "settings.unknown_keys_ignored"]
    assert warnings and warnings[0]["keys"] == ["window_geometry", "zzz"]


def test_version_0_file_is_migrated(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path)
    old = {"main_server_url": "https://Hub.Example/", "worker_type": "cpu", "worker_concurrency": 4}
    store.path.write_text(json.dumps(old))
    settings = store.load()
    assert (settings.hub_url, settings.worker_type, settings.concurrency) == (
        "https://hub.example",
        WorkerType.CPU,
        4,
    )
    store.save(settings)
    assert json.loads(store.path.read_text())["version"] == SETTINGS_VERSION


def test_migrate_is_pure_and_idempotent() -> None:
    old = {"main_server_url": "http://h", "worker_concurrency": 2}
    upgraded = migrate(old)
    assert old == {"main_server_url": "http://h", "worker_concurrency": 2}
    assert upgraded == {"hub_url": "http://h", "concurrency": 2, "version": SETTINGS_VERSION}
    assert migrate(upgraded) == upgraded


# -- environment ----------------------------------------------------------------------------


def test_apply_env_overrides() -> None:
    base = Settings(concurrency=2)
    env = {
        "MAIN_SERVER_URL": "https://Hub.Example:443/",
        "WORKER_TYPE": "CPU",
        "WORKER_CONCURRENCY": " 3 ",
        "TEMP_DIR": ABS_TMP,
        "MORAG_API_KEY": "mk_not_a_setting",
    }
    settings = apply_env(base, env)
    assert settings == Settings(
        hub_url="https://hub.example", worker_type=WorkerType.CPU, concurrency=3, temp_dir=ABS_TMP
    )
    assert base == Settings(concurrency=2)  # pure


def test_apply_env_without_variables_keeps_settings() -> None:
    base = Settings(concurrency=2)
    assert apply_env(base, {}) is base
    assert apply_env(base, {"WORKER_TYPE": "", "WORKER_CONCURRENCY": "  ", "TEMP_DIR": ""}) is base


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAIN_SERVER_URL", "hub.example:8700"),
        ("MAIN_SERVER_URL", "https://worker:key@hub.example"),
        ("WORKER_TYPE", "tpu"),
        ("WORKER_CONCURRENCY", "0"),
        ("WORKER_CONCURRENCY", "-2"),
        ("WORKER_CONCURRENCY", "two"),
        ("WORKER_CONCURRENCY", "1.5"),
        ("TEMP_DIR", "relative/tmp"),
    ],
)
def test_apply_env_refuses_bad_values(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        apply_env(Settings(), {name: value})
    assert caught.value.message.startswith(name)


def test_default_dirs_are_platformdirs_and_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name))
    log_dir, temp_dir = default_log_dir(), default_temp_dir()
    assert log_dir == platformdirs.user_log_path("morag-worker")
    assert temp_dir == platformdirs.user_cache_path("morag-worker") / "tasks"
    assert list(tmp_path.iterdir()) == []
