"""The task history file: round trips, ordering, damaged lines, compaction."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from morag_worker.core.config.history import (
    HistoryStore,
    default_history_path,
    record_from_json,
    record_to_json,
)
from morag_worker.core.results import TaskOutcome, TaskRecord

pytestmark = pytest.mark.unit


def _record(n: int, outcome: TaskOutcome = TaskOutcome.SUCCEEDED, **kw: object) -> TaskRecord:
    return TaskRecord(
        task_id=f"t{n}",
        outcome=outcome,
        started_at=1000.0 + n,
        finished_at=1010.0 + n,
        filename=f"file-{n}.pdf",
        **kw,  # type: ignore[arg-type]
    )


def test_round_trip_keeps_every_field() -> None:
    record = _record(1, TaskOutcome.FAILED, error="corrupt PDF: no trailer", metadata={"pages": 3, "x": [1]})
    assert record_from_json(record_to_json(record)) == record


def test_unserialisable_metadata_becomes_text() -> None:
    record = _record(1, metadata={"path": Path("/x")})
    assert record_from_json(record_to_json(record)).metadata == {"path": "/x"}


def test_store_persists_across_instances_newest_first(tmp_path: Path) -> None:
    path = tmp_path / "state" / "history.jsonl"
    store = HistoryStore(path)
    assert store.load() == []
    for n in (1, 3, 2):
        store.append(_record(n))
    again = HistoryStore(path)
    assert [r.task_id for r in again.load()] == ["t3", "t2", "t1"]
    assert [r.task_id for r in again.load(limit=1)] == ["t3"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_damaged_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    store = HistoryStore(path)
    store.append(_record(1))
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"task_id": "half"\n[]\n')
        handle.write('{"task_id":"x","outcome":"exploded","started_at":1,"finished_at":2}\n')
    store.append(_record(2))
    assert [r.task_id for r in HistoryStore(path).load()] == ["t2", "t1"]


def test_file_is_compacted_to_max_records(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    store = HistoryStore(path, max_records=3)
    for n in range(6):
        store.append(_record(n))
    assert len(path.read_text().splitlines()) == 3
    assert [r.task_id for r in store.load()] == ["t5", "t4", "t3"]
    store.clear()
    assert store.load() == []


def test_default_path_is_in_the_state_folder() -> None:
    assert default_history_path().name == "history.jsonl"
    assert "morag-worker" in str(default_history_path())
