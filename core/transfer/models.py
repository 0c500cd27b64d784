"""Model folders served by the hub: their manifest, and the worker's verified fetch of one.

The hub lists a model folder as a :class:`ModelManifest` (``GET /api/v1/models/{name}``: each file's
name, size and SHA-256) and serves each file at ``/api/v1/models/{name}/{file}``. A worker that has
no internet fetches a model from there with :func:`fetch_model`: every file through the same
:class:`~morag_worker.core.transfer.downloader.Downloader` as a task's input (resumed when cut,
checked against the manifest's size and SHA-256), into a staging folder that becomes the model
folder only once every file is in. A model is a flat folder: no subfolders, plain file names.

Runs on the calling (task) thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from morag_worker.core.transfer.downloader import Downloader
from morag_worker.core.transfer.errors import DownloadFailed, TransferError
from morag_worker.core.units import human_bytes

__all__ = [
    "MANIFEST_NAME",
    "MODEL_NAME",
    "ModelFile",
    "ModelManifest",
    "ModelNotServed",
    "fetch_model",
    "hub_manifest",
    "manifest_of_folder",
]

# A model's name on the hub, and each of its files' names: one path segment, no "..", no hidden files.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MANIFEST_NAME = ".morag-model.json"  # written last into a fetched folder: its presence means complete
HASH_CHUNK = 1024 * 1024

FetchProgress = Callable[[int, int], None]  # (bytes done, bytes in all)


class ModelNotServed(TransferError):
    """The hub has no model of that name (or serves no models at all)."""


@dataclass(frozen=True)
class ModelFile:
    """One file of a model folder."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelManifest:
    """What a model folder holds; the hub's answer to ``GET /api/v1/models/{name}``."""

    name: str
    files: tuple[ModelFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelManifest:
        """Parse and check a manifest; ValueError when a name, size or hash is not what a model has."""
        name = raw.get("name")
        if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
            raise ValueError("the manifest names no valid model")
        files: list[ModelFile] = []
        for entry in raw.get("files") or ():
            file_name, size, sha = entry.get("name"), entry.get("size"), entry.get("sha256")
            if not isinstance(file_name, str) or not MODEL_NAME.fullmatch(file_name):
                raise ValueError("the manifest lists a file whose name is not a plain file name")
            if not isinstance(size, int) or size < 0:
                raise ValueError(f"the manifest gives {file_name} no valid size")
            if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise ValueError(f"the manifest gives {file_name} no valid SHA-256")
            files.append(ModelFile(file_name, size, sha))
        if not files or len({f.name for f in files}) != len(files):
            raise ValueError("the manifest lists no files, or one file twice")
        return cls(name, tuple(files))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_of_folder(name: str, folder: Path) -> ModelManifest:
    """The manifest of a model folder on this machine (its plain files; hashes them all)."""
    files = tuple(
        ModelFile(p.name, p.stat().st_size, file_sha256(p))
        for p in sorted(folder.iterdir())
        if p.is_file() and MODEL_NAME.fullmatch(p.name)
    )
    return ModelManifest(name, files)


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def hub_manifest(downloader: Downloader, hub_url: str, name: str, api_key: str | None) -> ModelManifest:
    """Ask the hub what model ``name`` holds.

    Raises:
        ModelNotServed: The hub answered 404.
        DownloadFailed: The hub could not be asked, or its answer was not a manifest.
    """
    url = f"{hub_url.rstrip('/')}/api/v1/models/{quote(name, safe='')}"
    try:
        response = downloader.session.get(
            url,
            headers=_auth(api_key),
            timeout=(downloader.limits.connect_timeout, downloader.limits.read_timeout),
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise DownloadFailed(
            f"The hub could not be asked for the model {name!r} ({type(exc).__name__})."
        ) from None
    with response:
        if response.status_code == 404:
            raise ModelNotServed(f"The hub serves no model named {name!r}.")
        if response.status_code != 200:
            raise DownloadFailed(
                f"The hub answered {response.status_code} when asked for the model {name!r}.",
                status=response.status_code,
            )
        try:
            manifest = ModelManifest.from_dict(response.json())
        except (ValueError, AttributeError) as exc:
            raise DownloadFailed(f"The hub's description of the model {name!r} is unusable: {exc}.") from None
    if manifest.name != name:
        raise DownloadFailed(f"The hub described the model {manifest.name!r} when asked for {name!r}.")
    return manifest


def fetch_model(
    downloader: Downloader,
    hub_url: str,
    manifest: ModelManifest,
    target: Path,
    *,
    progress: FetchProgress | None = None,
) -> Path:
    """Fetch every file of ``manifest`` from the hub into the folder ``target`` and return it.

    The files land in a staging folder beside ``target`` (each verified by size and SHA-256), the
    manifest is written last, and the staging folder is renamed to ``target``. When another process
    finished the same model first, its folder is kept and this one dropped.

    The downloader holds the API key and gives it to the hub's origin only.

    Raises:
        TransferError: A file could not be fetched or did not match the manifest.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{manifest.name}-", dir=target.parent))
    base = f"{hub_url.rstrip('/')}/api/v1/models/{quote(manifest.name, safe='')}"
    total, before = manifest.size, 0
    try:
        for index, item in enumerate(manifest.files):
            slot = staging / f".part{index}"
            slot.mkdir(mode=0o700)

            def report(done: int, _total: int | None, before: int = before) -> None:
                if progress is not None:
                    progress(before + done, total)

            got = downloader.download(
                f"{base}/{quote(item.name, safe='')}",
                slot,
                expected_sha256=item.sha256,
                expected_size=item.size,
                progress=report,
            )
            os.replace(got.path, staging / item.name)
            slot.rmdir()
            before += item.size
        (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        if progress is not None:
            progress(total, total)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / MANIFEST_NAME).is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another process finished it first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def describe(manifest: ModelManifest, done: int) -> str:
    """``12.0 MiB of 40.0 MiB`` for a fetch in progress."""
    return f"{human_bytes(done)} of {human_bytes(manifest.size)}"
