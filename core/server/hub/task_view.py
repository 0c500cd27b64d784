"""What ``GET /api/v1/tasks/{id}`` answers: the task's state, progress and result, read with a size cap.

A task's result lives in its user's namespace, where that user's own worker may write anything up to
Redis's 512 MB: one user's huge value must cost the hub (and so every other user) nothing. Before
reading it, the hub asks Redis its length (``STRLEN``) and above ``max_result_bytes`` answers "too
large to serve" without reading a byte; the read itself is ``GETRANGE 0..cap``, so a value that grows
between the two commands still costs at most the cap. Results over ``LARGE_RESULT_BYTES`` are read a
few at a time. Blocking: runs in the hub's thread pool, through the Celery backend's Redis client.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from morag_worker.core.results import ProgressMeta, TaskResult, TaskStage
from morag_worker.core.routing import result_for_user

__all__ = ["DEFAULT_MAX_RESULT_BYTES", "ResultReader", "ResultTooLarge", "ResultsBusy"]

MiB = 1024 * 1024
# A worker's output limit (MORAG_MAX_OUTPUT_MB, 64 MB) plus the JSON around it: escapes, metadata.
DEFAULT_MAX_RESULT_BYTES = 80 * MiB
LARGE_RESULT_BYTES = 8 * MiB
LARGE_READS_AT_ONCE = 2
LARGE_READ_WAIT_S = 10.0


class ResultTooLarge(Exception):
    """The stored result is over the hub's cap; it was not read."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"the result of this task is {size / MiB:,.0f} MB, larger than this hub serves "
            f"({limit / MiB:,.0f} MB); it was not read"
        )


class ResultsBusy(Exception):
    """Other large results are being read; the client should ask again shortly."""


@dataclass
class ResultReader:
    """Reads task views for the hub, never more than ``max_result_bytes`` of a stored result."""

    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    _large: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(LARGE_READS_AT_ONCE), repr=False
    )

    def view(self, task_id: str, user_id: str | None) -> dict[str, Any]:
        """The task's state, progress (while DOWNLOADING/PROCESSING) and result (once done).

        Raises:
            ResultTooLarge: The stored value is over the cap (nothing of it was read).
            ResultsBusy: It is large and others are being read; nothing was read.
        """
        backend = result_for_user(task_id, user_id).backend
        key = backend.get_key_for_task(task_id)
        size = int(backend.client.strlen(key))
        if size > self.max_result_bytes:
            raise ResultTooLarge(size, self.max_result_bytes)
        if size <= LARGE_RESULT_BYTES:
            return _view(task_id, backend, self._read(backend, key))
        if not self._large.acquire(timeout=LARGE_READ_WAIT_S):
            raise ResultsBusy("other large results are being read; ask again in a few seconds")
        try:
            return _view(task_id, backend, self._read(backend, key))
        finally:
            self._large.release()

    def _read(self, backend: Any, key: bytes) -> bytes | None:
        raw: bytes | None = backend.client.getrange(key, 0, self.max_result_bytes)
        if raw is not None and len(raw) > self.max_result_bytes:
            raise ResultTooLarge(len(raw), self.max_result_bytes)  # it grew since STRLEN
        return raw or None


def _view(task_id: str, backend: Any, raw: bytes | None) -> dict[str, Any]:
    view: dict[str, Any] = {"task_id": task_id, "state": "PENDING", "progress": None, "result": None}
    try:
        meta = backend.decode_result(raw) if raw else {"status": "PENDING", "result": None}
        state, info = str(meta.get("status", "PENDING")), meta.get("result")
    except Exception:  # noqa: BLE001 - a value planted in the namespace is not a result
        view.update(state="FAILURE", error="the stored result of this task cannot be read")
        return view
    view["state"] = state
    if state in (TaskStage.DOWNLOADING, TaskStage.PROCESSING):
        progress = ProgressMeta.from_dict(info)
        view["progress"] = progress.to_dict() if progress else None
    elif state == "SUCCESS":
        try:
            view["result"] = TaskResult.from_dict(info).to_dict()
        except ValueError:
            view["result"] = None
            view["error"] = "the worker returned something that is not a result object"
    elif state == "FAILURE":
        view["error"] = str(info) if info is not None else "the task failed"
    return view
