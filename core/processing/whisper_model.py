"""Which speech model the worker transcribes with, and where its folder comes from.

``MORAG_WHISPER_MODEL`` is a folder on this machine or a model name (``small``, ``large-v3``,
``Systran/faster-whisper-small``). A name is looked up, in this order, in the platform cache
(``<user cache>/morag-worker/models/<name>``, filled once), on the hub (``GET /api/v1/models/<name>``,
fetched through the same resumable, verified transfer as task inputs, so a worker without internet
can use it), and last online through faster-whisper's own download. ``MORAG_WHISPER_DEVICE`` and
``MORAG_WHISPER_COMPUTE_TYPE`` pick where and how it runs.

Runs on the task's thread, once per worker process (the transcriber keeps the loaded model).
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs
import structlog

from morag_worker.core.config.settings import APP_DIR_NAME
from morag_worker.core.processing.base import ProcessingError, ProgressFn
from morag_worker.core.units import human_bytes

__all__ = [
    "ENV_COMPUTE_TYPE",
    "ENV_DEVICE",
    "ENV_MODEL",
    "ModelOrigin",
    "ModelResolver",
    "ModelUnavailable",
    "ResolvedModel",
    "WhisperSettings",
    "model_cache_dir",
]

log = structlog.get_logger(__name__)

ENV_MODEL = "MORAG_WHISPER_MODEL"
ENV_DEVICE = "MORAG_WHISPER_DEVICE"
ENV_COMPUTE_TYPE = "MORAG_WHISPER_COMPUTE_TYPE"
DEVICES = ("auto", "cpu", "cuda")
GiB = 1024**3
MODEL_MAX_BYTES = 64 * GiB  # large-v3 in float32 is about 6 GiB; a task input's cap would refuse it
MODEL_DEADLINE_S = 6 * 3600.0

OnlineFetch = Callable[[str, Path], None]  # (model name, empty folder to fill)


class ModelUnavailable(ProcessingError):
    """The configured speech model is missing or unusable (the worker's fault, not the file's)."""


class ModelOrigin(enum.Enum):
    """Where a model folder was found."""

    FOLDER = "folder"  # MORAG_WHISPER_MODEL named a folder on this machine
    CACHE = "cache"  # fetched earlier into the platform cache
    HUB = "hub"  # fetched now from the hub
    ONLINE = "online"  # fetched now from the internet by faster-whisper


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    origin: ModelOrigin


@dataclass(frozen=True)
class WhisperSettings:
    """The speech model's configuration, read once from the worker's environment."""

    model: str = "small"
    device: str = "auto"
    compute_type: str = "default"
    cpu_threads: int = 0
    hub_url: str | None = None
    api_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WhisperSettings:
        """``MORAG_WHISPER_*`` plus the hub the worker serves (``MAIN_SERVER_URL``, ``MORAG_API_KEY``).

        Raises:
            ValueError: ``MORAG_WHISPER_DEVICE`` is not auto, cpu or cuda.
        """
        device = (env.get(ENV_DEVICE) or "auto").strip().lower()
        if device not in DEVICES:
            raise ValueError(f"{ENV_DEVICE} must be auto, cpu or cuda, not {device[:40]!r}")
        return cls(
            model=(env.get(ENV_MODEL) or "").strip() or cls.model,
            device=device,
            compute_type=(env.get(ENV_COMPUTE_TYPE) or "").strip().lower() or cls.compute_type,
            hub_url=(env.get("MAIN_SERVER_URL") or "").strip() or None,
            api_key=env.get("MORAG_API_KEY") or None,
        )


def model_cache_dir() -> Path:
    """``<user cache>/morag-worker/models`` (platformdirs; ``XDG_CACHE_HOME`` moves it on Linux)."""
    return platformdirs.user_cache_path(APP_DIR_NAME) / "models"


def _online_fetch(name: str, folder: Path) -> None:
    """faster-whisper's own download from the Hugging Face hub (its progress bars go to the log)."""
    from faster_whisper.utils import download_model

    download_model(name, output_dir=str(folder))


