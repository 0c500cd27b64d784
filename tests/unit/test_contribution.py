"""Contribution totals (this week, all time, across compaction) and the history's CSV export."""

from __future__ import annotations

import csv
import stat
import time
from pathlib import Path

import pytest

from morag_worker.core.config.contribution import CSV_COLUMNS, Totals, csv_text, totals_of, week_start
from morag_worker.core.config.history import TOTALS_FILE_NAME, HistoryStore
from morag_worker.core.results import TaskOutcome, TaskRecord

pytestmark = pytest.mark.unit

# Wednesday 2026-03-11 12:00 local time.
NOW = time.mktime((2026, 3, 11, 12, 0, 0, 0, 0, -1))
HOUR = 3600.0


def _record(
    n: int, finished: float, seconds: float, size: int | None, outcome: TaskOutcome = TaskOutcome.SUCCEEDED
) -> TaskRecord:
    return TaskRecord(
        task_id=f"t{n}",
        outcome=outcome,
        started_at=finished - seconds,
        finished_at=finished,
        filename=f"file-{n}.pdf",
        metadata={} if size is None else {"source_size": size},
    )


def test_week_starts_on_monday_midnight_local_time() -> None:
    start = week_start(NOW)
    assert time.localtime(start)[:6] == (2026, 3, 9, 0, 0, 0)
    assert week_start(start) == start  # Monday 00:00 itself is in its own week
    assert time.localtime(week_start(start - 1))[:3] == (2026, 3, 2)


def test_totals_count_succeeded_tasks_and_their_input_but_time_of_every_task() -> None:
    records = [
        _record(1, NOW, HOUR, 5_000_000),
        _record(2, NOW, 0.5 * HOUR, 2_000_000),
        _record(3, NOW, HOUR, 9_000_000, TaskOutcome.FAILED),
        _record(4, NOW, 0.5 * HOUR, None, TaskOutcome.REQUEUED),
        _record(5, NOW, 0.0, None),  # a local task: no download
    ]
    totals = totals_of(records)
    assert totals == Totals(tasks=3, seconds=3 * HOUR, input_bytes=7_000_000)
    assert totals.hours == 3.0
    assert totals.megabytes == 7.0


def test_store_stats_split_this_week_from_all_time(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "history.jsonl")
    monday = week_start(NOW)
    store.append(_record(1, monday - 60, HOUR, 1_000_000))  # last Sunday night
    store.append(_record(2, monday + 60, 2 * HOUR, 3_000_000))
    store.append(_record(3, NOW, HOUR, 4_000_000))
    stats = store.stats(NOW)
    assert stats.this_week == Totals(2, 3 * HOUR, 7_000_000)
    assert stats.all_time == Totals(3, 4 * HOUR, 8_000_000)


def test_all_time_survives_compaction(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "history.jsonl", max_records=3)
    for n in range(10):  # compacts at 6 lines: keeps 3, then grows again
        store.append(_record(n, NOW - 1000 + n, 60.0, 1_000))
    assert len(store.load()) < 10
    assert (tmp_path / TOTALS_FILE_NAME).exists()
    assert stat.S_IMODE((tmp_path / TOTALS_FILE_NAME).stat().st_mode) == 0o600
    assert store.stats(NOW).all_time == Totals(10, 600.0, 10_000)
    # A fresh store (the next launch) reads the same.
    assert HistoryStore(tmp_path / "history.jsonl", max_records=3).stats(NOW).all_time.tasks == 10


def test_damaged_totals_file_falls_back_to_the_records(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "history.jsonl")
    store.append(_record(1, NOW, 60.0, 10))
    (tmp_path / TOTALS_FILE_NAME).write_text("[not totals", encoding="utf-8")
    assert store.stats(NOW).all_time == Totals(1, 60.0, 10)


def test_clear_forgets_the_compacted_totals_too(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "history.jsonl", max_records=1)
    for n in range(3):
        store.append(_record(n, NOW - 10 + n, 60.0, 1))
    store.clear()
    assert store.stats(NOW).all_time == Totals()


def test_csv_export_writes_every_record_oldest_first(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "state" / "history.jsonl")
    store.append(_record(2, 1_700_000_200.0, 12.5, 2048))
    store.append(_record(1, 1_700_000_100.0, 10.0, None, TaskOutcome.FAILED))
    target = tmp_path / "export.csv"
    assert store.export_csv(target) == 2
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with target.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == list(CSV_COLUMNS)
    assert rows[1] == [
        "t1", "failed", "2023-11-14T22:14:50+00:00", "2023-11-14T22:15:00+00:00", "10.0", "file-1.pdf",
        "", "",
    ]  # fmt: skip
    assert rows[2] == [
        "t2", "succeeded", "2023-11-14T22:16:27+00:00", "2023-11-14T22:16:40+00:00", "12.5", "file-2.pdf",
        "2048", "",
    ]  # fmt: skip
    assert len(rows) == 3


def test_csv_quotes_commas_and_defuses_formulas() -> None:
    record = TaskRecord(
        task_id="t1",
        outcome=TaskOutcome.FAILED,
        started_at=0.0,
        finished_at=1.0,
        filename='=HYPERLINK("http://x"),a.pdf',
        error="broken, says pypdf\nline two",
    )
    rows = list(csv.reader(csv_text([record]).splitlines(keepends=True)))
    assert rows[1][5] == '\'=HYPERLINK("http://x"),a.pdf'
    assert rows[1][7] == "broken, says pypdf\nline two"
