"""What a contributor gave: totals over the task history, and the history as CSV.

Pure functions over ``TaskRecord``s; ``HistoryStore.stats`` and ``HistoryStore.export_csv`` feed
them from the file (and from the totals of records that compaction dropped). The tray app shows
the totals in its window; any thread may call these.

What counts:
- tasks: tasks that finished with a result (succeeded); failed and handed-back ones are not
  counted as contributed;
- hours: time spent on every task, whatever its outcome (the machine worked for it);
- megabytes: input downloaded for the succeeded tasks (``metadata["source_size"]``, bytes).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from morag_worker.core.results import TaskOutcome, TaskRecord

__all__ = ["CSV_COLUMNS", "ContributionStats", "Totals", "csv_text", "totals_of", "week_start"]

CSV_COLUMNS = (
    "task_id",
    "outcome",
    "started_at",
    "finished_at",
    "duration_s",
    "filename",
    "input_bytes",
    "error",
)
_MB = 1_000_000


@dataclass(frozen=True)
class Totals:
    """Tasks done, seconds worked and input bytes processed."""

    tasks: int = 0
    seconds: float = 0.0
    input_bytes: int = 0

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    @property
    def megabytes(self) -> float:
        return self.input_bytes / _MB

    def plus(self, other: Totals) -> Totals:
        return Totals(
            self.tasks + other.tasks, self.seconds + other.seconds, self.input_bytes + other.input_bytes
        )

    def to_json(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "seconds": self.seconds, "input_bytes": self.input_bytes}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Totals:
        """Raises ``ValueError`` for anything but the shape ``to_json`` writes."""
        try:
            totals = cls(int(data["tasks"]), float(data["seconds"]), int(data["input_bytes"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a totals object ({exc.__class__.__name__}: {exc})") from exc
        if totals.tasks < 0 or totals.seconds < 0 or totals.input_bytes < 0:
            raise ValueError("totals cannot be negative")
        return totals


@dataclass(frozen=True)
class ContributionStats:
    """Totals for the week so far (from Monday 00:00, local time) and for all time."""

    this_week: Totals
    all_time: Totals


def _input_bytes(record: TaskRecord) -> int:
    value = record.metadata.get("source_size")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0
    return int(value)


def totals_of(records: Iterable[TaskRecord]) -> Totals:
    """The totals of ``records`` (see the module docstring for what counts)."""
    tasks = 0
    seconds = 0.0
    input_bytes = 0
    for record in records:
        seconds += record.duration_s
        if record.outcome is TaskOutcome.SUCCEEDED:
            tasks += 1
            input_bytes += _input_bytes(record)
    return Totals(tasks, seconds, input_bytes)


def week_start(now: float) -> float:
    """Epoch seconds of the last Monday 00:00 (local time) at or before ``now``."""
    day = time.localtime(now)
    midnight = time.mktime((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0, 0, 0, -1))
    monday = time.localtime(midnight - day.tm_wday * 86400 + 12 * 3600)  # noon: safe across DST
    return time.mktime((monday.tm_year, monday.tm_mon, monday.tm_mday, 0, 0, 0, 0, 0, -1))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _cell(text: str | None) -> str:
    # File names and errors come from uploaders: a leading = + - @ would be a formula in a spreadsheet.
    text = text or ""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_text(records: Iterable[TaskRecord]) -> str:
    """The records as CSV (a header row, then one row each, in the order given); times in UTC.

    A file name or error that a spreadsheet would read as a formula gets a leading ``'``.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for record in records:
        writer.writerow(
            [
                record.task_id,
                record.outcome.value,
                _iso(record.started_at),
                _iso(record.finished_at),
                f"{record.duration_s:.1f}",
                _cell(record.filename),
                _input_bytes(record) or "",
                _cell(record.error),
            ]
        )
    return out.getvalue()
