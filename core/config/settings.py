"""Settings: the typed, versioned, non-secret configuration of a worker, and where it is saved.

This module owns ``settings.json`` under the platform's config folder (``platformdirs``), its
format version and migrations, the environment overrides of MoRAG's worker config
(``MAIN_SERVER_URL``, ``WORKER_TYPE``, ``WORKER_CONCURRENCY``, ``TEMP_DIR``), the hub URL's
normal form, and the converter child's limits (``ConverterLimits``, read from ``MORAG_*`` variables
only). It never holds a secret: the API key lives in the keychain (``credentials``).

Plain functions without threads; ``SettingsStore.load``/``save`` do file I/O and may run on any
thread. Nothing touches the file system at import or construction; only ``save`` creates folders.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs
import structlog

from morag_worker.core.config.atomic_file import write_atomically
from morag_worker.core.config.schedule import ScheduleError, parse_windows
from morag_worker.core.naming import WorkerType
from morag_worker.core.units import EnvLimit, env_limit_changes
from morag_worker.core.wording import error_words

__all__ = [
    "APP_DIR_NAME",
    "CONVERTER_LIMIT_ENV",
    "SETTINGS_FILE_NAME",
    "SETTINGS_VERSION",
    "ConverterLimits",
    "INTAKE_ENV",
    "InvalidHubUrl",
    "Settings",
    "SettingsError",
    "SettingsStore",
    "apply_env",
    "default_log_dir",
    "default_temp_dir",
    "intake_env",
    "migrate",
    "normalise_hub_url",
]

SETTINGS_VERSION = 1
SETTINGS_FILE_NAME = "settings.json"
APP_DIR_NAME = "morag-worker"
DEFAULT_HUB_URL = "http://127.0.0.1:8700"
DEFAULT_TEMP_LIMIT_C = 83  # what consumer GPUs run at under load stays below; most throttle near 87-90
DEFAULT_TEMP_HYSTERESIS_C = 5

log = structlog.get_logger(__name__)


class SettingsError(Exception):
    """Settings that cannot be read or a value that is not allowed; ``str()`` says what to do.

    Attributes:
        message: What is wrong.
        path: The settings file concerned, when there is one.
        advice: What the user can do about it.
    """

    def __init__(self, message: str, *, path: Path | None = None, advice: str = "") -> None:
        self.message = message
        self.path = path
        self.advice = advice
        where = f" ({path})" if path is not None else ""
        super().__init__(f"{message}{where}" + (f": {advice}" if advice else ""))


class InvalidHubUrl(ValueError):
    """A hub URL that is not a plain ``http(s)://host[:port][/path]``."""


