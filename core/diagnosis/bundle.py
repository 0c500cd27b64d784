"""``morag-worker diagnostics``: one zip with what support needs, and no secret in it.

Versions, settings (the parsed values and the raw file), the environment variables the worker
reads, the last part of each log file, the self-test's report and the GPU facts. Every file goes
through one ``Scrubber`` before it is written, and the zip is written to a temporary name and moved
into place, mode 0600. Blocks; runs on the caller's thread.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from morag_worker import __version__
from morag_worker.core.config.settings import SettingsError, SettingsStore
from morag_worker.core.diagnosis.local_checks import gpu_facts
from morag_worker.core.diagnosis.report import SelfTestReport
from morag_worker.core.diagnosis.scrub import Scrubber
from morag_worker.core.supervisor.gpu import GpuInfo

__all__ = ["BUNDLE_FORMAT", "BundleContents", "environment_facts", "log_tail", "versions", "write_bundle"]

BUNDLE_FORMAT = "morag-worker-diagnostics"
DEFAULT_LOG_KB = 256
MAX_LOG_FILES = 8
_PACKAGES = (
    "celery",
    "kombu",
    "redis",
    "requests",
    "keyring",
    "markitdown",
    "faster-whisper",
    "nvidia-ml-py",
    "PySide6",
)
_ENV_PREFIXES = ("MORAG_", "REDIS_", "CELERY_", "WORKER_", "CUDA_", "NVIDIA_", "QT_", "XDG_SESSION")
_ENV_NAMES = (
    "MAIN_SERVER_URL",
    "TEMP_DIR",
    "PYTHON_KEYRING_BACKEND",
    "DBUS_SESSION_BUS_ADDRESS",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "LANG",
)
_SECRET_WORDS = ("KEY", "PASSWORD", "PASSWD", "SECRET", "TOKEN", "AUTH", "CREDENTIAL")


def versions() -> dict[str, Any]:
    """The app, Python, the OS and the libraries that matter to a worker (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {
        "app": __version__,
        "python": sys.version,
        "executable": sys.executable,
        "os": platform.platform(),
        "machine": platform.machine(),
        "packages": found,
    }


def environment_facts(env: Mapping[str, str]) -> dict[str, str]:
    """The variables a worker reads; any whose name suggests a secret only says that it is set."""
    chosen: dict[str, str] = {}
    for name in sorted(env):
        if not (name.startswith(_ENV_PREFIXES) or name in _ENV_NAMES):
            continue
        secret = any(word in name.upper() for word in _SECRET_WORDS)
        chosen[name] = "(set; value removed)" if secret and env[name] else env[name]
    return chosen


def log_tail(path: Path, limit_bytes: int) -> bytes:
    """The last ``limit_bytes`` of ``path``, starting at a whole line (a line cut in half could leave a
    fragment of a secret that no longer matches it)."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size <= limit_bytes:
            handle.seek(0)
            return handle.read()
        handle.seek(size - limit_bytes)
        data = handle.read()
    newline = data.find(b"\n")
    return data[newline + 1 :] if newline >= 0 else b""


def _log_files(log_dirs: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for folder in log_dirs:
        try:
            files += [p for p in folder.iterdir() if p.is_file() and ".log" in p.name]
        except OSError:
            continue
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return files[:MAX_LOG_FILES]


@dataclass
class BundleContents:
    """What goes into a bundle; ``secrets`` are removed from every file, in all their forms."""

    settings_store: SettingsStore
    env: Mapping[str, str]
    log_dirs: Sequence[Path]
    gpus: Sequence[GpuInfo]
    report: SelfTestReport | None
    secrets: Sequence[str] = field(default_factory=list)
    log_kb: int = DEFAULT_LOG_KB


def _settings(store: SettingsStore) -> dict[str, Any]:
    facts: dict[str, Any] = {"path": str(store.path), "exists": store.path.is_file()}
    try:
        facts["settings"] = store.load().to_dict()
    except SettingsError as exc:
        facts["error"] = str(exc)
    try:
        facts["raw"] = store.path.read_text(encoding="utf-8", errors="replace") if facts["exists"] else None
    except OSError as exc:
        facts["raw_error"] = str(exc)
    return facts


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def write_bundle(target: Path, contents: BundleContents) -> list[str]:
    """Write the zip to ``target`` (replacing it); returns the names of the files in it."""
    scrub = Scrubber(contents.secrets)
    files: dict[str, str] = {
        "versions.json": _json(versions()),
        "settings.json": _json(
            {"file": _settings(contents.settings_store), "environment": environment_facts(contents.env)}
        ),
        "gpu.json": _json(
            {
                "gpus": gpu_facts(contents.gpus),
                "nvml_installed": importlib.util.find_spec("pynvml") is not None,
                "cuda_visible_devices": contents.env.get("CUDA_VISIBLE_DEVICES"),
            }
        ),
        "self-test.json": _json(
            contents.report.to_json()
            if contents.report is not None
            else {"skipped": "--no-self-test was given"}
        ),
    }
    for index, path in enumerate(_log_files(contents.log_dirs)):
        try:
            files[f"logs/{index:02d}-{path.name}"] = scrub.data(log_tail(path, contents.log_kb * 1024))
        except OSError as exc:
            files[f"logs/{index:02d}-{path.name}.error"] = f"cannot read {path}: {exc}\n"
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": 1,
        "created_at": datetime.now(UTC).isoformat(),
        "app_version": __version__,
        "files": sorted(files),
        "log_kb_per_file": contents.log_kb,
        "note": "secrets (API keys, passwords in URLs, Authorization headers) were removed from every file",
    }
    files["manifest.json"] = _json(manifest)
    target = Path(target)
    partial = target.with_name(f".{target.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as bundle:
            for name, text in files.items():
                bundle.writestr(scrub.text(name), scrub.text(text))
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return sorted(files)
