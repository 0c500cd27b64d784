"""The progress channel's format: encoding, size limits, typed parsing, malformed lines, speed and ETA."""

from __future__ import annotations

import json
import os

import pytest

from morag_worker.core.execution.progress_channel import (
    MAX_LINE_BYTES,
    ChannelWriter,
    HeartbeatMessage,
    ProgressMessage,
    ReadyMessage,
    TaskEndMessage,
    TaskStartMessage,
    encode_message,
    heartbeat_interval,
    parse_line,
    summarize_metadata,
)
from morag_worker.core.results import ProgressMeta, TaskOutcome
from morag_worker.core.supervisor.task_tracker import STARTED_STAGE, TaskTracker
from tests.fakes import FakeClock

pytestmark = pytest.mark.unit


def roundtrip(kind: str, **fields: object) -> object:
    line = encode_message(kind, fields, pid=7, ts=1.5)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return parse_line(line)


def test_every_message_type_round_trips() -> None:
    ready = roundtrip("ready", hostname="h@x", queues=["gpu-tasks-u"], config={"task_acks_late": True})
    assert ready == ReadyMessage(7, 1.5, "h@x", ("gpu-tasks-u",), {"task_acks_late": True})
    beat = roundtrip("heartbeat", consumer="connected", since_poll_s=0.4, reserved=1, active=["t1"])
    assert beat == HeartbeatMessage(7, 1.5, "connected", 0.4, 1, ("t1",))
    start = roundtrip(
        "task_start", task_id="t1", name="morag.worker.process_file_task_remote", filename="a.pdf"
    )
    assert start == TaskStartMessage(7, 1.5, "t1", "morag.worker.process_file_task_remote", "a.pdf")
    meta = ProgressMeta.of("DOWNLOADING", 50, 200, "downloading input")
    progress = roundtrip("progress", task_id="t1", **meta.to_dict())
    assert progress == ProgressMessage(7, 1.5, "t1", "DOWNLOADING", 50.0, 200.0, 25.0, "downloading input")
    end = roundtrip(
        "task_end", task_id="t1", outcome="succeeded", error=None, metadata={"pages": 3}, processing_time=1.25
    )
    assert end == TaskEndMessage(7, 1.5, "t1", "succeeded", None, {"pages": 3}, 1.25)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"v": 2, "type": "ready", "pid": 1, "ts": 1}',
        b'{"v": 1, "type": "bogus", "pid": 1, "ts": 1}',
        b'{"v": 1, "type": "progress", "pid": 1, "ts": 1, "task_id": "t"}',
        b'{"v": 1, "type": "progress", "pid": 1, "ts": 1, "stage": "X", "done": 1}',
        b'{"v": 1, "type": "task_end", "pid": 1, "ts": 1, "task_id": "t", "outcome": "exploded"}',
        b'{"v": 1, "type": "ready", "pid": "1", "ts": 1}',
        b"\xff\xfe garbage",
        b"{" * 100_000,
    ],
)
def test_malformed_lines_are_ignored(line: bytes) -> None:
    assert parse_line(line) is None


def test_odd_field_types_are_tolerated() -> None:
    beat = parse_line(
        b'{"v":1,"type":"heartbeat","pid":1,"ts":2,"reserved":true,"active":"x","since_poll_s":"3"}'
    )
    assert beat == HeartbeatMessage(1, 2.0, "starting", None, 0, ())


def test_long_lines_are_shrunk_under_pipe_buf() -> None:
    line = encode_message(
        "task_end",
        {
            "task_id": "t",
            "outcome": "failed",
            "error": "x" * 20_000,
            "metadata": {f"k{i}": "v" * 100 for i in range(50)},
        },
    )
    assert len(line) <= MAX_LINE_BYTES
    parsed = parse_line(line)
    assert isinstance(parsed, TaskEndMessage) and parsed.error and parsed.error.startswith("xxx")


def test_metadata_summary_keeps_a_few_scalars() -> None:
    summary = summarize_metadata(
        {"pages": 3, "title": "t" * 500, "nested": {"a": 1}, "ok": True, "none": None}
    )
    assert summary == {"pages": 3, "title": "t" * 120, "ok": True, "none": None}
    assert len(summarize_metadata({str(i): i for i in range(100)})) == 16


