"""The intake gate in the worker child, its channel message, and what the supervisor makes of it.

The gate runs with fake sensors and a fake clock; the consumer switch (shared with the hub gate)
with a consumer that records its queue calls. The supervisor's side is in ``test_supervisor.py``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from morag_worker.core.execution.health.hub_outage import ConsumerSwitch, HubGate, HubGateStep, OutageBoard
from morag_worker.core.execution.health.intake_gate import IntakeGate, IntakeHold, rules_for_worker
from morag_worker.core.execution.health.intake_rules import GpuReading, IntakeRules
from morag_worker.core.execution.health.presence import presence_state
from morag_worker.core.execution.progress_channel import IntakeMessage, encode_message, parse_line
from morag_worker.core.supervisor.child_session import held_message
from tests.processes import wait_for

pytestmark = pytest.mark.unit

NOON = datetime(2026, 12, 7, 12, 0)


@dataclass
class FakeSensors:
    """Readings a test sets; counts what was read."""

    temperature_c: int | None = 60
    free_mb: int | None = 20_000
    idle: float | None = None
    battery: bool | None = None
    full: bool | None = None
    reads: list[str] = field(default_factory=list)

    def gpu(self) -> GpuReading | None:
        self.reads.append("gpu")
        return GpuReading(self.temperature_c, self.free_mb)

    def idle_s(self) -> float | None:
        self.reads.append("idle")
        return self.idle

    def on_battery(self) -> bool | None:
        self.reads.append("battery")
        return self.battery

    def fullscreen(self) -> bool | None:
        self.reads.append("fullscreen")
        return self.full


def gate(sensors: FakeSensors, rules: IntakeRules | None = None) -> tuple[IntakeGate, list[dict[str, Any]]]:
    reports: list[dict[str, Any]] = []
    return IntakeGate(
        rules or IntakeRules(), sensors, IntakeHold(), lambda **f: reports.append(f), now=lambda: NOON
    ), reports


def test_the_gate_holds_in_the_heat_reports_each_change_once_and_keeps_the_hysteresis() -> None:
    sensors = FakeSensors()
    g, reports = gate(sensors)
    assert not g.check().held and reports == [] and g.hold.reason is None
    sensors.temperature_c = 86
    g.check()
    g.check()  # the same reason: not reported again
    assert reports == [{"held": True, "reason": "GPU at 86 °C, waiting for 78 °C"}]
    assert g.hold.held
    sensors.temperature_c = 80  # under the limit, not yet at the resume temperature
    g.check()
    assert g.hold.reason == "GPU at 80 °C, waiting for 78 °C" and len(reports) == 2
    sensors.temperature_c = 78
    g.check()
    assert reports[-1] == {"held": False, "reason": None} and not g.hold.held


def test_the_gate_reads_only_the_sensors_whose_rule_is_on() -> None:
    sensors = FakeSensors()
    g, _ = gate(sensors, IntakeRules(temp_limit_c=None, pause_on_battery=False, pause_when_fullscreen=False))
    g.check()
    assert sensors.reads == []
    g.rules = IntakeRules(idle_minutes=5)
    g.check()
    assert sorted(sensors.reads) == ["battery", "fullscreen", "gpu", "idle"]


def test_a_failing_sensor_holds_nothing() -> None:
    class Broken(FakeSensors):
        def gpu(self) -> GpuReading | None:
            raise RuntimeError("NVML went away")

    g, reports = gate(Broken())
    assert not g.check().held and reports == []


def test_the_gate_thread_checks_until_stopped() -> None:
    sensors = FakeSensors(battery=True)
    g, reports = gate(sensors)
    stop = threading.Event()
    thread = threading.Thread(target=g.run, args=(stop,), daemon=True)
    g._poll = 0.01
    thread.start()
    try:
        wait_for(lambda: g.checks >= 3, 30, "three checks of the gate")
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive() and g.checks >= 3
    assert reports == [{"held": True, "reason": "The computer runs on its battery"}]


def test_transcription_on_the_gpu_asks_for_the_model_s_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: object() if name == "faster_whisper" else None
    )
    env = {"MORAG_WORKER_GPU_INDEX": "0", "MORAG_WHISPER_MODEL": "medium"}
    rules = rules_for_worker(env)
    assert rules.vram_needed_mb == 3200 and rules.vram_for == "the medium speech model"
    assert rules_for_worker({**env, "MORAG_WHISPER_DEVICE": "cpu"}).vram_needed_mb == 0
    assert rules_for_worker({"MORAG_WHISPER_MODEL": "medium"}).vram_needed_mb == 0  # no GPU chosen
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert rules_for_worker(env).vram_needed_mb == 0  # no faster-whisper: documents only


# ---- the consumer switch, shared with the hub gate ---------------------------------------------


@dataclass
class FakeQueue:
    name: str


@dataclass
class FakeTaskConsumer:
    queues: list[FakeQueue]


@dataclass
class FakeConsumer:
    task_consumer: FakeTaskConsumer
    connection: object = field(default_factory=object)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def cancel_task_queue(self, name: str) -> None:
        self.calls.append(("cancel", name))

    def add_task_queue(self, name: str) -> None:
        self.calls.append(("add", name))


def test_the_consumer_pauses_while_either_gate_holds_and_resumes_when_neither_does() -> None:
    step = HubGateStep.__new__(HubGateStep)  # the step without a Celery worker around it
    board, hold = OutageBoard(), IntakeHold()
    step.board, step.intake, step._stop, step.switch = board, hold, threading.Event(), ConsumerSwitch()
    step.gate = HubGate(board, lambda: True, lambda **_: None)
    consumer = FakeConsumer(FakeTaskConsumer([FakeQueue("gpu-tasks-ann"), FakeQueue("cpu-tasks-ann")]))

    @dataclass
    class Worker:
        consumer: FakeConsumer

    worker = Worker(consumer)
    step._apply(worker)
    assert consumer.calls == []
    hold.reason = "GPU at 86 °C, waiting for 78 °C"
    step._apply(worker)
    step._apply(worker)
    assert consumer.calls == [("cancel", "gpu-tasks-ann"), ("cancel", "cpu-tasks-ann")]
    step.gate.paused = True  # the hub goes away too; the rules clear meanwhile
    hold.reason = None
    step._apply(worker)
    assert len(consumer.calls) == 2  # still paused: the hub gate holds
    step.gate.paused = False
    step._apply(worker)
    assert consumer.calls[2:] == [("add", "gpu-tasks-ann"), ("add", "cpu-tasks-ann")]


# ---- the channel, presence and the supervisor ---------------------------------------------------


def test_the_intake_message_round_trips() -> None:
    line = encode_message(
        "intake", {"held": True, "reason": "GPU at 86 °C, waiting for 78 °C"}, pid=7, ts=1.0
    )
    assert parse_line(line) == IntakeMessage(7, 1.0, True, "GPU at 86 °C, waiting for 78 °C")
    assert parse_line(
        encode_message("intake", {"held": False, "reason": "stale"}, pid=7, ts=1.0)
    ) == IntakeMessage(7, 1.0, False, None)
    assert parse_line(encode_message("intake", {"reason": "x"}, pid=7, ts=1.0)) is None


def test_presence_says_held_back() -> None:
    assert presence_state([], hub_unreachable=False, held=True) == "held_back"
    assert presence_state(["t1"], hub_unreachable=True, held=True) == "waiting_for_hub"
    assert presence_state([], hub_unreachable=False) == "idle"


def test_held_message_counts_the_tasks_in_hand() -> None:
    assert held_message("The computer runs on its battery", 0) == "Paused: The computer runs on its battery."
    assert held_message("x.", 2) == "Paused: x. The 2 tasks in hand finish first."


def test_submit_says_when_every_worker_for_the_queue_is_held_back() -> None:
    from morag_worker.core.cli.submit import held_note
    from morag_worker.core.execution.health.presence import PresenceRecord

    def worker(name: str, state: str, reason: str | None = None) -> PresenceRecord:
        return PresenceRecord(name, "ann", "1", state, "gpu-tasks-ann", held_reason=reason)

    hot = worker("a", "held_back", "GPU at 86 °C, waiting for 78 °C")
    assert held_note([hot]) == (
        "Your worker is paused by the rules for when to contribute (GPU at 86 °C, waiting for 78 °C); "
        "the task runs when that clears."
    )
    assert held_note([hot, worker("b", "idle")]) is None  # another worker takes it
    assert held_note([]) is None
    both = held_note([hot, worker("b", "held_back", "The computer runs on its battery")])
    assert both is not None and both.startswith("Your workers are paused") and "battery" in both
