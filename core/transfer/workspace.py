"""Per-task scratch directories: created private (0700) under a private root, emptied on exit.

A task's input lands in ``<root>/task-<safe id>-<random>/input.bin``; the task id only contributes a
sanitised, length-capped label, never a path. On exit the workspace's files are removed and the
empty directory is renamed ``.spare-<pid>-<random>``, for this process's next task to rename back:
two renames cost a tenth of a ``mkdir`` and an ``rmdir``, which on the bench's disk took 0.3 ms of a
task's 3 (issue 14). A workspace that will not empty plainly (a subdirectory) is removed whole, and
:func:`release_spare_workspaces` removes the spares when the process stops. ``finally`` does not run
on SIGKILL or power loss, so the worker calls :func:`sweep_stale_workspaces` at start-up; and each
workspace names the process that owns it (``.owner``: pid and host), so that when a pool process is
killed under a task, the worker's main process removes its workspace (and spares) with
:func:`sweep_orphaned_workspaces` when it learns of the death (a process killed on a time limit dies
just after: then at the next task). Also home of :func:`safe_display_name`, the only way a
server-supplied file name reaches the rest of the app (as a label, never a path).

Runs on whichever thread runs the task; the spares are the one thing shared between threads (a
threads pool runs several tasks in one process), under a lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import threading
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

__all__ = [
    "TaskWorkspace",
    "pid_alive",
    "release_spare_workspaces",
    "safe_display_name",
    "sweep_orphaned_workspaces",
    "sweep_stale_workspaces",
]

log = structlog.get_logger(__name__)

_PREFIX = "task-"
_SPARE_PREFIX = ".spare-"  # an emptied workspace waiting for its process's next task
_MAX_SPARES = 4  # per process and root: a threads pool may run a few tasks at once
_OWNER = ".owner"  # "<pid> <host name>" of the process the workspace belongs to
_O_BINARY = getattr(os, "O_BINARY", 0)
_DIR_FD = os.name == "posix" and os.unlink in os.supports_dir_fd and os.scandir in os.supports_fd
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")
_FORBIDDEN_NAME_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{i}" for i in range(10)}
    | {f"LPT{i}" for i in range(10)}
    | {"COM¹", "COM²", "COM³", "LPT¹", "LPT²", "LPT³"}
)
MAX_DISPLAY_NAME = 120


def _safe_label(task_id: str) -> str:
    label = _UNSAFE_ID.sub("_", str(task_id))[:64].lstrip(".")
    return label or "task"


def _ensure_private_root(root: Path) -> None:
    """Make ``root`` if missing; refuse one that is not a directory of ours; tighten it to 0700.

    Checked at every task (two system calls): the default root is under the shared ``/tmp``, where
    another user could make it after a cleaner removed ours.
    """
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"workspace root {root} is not a directory")
    if os.name == "posix" and info.st_uid != os.geteuid():
        raise PermissionError(f"workspace root {root} belongs to another user")
    if os.name == "posix" and stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(root, 0o700)


def _unlink_files(path: Path, keep: str | None = None) -> None:
    """Unlink the plain files directly in ``path`` (but ``keep``).

    Raises:
        OSError: ``path`` is a symlink or not a directory, an entry is a directory (``keep`` or
            not), or one would not go; files unlinked before that stay unlinked.
    """
    if not _DIR_FD:  # Windows: no descriptor of a directory; no symlink without privileges either
        with os.scandir(path) as scan:
            for entry in scan:
                if entry.is_dir(follow_symlinks=False):
                    raise IsADirectoryError(entry.path)
                if entry.name != keep:
                    os.unlink(entry.path)
        return
    # Through a descriptor opened without following a symlink: a workspace swapped for a link to
    # somewhere else is refused, never emptied.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.scandir(fd) as scan:
            for entry in scan:
                if entry.is_dir(follow_symlinks=False):
                    raise IsADirectoryError(os.path.join(path, entry.name))
                if entry.name != keep:
                    os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> bool:
    """Remove a workspace; True when it is gone.

    A workspace holds a few plain files, so they are unlinked directly; ``shutil.rmtree`` (its
    descriptor-based walk costs about three times as much) takes over for anything else: a
    subdirectory, a read-only file on Windows, an entry that would not go, a symlink (which it
    refuses).
    """
    try:
        _unlink_files(path)
        os.rmdir(path)
        return True
    except FileNotFoundError:
        if not os.path.lexists(path):
            return True
    except OSError:
        pass
    return _remove_tree_thoroughly(path)


def _remove_tree_thoroughly(path: Path) -> bool:
    def _retry_writable(func: Any, failed: str, _exc: Any) -> None:
        # Read-only entries (Windows) cannot be unlinked until they are writable again.
        os.chmod(failed, stat.S_IWRITE | stat.S_IREAD | stat.S_IEXEC)
        func(failed)

    try:
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=_retry_writable)
        else:
            shutil.rmtree(path, onerror=_retry_writable)
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.warning("workspace.cleanup_failed", path=str(path), error=exc.strerror or str(exc))
        return False
    return True


def _make_private_dir(root: Path, prefix: str) -> Path:
    """Create ``root/<prefix><random>`` with mode 0700, as ``mkdtemp`` does, at half its cost."""
    for _attempt in range(100):
        path = os.path.join(root, prefix + secrets.token_hex(5))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return Path(path)
    raise FileExistsError(errno.EEXIST, "no unused workspace name found", str(root))


class _Spares:
    """Emptied workspaces by (root, pid): a forked process never takes its parent's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: dict[tuple[str, int], list[str]] = {}
        if hasattr(os, "register_at_fork"):  # a child forked while another thread held the lock
            os.register_at_fork(after_in_child=self._new_lock)

    def _new_lock(self) -> None:
        self._lock = threading.Lock()

    def take(self, root: Path) -> str | None:
        with self._lock:
            waiting = self._paths.get((str(root), os.getpid()))
            return waiting.pop() if waiting else None

    def has_room(self, root: Path) -> bool:
        with self._lock:
            return len(self._paths.get((str(root), os.getpid()), ())) < _MAX_SPARES

    def give(self, root: Path, path: str) -> bool:
        with self._lock:
            waiting = self._paths.setdefault((str(root), os.getpid()), [])
            if len(waiting) >= _MAX_SPARES:
                return False
            waiting.append(path)
            return True

    def take_all(self) -> list[str]:
        """This process's spares under every root (the others are a parent's: not ours to remove)."""
        pid = os.getpid()
        with self._lock:
            mine = [key for key in self._paths if key[1] == pid]
            return [path for key in mine for path in self._paths.pop(key)]


