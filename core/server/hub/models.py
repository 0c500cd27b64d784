"""The model folders the hub serves to workers (``--models-dir``), so that workers without internet
fetch a speech model from the hub like a task's input.

``<models-dir>/<name>/`` is one model (its plain files; see :mod:`morag_worker.core.transfer.models`).
A folder's manifest is hashed once and kept while no file's size or modification time changes.
Runs on the hub's thread pool (hashing a large model takes seconds).
"""

from __future__ import annotations

import threading
from pathlib import Path

from morag_worker.core.transfer.models import MODEL_NAME, ModelManifest, manifest_of_folder

__all__ = ["ModelShelf"]

Stamp = tuple[tuple[str, int, int], ...]


class ModelShelf:
    """The models under one folder, by name; None for a name it does not hold."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._manifests: dict[str, tuple[Stamp, ModelManifest]] = {}
        self._lock = threading.Lock()

    def folder(self, name: str) -> Path | None:
        if not MODEL_NAME.fullmatch(name):
            return None
        folder = self.root / name
        return folder if folder.is_dir() else None

    def manifest(self, name: str) -> ModelManifest | None:
        folder = self.folder(name)
        if folder is None:
            return None
        stamp = _stamp(folder)
        with self._lock:
            known = self._manifests.get(name)
        if known is not None and known[0] == stamp:
            return known[1]
        manifest = manifest_of_folder(name, folder)
        if not manifest.files:
            return None
        with self._lock:
            self._manifests[name] = (stamp, manifest)
        return manifest

    def file(self, name: str, file_name: str) -> tuple[Path, str] | None:
        """The path of one file of model ``name`` and its SHA-256, or None."""
        manifest = self.manifest(name)
        if manifest is None:
            return None
        for item in manifest.files:
            if item.name == file_name:
                return self.root / name / item.name, item.sha256
        return None


def _stamp(folder: Path) -> Stamp:
    entries = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and MODEL_NAME.fullmatch(path.name):
            info = path.stat()
            entries.append((path.name, info.st_size, info.st_mtime_ns))
    return tuple(entries)