def normalise_hub_url(url: str) -> str:
    """Return the canonical form of a hub URL, the one used as keychain account and in settings.

    Lower-cases scheme and host, drops a default port and trailing slashes. A URL with
    credentials, a query string or a fragment is refused, so no secret can ride along in it.

    Args:
        url: What the user typed or the environment gave, e.g. ``"HTTPS://Hub.Example:443/"``.

    Returns:
        The normal form, e.g. ``"https://hub.example"``.

    Raises:
        InvalidHubUrl: The URL is not an ``http``/``https`` URL with a host, or carries
            credentials, a query or a fragment.
    """
    text = url.strip() if isinstance(url, str) else ""
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InvalidHubUrl(f"hub URL {text!r} must look like http://host:port or https://host")
    if parts.username is not None or parts.password is not None:
        raise InvalidHubUrl("hub URL must not contain a user name or password")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise InvalidHubUrl("hub URL must not contain a query string or fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidHubUrl(f"hub URL {text!r} has an invalid port") from exc
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default_port = 80 if scheme == "http" else 443
    netloc = host if port in (None, default_port) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class Settings:
    """What a worker is configured to do. Only non-secret values; validated on construction.

    Attributes:
        hub_url: The hub's base URL, in ``normalise_hub_url`` form.
        worker_type: Which queue family to consume (``gpu-tasks-*`` or ``cpu-tasks-*``).
        concurrency: Tasks run at once (at least 1; one per GPU is the recommended setting).
        gpu_index: NVML index of the GPU to use; None means the first one.
        start_working_on_launch: Start consuming as soon as the app starts.
        start_at_login: Launch the app when the user logs in.
        temp_dir: Absolute folder for task downloads; None means ``default_temp_dir()``.
        snooze_until: Epoch seconds until which the worker stays paused; None when not snoozed.
        gpu_temp_limit_c: No new task while the GPU is at or above this (°C); None: no limit.
        gpu_temp_resume_c: Once held for heat, new tasks again below this; None: 5 °C under the limit.
        idle_minutes: Work only after this many minutes without keyboard or mouse input; 0: any time.
        pause_on_battery: No new task while a laptop runs on its battery.
        time_windows: Weekly windows to work in (``schedule.py``), e.g. ``"Mon-Fri 18:00-08:00"``;
            empty: any time.
        pause_when_fullscreen: No new task while a full-screen app or game holds the screen.
    """

    hub_url: str = DEFAULT_HUB_URL
    worker_type: WorkerType = WorkerType.GPU
    concurrency: int = 1
    gpu_index: int | None = None
    start_working_on_launch: bool = False
    start_at_login: bool = False
    temp_dir: str | None = None
    snooze_until: float | None = None
    gpu_temp_limit_c: int | None = DEFAULT_TEMP_LIMIT_C
    gpu_temp_resume_c: int | None = None
    idle_minutes: int = 0
    pause_on_battery: bool = True
    time_windows: str = ""
    pause_when_fullscreen: bool = True

    def __post_init__(self) -> None:
        try:
            normal = normalise_hub_url(self.hub_url)
        except InvalidHubUrl as exc:
            raise SettingsError(str(exc), advice="use a URL like http://127.0.0.1:8700") from exc
        object.__setattr__(self, "hub_url", normal)
        try:
            object.__setattr__(self, "worker_type", WorkerType(self.worker_type))
        except ValueError as exc:
            raise SettingsError(f"worker_type must be 'gpu' or 'cpu', not {self.worker_type!r}") from exc
        if not _is_int(self.concurrency) or self.concurrency < 1:
            raise SettingsError(f"concurrency must be a whole number of at least 1, not {self.concurrency!r}")
        if self.gpu_index is not None and (not _is_int(self.gpu_index) or self.gpu_index < 0):
            raise SettingsError(f"gpu_index must be a GPU number (0, 1, ...) or null, not {self.gpu_index!r}")
        for name in ("start_working_on_launch", "start_at_login"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{name} must be true or false, not {getattr(self, name)!r}")
        if self.temp_dir is not None and (
            not isinstance(self.temp_dir, str) or not os.path.isabs(self.temp_dir)
        ):
            raise SettingsError(f"temp_dir must be an absolute folder path or null, not {self.temp_dir!r}")
        if self.snooze_until is not None:
            if not isinstance(self.snooze_until, int | float) or isinstance(self.snooze_until, bool):
                raise SettingsError(
                    f"snooze_until must be a time in seconds or null, not {self.snooze_until!r}"
                )
            if not math.isfinite(self.snooze_until):
                raise SettingsError("snooze_until must be a finite time in seconds or null")
            object.__setattr__(self, "snooze_until", float(self.snooze_until))
        self._check_intake()

    def _check_intake(self) -> None:
        limit, resume = self.gpu_temp_limit_c, self.gpu_temp_resume_c
        if limit is not None and (not _is_int(limit) or not 40 <= limit <= 110):
            raise SettingsError(
                f"gpu_temp_limit_c must be a whole number from 40 to 110 or null, not {limit!r}"
            )
        if resume is not None:
            if not _is_int(resume) or not 20 <= resume <= 110:
                raise SettingsError(
                    f"gpu_temp_resume_c must be a whole number from 20 to 110 or null, not {resume!r}"
                )
            if limit is not None and resume >= limit:
                raise SettingsError(
                    f"gpu_temp_resume_c ({resume} °C) must be below gpu_temp_limit_c ({limit} °C)"
                )
        if not _is_int(self.idle_minutes) or not 0 <= self.idle_minutes <= 1440:
            raise SettingsError(
                f"idle_minutes must be a whole number from 0 to 1440, not {self.idle_minutes!r}"
            )
        for name in ("pause_on_battery", "pause_when_fullscreen"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{name} must be true or false, not {getattr(self, name)!r}")
        try:
            windows = parse_windows(self.time_windows)
        except ScheduleError as exc:
            raise SettingsError(
                f"time_windows: {exc}", advice="write it like 'Mon-Fri 18:00-08:00, Sat-Sun all day'"
            ) from exc
        object.__setattr__(self, "time_windows", windows.text if windows is not None else "")

    @property
    def temp_resume_c(self) -> int | None:
        """The temperature under which a worker held for heat takes new tasks again."""
        if self.gpu_temp_limit_c is None:
            return None
        if self.gpu_temp_resume_c is not None:
            return self.gpu_temp_resume_c
        return self.gpu_temp_limit_c - DEFAULT_TEMP_HYSTERESIS_C

    def to_dict(self) -> dict[str, Any]:
        """The JSON object saved to disk, ``version`` included."""
        data: dict[str, Any] = {"version": SETTINGS_VERSION}
        data.update(dataclasses.asdict(self))
        data["worker_type"] = self.worker_type.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Settings:
        """Build settings from a current-version mapping; unknown keys are ignored with a warning.

        Raises:
            SettingsError: A value has the wrong type or is out of range.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in known and k != "version")
        if unknown:
            log.warning("settings.unknown_keys_ignored", keys=unknown)
        return cls(**{k: v for k, v in data.items() if k in known})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _migrate_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    # Version 0: the unversioned file that used MoRAG's worker-config names.
    renames = {"main_server_url": "hub_url", "worker_concurrency": "concurrency"}
    return {renames.get(k, k): v for k, v in data.items()}


_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _migrate_0_to_1}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a settings mapping of any older version to ``SETTINGS_VERSION``; pure.

    A mapping without ``version`` is version 0. Each step ``n -> n+1`` runs in turn.

    Args:
        data: The decoded JSON object.

    Returns:
        A new mapping with ``version == SETTINGS_VERSION``.

    Raises:
        SettingsError: The version is not a number, or newer than this program knows.
    """
    version = data.get("version", 0)
    if not _is_int(version) or version < 0:
        raise SettingsError(f"settings version must be a whole number, not {version!r}")
    if version > SETTINGS_VERSION:
        raise SettingsError(
            f"settings were written by a newer MoRAG Worker (format {version}, this one reads up to "
            f"{SETTINGS_VERSION})",
            advice="update MoRAG Worker, or delete the file to start from defaults",
        )
    out = {k: v for k, v in data.items() if k != "version"}
    for step in range(version, SETTINGS_VERSION):
        out = _MIGRATIONS[step](out)
    out["version"] = SETTINGS_VERSION
    return out


class SettingsStore:
    """Loads and saves ``Settings`` as ``settings.json`` in one config folder.

    Args:
        config_dir: The folder (``--config-dir``); defaults to the platform's per-user config
            folder for ``morag-worker``. Nothing is created until ``save``.
    """

    def __init__(self, config_dir: Path | None = None) -> None:
        self.config_dir = (
            Path(config_dir) if config_dir is not None else platformdirs.user_config_path(APP_DIR_NAME)
        )

    @property
    def path(self) -> Path:
        """The settings file."""
        return self.config_dir / SETTINGS_FILE_NAME

    def load(self) -> Settings:
        """Read the settings file; defaults when there is none.

        Raises:
            SettingsError: The file cannot be read, is not valid JSON, or holds an invalid value.
                The error names the file and what to do.
        """
        path = self.path
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            log.debug("settings.defaults", path=str(path))
            return Settings()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(
                f"cannot read the settings file: {_os_words(exc)}",
                path=path,
                advice="check its permissions, or delete it to start from defaults",
            ) from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(
                f"the settings file is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                path=path,
                advice="fix it, or delete it to start from defaults",
            ) from exc
        if not isinstance(data, dict):
            raise SettingsError(
                "the settings file must hold a JSON object",
                path=path,
                advice="fix it, or delete it to start from defaults",
            )
        try:
            settings = Settings.from_dict(migrate(data))
        except SettingsError as exc:
            raise SettingsError(
                f"invalid settings: {exc.message}",
                path=path,
                advice=exc.advice or "fix the value, or delete the file to start from defaults",
            ) from exc
        log.debug("settings.loaded", path=str(path), version=data.get("version", 0))
        return settings

    def save(self, settings: Settings) -> None:
        """Write ``settings`` atomically (temp file + ``os.replace``), mode 0600, folder 0700.

        Raises:
            SettingsError: The folder or file cannot be written.
        """
        path = self.path
        payload = json.dumps(settings.to_dict(), indent=2, sort_keys=True) + "\n"
        try:
            write_atomically(path, payload, mode=0o600, folder_mode=0o700)
        except OSError as exc:
            raise SettingsError(
                f"cannot save the settings: {_os_words(exc)}",
                path=path,
                advice="check that the folder is writable and the disk is not full",
            ) from exc
        log.info("settings.saved", path=str(path))


def _os_words(exc: BaseException) -> str:
    """``"Permission denied"``: the system's own words for a file error, never the class name."""
    reason = getattr(exc, "strerror", None)
    return str(reason) if reason else error_words(exc)


def apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    """Return ``settings`` overridden by MoRAG's worker environment variables; pure.

    ``MAIN_SERVER_URL`` (hub URL), ``WORKER_TYPE`` (``gpu``/``cpu``), ``WORKER_CONCURRENCY``
    (whole number >= 1), ``TEMP_DIR`` (absolute path) and the rules for when to contribute
    (:data:`INTAKE_ENV`). Empty values count as unset.

    Raises:
        SettingsError: A variable holds a value that is not allowed; the message names it.
    """
    changes: dict[str, Any] = {}
    if url := env.get("MAIN_SERVER_URL", "").strip():
        try:
            changes["hub_url"] = normalise_hub_url(url)
        except InvalidHubUrl as exc:
            raise SettingsError(f"MAIN_SERVER_URL: {exc}") from exc
    if worker_type := env.get("WORKER_TYPE", "").strip():
        try:
            changes["worker_type"] = WorkerType(worker_type.lower())
        except ValueError as exc:
            raise SettingsError(f"WORKER_TYPE must be 'gpu' or 'cpu', not {worker_type!r}") from exc
    if concurrency := env.get("WORKER_CONCURRENCY", "").strip():
        if not concurrency.isdecimal() or int(concurrency) < 1:
            raise SettingsError(
                f"WORKER_CONCURRENCY must be a whole number of at least 1, not {concurrency!r}"
            )
        changes["concurrency"] = int(concurrency)
    if temp_dir := env.get("TEMP_DIR", "").strip():
        if not os.path.isabs(temp_dir):
            raise SettingsError(f"TEMP_DIR must be an absolute folder path, not {temp_dir!r}")
        changes["temp_dir"] = temp_dir
    changes.update(_intake_changes(env))
    if not changes:
        return settings
    try:
        return dataclasses.replace(settings, **changes)
    except SettingsError as exc:
        names = ", ".join(name for name, field_name in INTAKE_ENV.items() if field_name in changes)
        raise SettingsError(f"{names}: {exc.message}" if names else exc.message, advice=exc.advice) from exc


#: The rules for when to contribute, as environment variables: they override the settings file
#: (as ``WORKER_TYPE`` does), and the supervisor hands the resolved values to its worker child.
INTAKE_ENV: dict[str, str] = {
    "MORAG_GPU_TEMP_LIMIT_C": "gpu_temp_limit_c",
    "MORAG_GPU_TEMP_RESUME_C": "gpu_temp_resume_c",
    "MORAG_IDLE_MINUTES": "idle_minutes",
    "MORAG_PAUSE_ON_BATTERY": "pause_on_battery",
    "MORAG_TIME_WINDOWS": "time_windows",
    "MORAG_PAUSE_WHEN_FULLSCREEN": "pause_when_fullscreen",
}
_OFF = ("off", "none", "no", "false", "0")
_ON = ("on", "yes", "true", "1")


def _intake_changes(env: Mapping[str, str]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for name, field_name in INTAKE_ENV.items():
        raw = env.get(name)
        if raw is None or not raw.strip():
            continue
        value = raw.strip()
        if field_name == "time_windows":
            changes[field_name] = value
        elif field_name in ("pause_on_battery", "pause_when_fullscreen"):
            if value.lower() not in _ON + _OFF:
                raise SettingsError(f"{name} must be on or off, not {value[:40]!r}")
            changes[field_name] = value.lower() in _ON
        elif field_name.startswith("gpu_temp") and value.lower() in _OFF[:4]:
            changes[field_name] = None
        elif value.isdecimal():
            changes[field_name] = int(value)
        else:
            raise SettingsError(f"{name} must be a whole number, not {value[:40]!r}")
    return changes


def intake_env(settings: Settings) -> dict[str, str]:
    """``settings``' rules for when to contribute as :data:`INTAKE_ENV` variables (for the worker child)."""
    out: dict[str, str] = {}
    for name, field_name in INTAKE_ENV.items():
        value = getattr(settings, field_name)
        if isinstance(value, bool):
            out[name] = "on" if value else "off"
        elif value is None:
            out[name] = "off"
        else:
            out[name] = str(value)
    return out


def default_log_dir() -> Path:
    """The per-user log folder (``platformdirs``); not created here."""
    return platformdirs.user_log_path(APP_DIR_NAME)


def default_temp_dir() -> Path:
    """The per-user folder for task downloads (under the cache folder, not ``/tmp``); not created here."""
    return platformdirs.user_cache_path(APP_DIR_NAME) / "tasks"


MiB = 1024 * 1024


@dataclass(frozen=True)
class ConverterLimits:
    """What one conversion may use in its converter child (``core/processing/sandbox.py``).

    Defaults, and why:

    - ``memory_mb`` 2048: memory the conversion may add to what the child starts with (on Linux the
      child's address space, ``RLIMIT_AS``, is set to its size at start plus this; on Windows the Job
      object's per-process limit is this plus 256 MB for the fresh interpreter). Real documents need
      far less (``bench/converter_child.py``: the samples, a 36-page PDF and a 20,000-row XLSX each add
      under 10 MB resident), while a bomb needs far more (a 4 MB CSV of empty cells: over 100 MB).
      Address space runs ahead of resident memory (allocator arenas, thread stacks, parsers that read
      a whole file), hence the generous margin; a worker on a small machine may lower it.
    - ``deadline_s`` 1800: wall time of one conversion, well under Celery's soft time limit (7200 s),
      so a slow bomb ends as a clear ``success: false`` rather than a killed pool child.
    - ``max_output_bytes`` 64 MiB (``MORAG_MAX_OUTPUT_MB``): the markdown one task may return; the
      result travels through Redis and the hub, and a 34 KB PDF can expand to hundreds of MB of text.
    """

    memory_bytes: int = 2048 * MiB
    deadline_s: float = 1800.0
    max_output_bytes: int = 64 * MiB

    @property
    def memory_mb(self) -> int:
        return self.memory_bytes // MiB

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConverterLimits:
        """The defaults, with any of :data:`CONVERTER_LIMIT_ENV` set in ``env`` applied.

        Raises:
            SettingsError: A variable is not a positive number (its name is in the message).
        """
        try:
            return dataclasses.replace(cls(), **env_limit_changes(env, CONVERTER_LIMIT_ENV))
        except ValueError as exc:
            raise SettingsError(str(exc)) from None


CONVERTER_LIMIT_ENV: dict[str, EnvLimit] = {
    "MORAG_CONVERTER_MEMORY_MB": EnvLimit("memory_bytes", MiB),
    "MORAG_CONVERTER_DEADLINE_S": EnvLimit("deadline_s"),
    "MORAG_MAX_OUTPUT_MB": EnvLimit("max_output_bytes", MiB),
}