class ModelResolver:
    """Finds the folder of the configured model, fetching it once when it is a name.

    Args:
        settings: The model (folder or name) and the hub to ask.
        cache_dir: Where fetched models are kept; :func:`model_cache_dir` when None.
        online: Fills an empty folder with a named model from the internet (on a helper thread).
        poll_s: How often the bytes downloaded so far are reported while ``online`` runs.
    """

    def __init__(
        self,
        settings: WhisperSettings,
        cache_dir: Path | None = None,
        online: OnlineFetch = _online_fetch,
        poll_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.cache_dir = cache_dir if cache_dir is not None else model_cache_dir()
        self._online = online
        self.poll_s = poll_s

    def find_local(self) -> ResolvedModel | None:
        """The model's folder when it is on this machine already (a folder, or a complete cached copy)."""
        from morag_worker.core.transfer.models import MODEL_NAME

        model = self.settings.model
        folder = Path(model).expanduser()
        if folder.is_dir():
            return ResolvedModel(folder, ModelOrigin.FOLDER)
        name = model.replace("/", "--")
        cached = self.cache_dir / name
        if MODEL_NAME.fullmatch(name) and _complete(cached):
            return ResolvedModel(cached, ModelOrigin.CACHE)
        return None

    def resolve(self, progress: ProgressFn) -> ResolvedModel:
        """The model's folder; raises :class:`ModelUnavailable` with a sentence saying what was tried."""
        from morag_worker.core.transfer.models import MODEL_NAME

        model = self.settings.model
        folder = Path(model).expanduser()
        if folder.is_dir():
            return ResolvedModel(folder, ModelOrigin.FOLDER)
        if folder.is_absolute() or model.startswith((".", "~")):
            raise ModelUnavailable(f"the speech model folder {model} ({ENV_MODEL}) does not exist")
        name = model.replace("/", "--")  # Systran/faster-whisper-small -> Systran--faster-whisper-small
        if not MODEL_NAME.fullmatch(name):
            raise ModelUnavailable(f"{ENV_MODEL} is neither a folder on this machine nor a model name")
        cached = self.cache_dir / name
        if _complete(cached):
            return ResolvedModel(cached, ModelOrigin.CACHE)
        tried: list[str] = []
        if self.settings.hub_url:
            found = self._from_hub(name, cached, progress, tried)
            if found is not None:
                return found
        return self._from_online(model, cached, progress, tried)

    def _from_hub(
        self, name: str, target: Path, progress: ProgressFn, tried: list[str]
    ) -> ResolvedModel | None:
        from morag_worker.core.transfer.download_state import DownloadLimits
        from morag_worker.core.transfer.downloader import Downloader
        from morag_worker.core.transfer.errors import HubUnreachable, TransferError
        from morag_worker.core.transfer.models import ModelNotServed, describe, fetch_model, hub_manifest

        assert self.settings.hub_url is not None
        hub, key = self.settings.hub_url, self.settings.api_key
        limits = DownloadLimits(max_bytes=MODEL_MAX_BYTES, deadline_s=MODEL_DEADLINE_S)
        with Downloader(limits=limits, hub_origin=hub, api_key=key) as downloader:
            try:
                manifest = hub_manifest(downloader, hub, name, key)
            except ModelNotServed:
                tried.append("the hub does not serve it")
                return None
            except TransferError as exc:
                tried.append(f"the hub could not be asked for it ({exc})")
                return None
            log.info("whisper.model_fetch", model=name, origin="hub", bytes=manifest.size)
            message = f"fetching the speech model {name} from the hub"
            progress(0, None, f"{message}: {describe(manifest, 0)}")
            try:
                fetch_model(
                    downloader,
                    hub,
                    manifest,
                    target,
                    progress=lambda done, _total: progress(0, None, f"{message}: {describe(manifest, done)}"),
                )
            except HubUnreachable:
                raise  # an outage, not the task's fault: the task goes back to the queue
            except TransferError as exc:
                raise ModelUnavailable(
                    f"the speech model {name} could not be fetched from the hub: {exc}"
                ) from exc
        log.info("whisper.model_fetched", model=name, origin="hub", path=str(target))
        return ResolvedModel(target, ModelOrigin.HUB)

    def _from_online(self, model: str, target: Path, progress: ProgressFn, tried: list[str]) -> ResolvedModel:
        """Download on a helper thread, reporting the bytes so far from this (the task's) thread.

        The helper fills a staging folder and renames it into the cache itself, so a task cancelled
        meanwhile stops waiting while the download still completes the cache for the next task.
        """
        message = f"downloading the speech model {model} (once; it is kept in the cache)"
        progress(0, None, message)
        log.info("whisper.model_fetch", model=model, origin="online")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        outcome: list[BaseException | None] = []
        helper = threading.Thread(
            target=lambda: outcome.append(self._fill(model, staging, target)),
            name="whisper-model-download",
            daemon=True,
        )
        helper.start()
        while not outcome:
            helper.join(self.poll_s)
            if not outcome:
                progress(0, None, f"{message}: {human_bytes(_bytes_under(staging))} so far")
        failure = outcome[0]
        if failure is None:
            log.info("whisper.model_fetched", model=model, origin="online", path=str(target))
            return ResolvedModel(target, ModelOrigin.ONLINE)
        if _complete(target):  # another process finished it first
            return ResolvedModel(target, ModelOrigin.CACHE)
        tried.append(f"downloading it failed ({type(failure).__name__}: {str(failure).strip()[:200]})")
        raise ModelUnavailable(
            f"the speech model {model} is not on this machine and could not be fetched: "
            + "; ".join(tried)
            + f". Set {ENV_MODEL} to a model folder, or ask the hub's operator to serve it"
        ) from failure

    def _fill(self, model: str, staging: Path, target: Path) -> BaseException | None:
        """Download into ``staging``, then make it ``target``; the error, or None (on the helper thread)."""
        from morag_worker.core.transfer.models import MANIFEST_NAME, manifest_of_folder

        try:
            self._online(model, staging)
            manifest = manifest_of_folder(target.name, staging)
            if not manifest.files:
                raise RuntimeError("the download left no files")
            (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
            os.rename(staging, target)
            return None
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            return exc


def _complete(folder: Path) -> bool:
    from morag_worker.core.transfer.models import MANIFEST_NAME

    return (folder / MANIFEST_NAME).is_file()


def _bytes_under(folder: Path) -> int:
    """Bytes of every file under ``folder`` (a download's partial files included); 0 once it is gone."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total
