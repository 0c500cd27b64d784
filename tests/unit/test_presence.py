"""What a worker's presence record says it holds (read from kombu's and Celery's memory)."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import pytest
from celery.worker import state

from morag_worker.core.execution.health.presence import PresenceRecord, held_by, presence_state

pytestmark = pytest.mark.unit


class Request:
    """Celery keeps requests in weak sets: only their ``id`` is read."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id


def fake_worker(delivered: dict[str, object]) -> object:
    qos = SimpleNamespace(_delivered=OrderedDict(delivered))
    return SimpleNamespace(
        consumer=SimpleNamespace(task_consumer=SimpleNamespace(channel=SimpleNamespace(qos=qos)))
    )


def test_every_delivery_in_the_channel_is_held_with_its_task_id() -> None:
    worker = fake_worker(
        {
            "tag-1": SimpleNamespace(headers={"id": "task-1"}, properties={}),
            "tag-2": SimpleNamespace(headers={}, properties={"correlation_id": "task-2"}),
        }
    )
    assert held_by(worker) == (["tag-1", "tag-2"], ["task-1", "task-2"])


def test_reserved_and_active_requests_are_held_too() -> None:
    reserved, active = Request("reserved-1"), Request("active-1")
    state.reserved_requests.add(reserved)
    state.active_requests.add(active)
    try:
        assert held_by(SimpleNamespace(consumer=None)) == ([], ["active-1", "reserved-1"])
    finally:
        state.reserved_requests.discard(reserved)
        state.active_requests.discard(active)


def test_records_round_trip_and_older_ones_hold_unknown() -> None:
    record = PresenceRecord("h", "u", "1", "idle", None, held_deliveries=["t"], held_tasks=["x"])
    assert PresenceRecord.from_json(record.to_json()) == record
    older = PresenceRecord.from_dict(
        {"hostname": "h", "user_id": "u", "version": "0", "state": "idle", "queue": None}
    )
    assert older is not None and older.held_deliveries is None and older.held_tasks is None


def test_the_state_says_when_the_worker_waits_for_the_hub() -> None:
    assert presence_state([], hub_unreachable=False) == "idle"
    assert presence_state(["t1"], hub_unreachable=False) == "working"
    assert presence_state(["t1"], hub_unreachable=True) == "waiting_for_hub"
