"""The hub's file store: uploads streamed to disk under opaque ids, one folder per user.

Ids are random tokens checked against a strict pattern, never paths; a file is found only through
its owner's folder, so one user cannot reach another's files even by guessing an id.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

from morag_worker.core.naming import validate_user_id

__all__ = ["FileStore", "OutsideStorage", "StoredFile", "UploadTooLarge", "sanitize_filename"]

_FILE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_REMEMBERED_USER_DIRS = 4096
_REMEMBERED_FILES = 4096
_UNSAFE_NAME_CHARS = re.compile(r"[^\w.\- ()\[\]]+")


class OutsideStorage(ValueError):
    """A user id whose folder would not be a direct child of the storage root."""


class UploadTooLarge(Exception):
    """An upload went over the hub's size cap; nothing of it is kept."""


def sanitize_filename(name: str | None) -> str | None:
    """A display name from a client-supplied file name: no directories, controls or odd bytes."""
    if not name:
        return None
    name = unicodedata.normalize("NFC", name).replace("\\", "/").split("/")[-1]
    name = _UNSAFE_NAME_CHARS.sub("_", name).strip(" .")
    return name[:200] or None


@dataclass(frozen=True)
class StoredFile:
    file_id: str
    user_id: str
    size: int
    sha256: str
    filename: str | None
    content_type: str | None


class FileStore:
    """Files under ``root/{user_id}/{file_id}`` with a JSON sidecar of metadata."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        # Each user's checked folder: resolving two paths (an lstat per component) was a sixth of
        # the hub's time for a small download (issue 14). Only the hub writes under the root.
        self._user_dirs: dict[str, Path] = {}
        # Sidecars are written once, at commit, and never change: each is read and parsed once.
        self._stored: dict[tuple[str, str], StoredFile] = {}

    def _user_dir(self, user_id: str) -> Path:
        """``root/{user_id}``, checked to be a direct child of the root once resolved.

        ``validate_user_id`` already refuses separators and the ids ``.`` and ``..``; this check
        keeps the store inside its root whatever the id (and whatever a symlink in it points at).
        """
        known = self._user_dirs.get(user_id)
        if known is not None:
            return known
        root = self.root.resolve()
        user_dir = (root / validate_user_id(user_id)).resolve()
        if user_dir.parent != root or user_dir == root:
            raise OutsideStorage(f"refusing a storage folder outside {root} for user id {user_id!r:.80}")
        if len(self._user_dirs) < _REMEMBERED_USER_DIRS:
            self._user_dirs[user_id] = user_dir
        return user_dir

    def new_writer(self, user_id: str) -> FileWriter:
        user_dir = self._user_dir(user_id)
        user_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return FileWriter(self, user_id, user_dir, secrets.token_urlsafe(24), self.max_bytes)

    def get(self, user_id: str, file_id: str) -> tuple[StoredFile, Path] | None:
        """The file and its path when ``user_id`` owns ``file_id``; None otherwise."""
        if not _FILE_ID_RE.fullmatch(file_id):
            return None
        try:
            user_dir = self._user_dir(user_id)
        except ValueError:
            return None
        data_path = user_dir / file_id
        stored = self._stored.get((user_id, file_id))
        if stored is None:
            try:
                meta = json.loads((user_dir / f"{file_id}.json").read_text())
            except (OSError, ValueError):
                return None
            if meta.get("user_id") != user_id:
                return None
            stored = StoredFile(**meta)
        if not data_path.is_file():
            return None
        if len(self._stored) >= _REMEMBERED_FILES:
            self._stored.clear()
        self._stored[(user_id, file_id)] = stored
        return stored, data_path


class FileWriter:
    """Receives one upload chunk by chunk, hashing and counting; commit() makes it visible."""

    def __init__(self, store: FileStore, user_id: str, user_dir: Path, file_id: str, cap: int) -> None:
        self.file_id = file_id
        self._store = store
        self._user_id = user_id
        self._path = user_dir / file_id
        self._partial = user_dir / f".{file_id}.part"
        fd = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._size = 0
        self._cap = cap

    def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._cap:
            self.abort()
            raise UploadTooLarge(f"the file is larger than this hub accepts ({self._cap} bytes)")
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self, filename: str | None, content_type: str | None) -> StoredFile:
        self._file.close()
        stored = StoredFile(
            file_id=self.file_id,
            user_id=self._user_id,
            size=self._size,
            sha256=self._hash.hexdigest(),
            filename=sanitize_filename(filename),
            content_type=(content_type or None),
        )
        os.replace(self._partial, self._path)
        meta_tmp = self._path.with_suffix(".json.part")
        # 0600 like the file itself: the sidecar names the user's file and its checksum.
        fd = os.open(meta_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as meta:
            meta.write(json.dumps(asdict(stored)))
        os.replace(meta_tmp, self._path.with_suffix(".json"))
        return stored

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._partial.unlink(missing_ok=True)
