"""Replacing a small file all at once: a reader sees the old text or the new, never half of either.

Every file the app keeps for a person (settings, history, the autostart entry) is written this way:
a temporary file in the same folder, written and flushed to disk, given its final mode, then
``os.replace``d over the old one. A failure leaves the old file as it was and no temporary behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, text: str, *, mode: int = 0o600, folder_mode: int | None = None) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one step; raises ``OSError`` and leaves no temp file.

    ``folder_mode``: create the parent folder with this mode when it is missing (None: leave it).
    """
    if folder_mode is not None:
        path.parent.mkdir(mode=folder_mode, parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
