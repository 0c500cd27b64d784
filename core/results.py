"""What a task comes to: the result object and progress meta that cross the wire, and the outcome
and record of a finished task that the worker reports to its supervisor and the history keeps.

DESIGN §2 fixes the JSON shapes; these dataclasses are the one place that builds and parses them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum, StrEnum
from typing import Any

__all__ = ["INPUT_PROBLEM", "ProgressMeta", "TaskOutcome", "TaskRecord", "TaskResult", "TaskStage"]


class TaskStage(StrEnum):
    """Custom Celery states a remote task passes through before SUCCESS/FAILURE."""

    DOWNLOADING = "DOWNLOADING"
    PROCESSING = "PROCESSING"


@dataclass(frozen=True)
class ProgressMeta:
    """Meta of a DOWNLOADING/PROCESSING state: bytes while downloading, processor units after."""

    stage: str
    done: float
    total: float | None
    percent: float | None
    message: str = ""

    @classmethod
    def of(cls, stage: str, done: float, total: float | None, message: str = "") -> ProgressMeta:
        percent = None
        if total:
            percent = round(min(100.0, max(0.0, 100.0 * done / total)), 1)
        return cls(stage=stage, done=done, total=total, percent=percent, message=message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ProgressMeta | None:
        if not isinstance(data, dict) or "stage" not in data:
            return None
        return cls(
            stage=str(data["stage"]),
            done=float(data.get("done") or 0),
            total=None if data.get("total") is None else float(data["total"]),
            percent=None if data.get("percent") is None else float(data["percent"]),
            message=str(data.get("message") or ""),
        )


@dataclass
class TaskResult:
    """The result object of every task (DESIGN §2)."""

    success: bool
    content: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    processing_time: float = 0.0
    error_message: str | None = None
    user_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire form (DESIGN §2). Spelled out: ``asdict`` deep-copies the metadata, at fifty times
        the cost, for a dict that is only serialised."""
        return {
            "success": self.success,
            "content": self.content,
            "metadata": dict(self.metadata),
            "processing_time": self.processing_time,
            "error_message": self.error_message,
            "user_id": self.user_id,
        }

    @classmethod
    def from_dict(cls, data: Any) -> TaskResult:
        if not isinstance(data, dict):
            raise ValueError(f"not a result object: {type(data).__name__}")
        return cls(
            success=bool(data.get("success")),
            content=data.get("content"),
            metadata=dict(data.get("metadata") or {}),
            processing_time=float(data.get("processing_time") or 0.0),
            error_message=data.get("error_message"),
            user_id=data.get("user_id"),
        )

    @classmethod
    def failure(
        cls,
        message: str,
        *,
        user_id: str | None = None,
        processing_time: float = 0.0,
        metadata: dict[str, Any] | None = None,
    ) -> TaskResult:
        return cls(
            success=False,
            error_message=message,
            user_id=user_id,
            processing_time=processing_time,
            metadata=metadata or {},
        )


#: A failed task's metadata key, True when the input was at fault (a damaged or unsupported
#: file, a URL refused): the uploader's to fix, so the contributor is not alerted about it.
INPUT_PROBLEM = "input_problem"


class TaskOutcome(Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the result says success: false, or the task raised
    REQUEUED = "requeued"  # stopped now; back in the queue


@dataclass(frozen=True)
class TaskRecord:
    """One finished task, for the history view."""

    task_id: str
    outcome: TaskOutcome
    started_at: float
    finished_at: float
    filename: str | None = None
    error: str | None = None
    metadata: dict[str, object] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)