def test_writer_writes_whole_lines_and_goes_quiet_when_the_reader_is_gone() -> None:
    read_fd, write_fd = os.pipe()
    writer = ChannelWriter(write_fd)
    assert writer.send("heartbeat", consumer="connected")
    writer.progress_sink("t1", ProgressMeta.of("PROCESSING", 1, 2))
    with os.fdopen(read_fd, "rb") as reader:
        first = json.loads(reader.readline())
        second = parse_line(reader.readline())
    assert first["type"] == "heartbeat" and first["pid"] == os.getpid()
    assert isinstance(second, ProgressMessage) and second.percent == 50.0
    assert not writer.send("heartbeat")  # EPIPE: the supervisor is gone
    assert not writer.enabled
    os.close(write_fd)


def test_writer_from_env() -> None:
    assert ChannelWriter.from_env({}) is None
    assert ChannelWriter.from_env({"MORAG_PROGRESS_FD": "stdout"}) is None
    writer = ChannelWriter.from_env({"MORAG_PROGRESS_FD": "9"})
    assert writer is not None and writer.enabled
    assert heartbeat_interval({"MORAG_HEARTBEAT_S": "0.5"}) == 0.5
    assert heartbeat_interval({"MORAG_HEARTBEAT_S": "soon"}) == 5.0


def test_stall_needs_an_idle_connected_consumer() -> None:
    def beat(consumer: str, since: float | None, reserved: int = 0) -> HeartbeatMessage:
        return HeartbeatMessage(1, 0.0, consumer, since, reserved, ())

    assert beat("connected", 120).stalled(90)
    assert not beat("connected", 30).stalled(90)
    assert not beat("connected", 120, reserved=1).stalled(90)  # holds its one message on purpose
    assert not beat("connecting", None).stalled(90)  # Celery reconnects by itself
    assert not beat("connected", None).stalled(90)


def test_tracker_smooths_speed_and_computes_eta() -> None:
    clock = FakeClock()
    tracker = TaskTracker(clock.monotonic, clock.time, time_constant_s=3.0)
    started = tracker.started(TaskStartMessage(1, 0, "t", "morag.worker.process_file_task_remote", "a.pdf"))
    assert started.stage == STARTED_STAGE and started.filename == "a.pdf"

    def update(done: float, stage: str = "DOWNLOADING", total: float = 1000.0) -> object:
        return tracker.progressed(ProgressMessage(1, 0, "t", stage, done, total, 100 * done / total, ""))

    first = update(0)
    assert first.speed is None and first.eta_s is None
    clock.advance(1)
    second = update(100)
    assert second.speed == pytest.approx(100) and second.eta_s == pytest.approx(9)
    clock.advance(1)
    third = update(400)  # 300/s now; the smoothed speed moves part of the way
    assert 100 < third.speed < 300
    assert third.filename == "a.pdf"
    clock.advance(1)
    processing = update(1, stage="PROCESSING", total=10)
    assert processing.speed is None  # a new stage counts in new units
    record = tracker.ended(TaskEndMessage(1, 0, "t", "succeeded", None, {"pages": 1}, 2.0))
    assert record.outcome is TaskOutcome.SUCCEEDED and record.filename == "a.pdf"
    assert record.duration_s == pytest.approx(3)
    assert len(tracker) == 0


def test_tracker_reconciles_lost_tasks_after_two_heartbeats() -> None:
    clock = FakeClock()
    tracker = TaskTracker(clock.monotonic, clock.time)
    tracker.started(TaskStartMessage(1, 0, "t", "n", None))
    assert tracker.reconcile((), "lost") == []
    assert tracker.reconcile(("t",), "lost") == []  # seen again: the count starts over
    assert tracker.reconcile((), "lost") == []
    [record] = tracker.reconcile((), "lost")
    assert record.outcome is TaskOutcome.REQUEUED and record.error == "lost"
    assert tracker.interrupt_all("x") == []
