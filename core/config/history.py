"""The local history of finished tasks, kept across restarts as JSON lines.

This module owns ``history.jsonl`` under the platform's per-user state folder (``platformdirs``;
a caller may pass any path, tests use a temp dir). Each line is one ``TaskRecord``. The file is
append-only and compacted to the newest ``max_records`` when it grows to twice that. A line that
cannot be read (a crash mid-write, a hand edit) is skipped with a warning, never fatal.

``HistoryStore`` is safe to share between threads (one lock); its methods do file I/O, so the GUI
calls them through its background helper. Nothing touches the disk at import or construction.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import platformdirs
import structlog

from morag_worker.core.config.atomic_file import write_atomically
from morag_worker.core.config.contribution import ContributionStats, Totals, csv_text, totals_of, week_start
from morag_worker.core.config.settings import APP_DIR_NAME
from morag_worker.core.results import TaskOutcome, TaskRecord

__all__ = [
    "HISTORY_FILE_NAME",
    "TOTALS_FILE_NAME",
    "HistoryStore",
    "default_history_path",
    "record_from_json",
    "record_to_json",
]

HISTORY_FILE_NAME = "history.jsonl"
#: Beside the history: the totals of the records that compaction dropped, so "all time" stays true.
TOTALS_FILE_NAME = "history-totals.json"
_FORMAT = 1

log = structlog.get_logger(__name__)


def default_history_path() -> Path:
    """``history.jsonl`` in the per-user state folder; not created here."""
    return platformdirs.user_state_path(APP_DIR_NAME) / HISTORY_FILE_NAME


def record_to_json(record: TaskRecord) -> str:
    """One JSON line (without the newline) for ``record``; metadata that is not JSON becomes text."""
    data: dict[str, Any] = {
        "v": _FORMAT,
        "task_id": record.task_id,
        "outcome": record.outcome.value,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "filename": record.filename,
        "error": record.error,
        "metadata": record.metadata,
    }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)


def record_from_json(line: str) -> TaskRecord:
    """Parse one line written by ``record_to_json``.

    Raises:
        ValueError: The line is not a record this version can read.
    """
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("a history line must be a JSON object")
    try:
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ValueError("metadata must be an object")
        return TaskRecord(
            task_id=str(data["task_id"]),
            outcome=TaskOutcome(data["outcome"]),
            started_at=float(data["started_at"]),
            finished_at=float(data["finished_at"]),
            filename=None if data.get("filename") is None else str(data["filename"]),
            error=None if data.get("error") is None else str(data["error"]),
            metadata={str(k): v for k, v in metadata.items()},
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"incomplete history record ({exc.__class__.__name__}: {exc})") from exc


class HistoryStore:
    """Finished tasks in one JSON-lines file, newest last on disk.

    Args:
        path: The file; ``default_history_path()`` when None.
        max_records: How many records ``compact`` keeps (and about how many the file holds).
    """

    def __init__(self, path: Path | None = None, *, max_records: int = 500) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.path = Path(path) if path is not None else default_history_path()
        self.max_records = max_records
        self._lock = threading.Lock()
        self._lines_on_disk: int | None = None

    def append(self, record: TaskRecord) -> None:
        """Add ``record``; compacts the file when it holds twice ``max_records`` lines.

        Raises:
            OSError: The folder or file cannot be written.
        """
        line = record_to_json(record) + "\n"
        with self._lock:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._lines_on_disk is None:
                self._lines_on_disk = len(self._read_lines())
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(line)
            self._lines_on_disk += 1
            if self._lines_on_disk >= 2 * self.max_records:
                self._compact_locked()

    def load(self, limit: int | None = None) -> list[TaskRecord]:
        """The records, newest first (by ``finished_at``), at most ``limit``; ``[]`` without a file.

        Raises:
            OSError: The file exists but cannot be read.
        """
        with self._lock:
            lines = self._read_lines()
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(record_from_json(line))
            except ValueError as exc:
                log.warning("history.line_skipped", path=str(self.path), line=number, reason=str(exc))
        records.sort(key=lambda r: r.finished_at, reverse=True)
        return records[:limit] if limit is not None else records

    def compact(self) -> None:
        """Rewrite the file with the newest ``max_records`` records (atomically)."""
        with self._lock:
            self._compact_locked()

    def clear(self) -> None:
        """Forget every record, and the totals of those compacted away."""
        with self._lock:
            self.path.unlink(missing_ok=True)
            self._totals_path.unlink(missing_ok=True)
            self._lines_on_disk = 0

    def stats(self, now: float) -> ContributionStats:
        """Totals for this week and all time: the records on file plus those compaction dropped.

        Raises:
            OSError: A file exists but cannot be read.
        """
        records = self.load()
        with self._lock:
            dropped = self._dropped_totals()
        since = week_start(now)
        return ContributionStats(
            this_week=totals_of(r for r in records if r.finished_at >= since),
            all_time=dropped.plus(totals_of(records)),
        )

    def export_csv(self, target: Path) -> int:
        """Write every record on file to ``target`` as CSV, oldest first; returns how many.

        Raises:
            OSError: The history cannot be read or ``target`` cannot be written.
        """
        records = list(reversed(self.load()))
        write_atomically(Path(target), csv_text(records), mode=0o600)
        log.info("history.exported", path=str(target), records=len(records))
        return len(records)

    @property
    def _totals_path(self) -> Path:
        return self.path.with_name(TOTALS_FILE_NAME)

    def _dropped_totals(self) -> Totals:
        try:
            return Totals.from_json(json.loads(self._totals_path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return Totals()
        except (ValueError, AttributeError) as exc:  # damaged by hand: the kept records still count
            log.warning("history.totals_unreadable", path=str(self._totals_path), reason=str(exc))
            return Totals()

    def _read_lines(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line.strip()]

    def _compact_locked(self) -> None:
        keep: list[tuple[float, str, TaskRecord]] = []
        for line in self._read_lines():
            try:
                record = record_from_json(line)
            except ValueError:
                continue
            keep.append((record.finished_at, line, record))
        keep.sort(key=lambda item: item[0])
        dropped, keep = keep[: -self.max_records], keep[-self.max_records :]
        if dropped:
            totals = self._dropped_totals().plus(totals_of(r for _, _, r in dropped))
            write_atomically(self._totals_path, json.dumps(totals.to_json()), mode=0o600)
        write_atomically(self.path, "".join(line + "\n" for _, line, _ in keep), mode=0o600)
        self._lines_on_disk = len(keep)
        log.debug("history.compacted", path=str(self.path), kept=len(keep))
