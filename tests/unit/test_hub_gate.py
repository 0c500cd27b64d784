"""The worker side of a hub outage: the board shared with forked pool processes, the gate, the channel.

The gate runs on a real thread with a tiny backoff and a scripted probe; every wait is on a
condition with a deadline.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from morag_worker.core.execution.health.hub_outage import HubGate, OutageBoard, probe_healthz
from morag_worker.core.execution.progress_channel import (
    HeartbeatMessage,
    HubMessage,
    encode_message,
    parse_line,
)
from tests.httpserver import HTTPTestServer, Route
from tests.processes import wait_for

pytestmark = pytest.mark.unit


def test_the_board_is_shared_with_a_forked_process() -> None:
    board = OutageBoard()
    process = multiprocessing.get_context("fork").Process(
        target=board.unreachable, args=("could not connect", 1.0)
    )
    process.start()
    process.join(timeout=30)
    assert process.exitcode == 0
    assert board.unreachable_since is not None  # what the pool process wrote, the main process reads
    assert not board.give_up_waiting()
    board.set_stopping()
    assert board.give_up_waiting() and board.unreachable_since is not None
    board.answered()
    assert board.unreachable_since is None and board.stopping


class ScriptedProbe:
    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.answers.pop(0) if self.answers else True


@pytest.fixture
def reports() -> list[dict[str, Any]]:
    return []


@contextlib.contextmanager
def running(gate: HubGate) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=gate.run, args=(stop,), name="test-hub-gate")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()


def test_the_gate_pauses_probes_with_backoff_and_opens_when_the_hub_answers(
    reports: list[dict[str, Any]],
) -> None:
    board, probe = OutageBoard(), ScriptedProbe([False, False, True])
    gate = HubGate(board, probe, lambda **fields: reports.append(fields), base=0.01, cap=0.04, poll_s=0.005)
    with running(gate):
        assert not gate.paused
        board.unreachable("could not connect", 1.0)
        wait_for(lambda: board.unreachable_since is None and not gate.paused, 30, "the gate to open again")
    assert probe.calls == 3
    unreachable = [r for r in reports if not r["reachable"]]
    assert len(unreachable) == 3 and reports[-1] == {"reachable": True, "retry_in_s": None}
    delays = [r["retry_in_s"] for r in unreachable]
    assert delays[0] <= delays[1] <= delays[2] <= 0.04


def test_a_download_that_gets_through_opens_the_gate_without_a_probe(reports: list[dict[str, Any]]) -> None:
    board, probe = OutageBoard(), ScriptedProbe([])
    gate = HubGate(board, probe, lambda **fields: reports.append(fields), base=30, cap=30, poll_s=0.005)
    with running(gate):
        board.unreachable("could not connect", 1.0)
        wait_for(lambda: gate.paused, 30, "the gate to close")
        board.answered()  # the pool process's next attempt got an answer
        wait_for(lambda: not gate.paused, 30, "the gate to open")
    assert probe.calls == 0


def test_the_probe_asks_healthz() -> None:
    with HTTPTestServer() as server:
        server.route("/healthz", Route(body=b'{"status":"ok"}'))
        assert probe_healthz(server.origin + "/")()
        assert len(server.requests("/healthz")) == 1
        server.route("/healthz", Route(status=503))
        assert not probe_healthz(server.origin)()
        origin = server.origin
    assert not probe_healthz(origin, timeout=2)()  # nobody listens any more


def test_hub_and_paused_heartbeat_messages_round_trip() -> None:
    line = encode_message("hub", {"reachable": False, "retry_in_s": 4.2}, pid=7, ts=1.0)
    assert parse_line(line) == HubMessage(7, 1.0, False, 4.2)
    assert parse_line(
        encode_message("hub", {"reachable": True, "retry_in_s": 3}, pid=7, ts=1.0)
    ) == HubMessage(7, 1.0, True, None)
    assert parse_line(encode_message("hub", {"retry_in_s": 3}, pid=7, ts=1.0)) is None
    beat = parse_line(
        encode_message(
            "heartbeat",
            {"consumer": "connected", "since_poll_s": 500, "reserved": 0, "paused": True},
            pid=7,
            ts=1.0,
        )
    )
    assert isinstance(beat, HeartbeatMessage) and beat.paused and not beat.stalled(90)
    older = parse_line(
        encode_message(
            "heartbeat", {"consumer": "connected", "since_poll_s": 500, "reserved": 0}, pid=7, ts=1.0
        )
    )
    assert isinstance(older, HeartbeatMessage) and not older.paused and older.stalled(90)