_SPARES = _Spares()


def release_spare_workspaces() -> None:
    """Remove this process's spare workspaces (it is stopping)."""
    for path in _SPARES.take_all():
        _remove_tree(Path(path))


class TaskWorkspace:
    """A private directory for one task, emptied on exit whatever happens (see the module docstring).

    Example::

        with TaskWorkspace(temp_root, task_id) as ws:
            downloaded = downloader.download(url, ws.path)

    Args:
        root: The app-owned directory holding every task's workspace; created (0700) if missing,
            tightened to 0700 if looser.
        task_id: Only used as a sanitised label in the directory's name.
    """

    def __init__(self, root: Path, task_id: str) -> None:
        self.root = Path(root)
        self.label = _safe_label(task_id)
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        """The workspace directory (only while inside the ``with`` block)."""
        if self._path is None:
            raise RuntimeError("TaskWorkspace.path is only available inside its with block")
        return self._path

    def __enter__(self) -> TaskWorkspace:
        # Created 0700 atomically, with a unique name even when the same task id is delivered twice.
        prefix = f"{_PREFIX}{self.label}-"
        _ensure_private_root(self.root)
        if (spare := _SPARES.take(self.root)) is not None:
            path = os.path.join(self.root, prefix + secrets.token_hex(5))
            try:
                os.rename(spare, path)
            except OSError:  # swept as stale meanwhile, say: a new one is made below
                _remove_tree(Path(spare))
            else:
                with contextlib.suppress(OSError):
                    os.utime(path)  # a rename keeps the old time: not stale to a start-up sweep
                self._path = Path(path)
                log.debug("workspace.reused", path=path)
                return self
        self._path = _make_private_dir(self.root, prefix)
        _write_owner(self._path)
        log.debug("workspace.created", path=str(self._path))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        path, self._path = self._path, None
        if path is None:
            return
        if self._keep_as_spare(path):
            log.debug("workspace.emptied", path=str(path))
        elif _remove_tree(path):
            log.debug("workspace.removed", path=str(path))

    def _keep_as_spare(self, path: Path) -> bool:
        """Empty ``path`` but for its owner file and set it aside; False where it must go whole."""
        if not _SPARES.has_room(self.root):
            return False
        try:
            _unlink_files(path, keep=_OWNER)
            spare = os.path.join(self.root, f"{_SPARE_PREFIX}{os.getpid()}-{secrets.token_hex(5)}")
            os.rename(path, spare)
        except OSError:
            return False
        if not _SPARES.give(self.root, spare):  # another thread's came first
            _remove_tree(Path(spare))
        return True


def _write_owner(path: Path) -> None:
    fd = os.open(os.path.join(path, _OWNER), os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o600)
    try:
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    finally:
        os.close(fd)


def _read_owner(path: Path) -> tuple[int, str] | None:
    try:
        pid, _, host = (path / _OWNER).read_text().strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (assumed so where that cannot be asked)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would send CTRL_C_EVENT on Windows; no pool processes there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphaned_workspaces(root: Path, *, alive: Callable[[int], bool] = pid_alive) -> int:
    """Remove workspaces whose owning process on this host has died; return how many.

    A pool process killed under its task (out of memory, kill -9) leaves its download behind; its
    worker calls this when it learns of the death, and at the next task after a failure. Workspaces
    of live processes, of other hosts sharing ``root`` and without an owner file are left to
    :func:`sweep_stale_workspaces`.
    """
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    host = socket.gethostname()
    removed = 0
    for entry in entries:
        spare = entry.name.startswith(_SPARE_PREFIX)
        if not (spare or entry.name.startswith(_PREFIX)) or not entry.is_dir(follow_symlinks=False):
            continue
        owner = _read_owner(Path(entry.path))
        if owner is None or owner[1] != host or owner[0] == os.getpid() or alive(owner[0]):
            continue
        if _remove_tree(Path(entry.path)) and not spare:  # an empty spare held no one's download
            removed += 1
    if removed:
        log.info("workspace.orphans_removed", root=str(root), removed=removed)
    return removed


def sweep_stale_workspaces(root: Path, older_than_s: float, *, now: float | None = None) -> int:
    """Remove task workspaces under ``root`` untouched for ``older_than_s`` seconds; return how many.

    Only ``task-*`` and spare directories are considered (never symlinks or other files); a spare
    removed under a live process is replaced by a new directory. A workspace counts as
    touched when the directory or any entry directly in it changed, so a long download still in
    progress in another worker sharing ``root`` is left alone.
    """
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    removed = 0
    for entry in entries:
        ours = entry.name.startswith((_PREFIX, _SPARE_PREFIX))
        if not ours or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            newest = entry.stat(follow_symlinks=False).st_mtime
            with os.scandir(entry.path) as inner:
                for child in inner:
                    newest = max(newest, child.stat(follow_symlinks=False).st_mtime)
        except FileNotFoundError:
            continue
        spare = entry.name.startswith(_SPARE_PREFIX)
        if now - newest >= older_than_s and _remove_tree(Path(entry.path)) and not spare:
            removed += 1  # an empty spare held no one's download
    if removed:
        log.info("workspace.swept", root=str(root), removed=removed)
    return removed


def safe_display_name(name: str | None) -> str | None:
    """A file name fit to show a person, or None: never a path, whatever the server sent.

    Keeps only the last path component (``/`` and ``\\`` both count), drops control and invisible
    formatting characters (a right-to-left override can disguise ``.exe``) and characters Windows
    forbids, trims dots and spaces at the ends, defuses Windows device names
    (``CON``, ``nul.txt``) and caps the length, keeping the extension.
    """
    if not name:
        return None
    name = unicodedata.normalize("NFC", name)
    name = re.split(r"[/\\]", name)[-1]
    name = _FORBIDDEN_NAME_CHARS.sub("", name)
    name = "".join(c for c in name if unicodedata.category(c) != "Cf")  # bidi overrides, zero-width...
    name = " ".join(name.split()).strip(" .")
    if not name:
        return None
    if name.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
        name = "_" + name
    if len(name) > MAX_DISPLAY_NAME:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: MAX_DISPLAY_NAME - len(ext) - 1].rstrip(" .") + "." + ext
        else:
            name = name[:MAX_DISPLAY_NAME].rstrip(" .")
    return name or None
