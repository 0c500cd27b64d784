"""The intake rules through the real supervisor, worker child, hub and Redis (issue 13, items 2 and 3).

The child reads its sensors from a JSON file (``MORAG_TEST_SENSORS``) that the test rewrites: the
GPU heats up while a task is being downloaded (slowly, through ``CuttingProxy``), cools down past
the limit but not to the resume temperature, then cools fully; later the laptop is unplugged and
plugged in again. Every wait is on a condition.

What must hold: the task in hand finishes, no new task is taken while held, the supervisor's
status and the worker's presence say why ("GPU at 86 °C, waiting for 78 °C"), intake resumes by
itself when the condition clears, and every task runs exactly once and succeeds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from morag_worker.core.hub_client import HubClient
from morag_worker.core.results import TaskOutcome
from morag_worker.core.supervisor.events import WorkerState
from tests.conftest import Stack
from tests.processes import wait_for
from tests.proxy import CuttingProxy
from tests.supervised import LiveSupervisor, big_text_file, queue_length, wait_task

pytestmark = pytest.mark.integration

USER = "ines"
SLOW_BPS = 256 * 1024  # a 1 MiB input takes about 4 s: the heat arrives mid-download
HOT = "GPU at 86 °C, waiting for 78 °C"


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return stack.key(USER)


@pytest.fixture
def proxy(stack: Stack) -> Iterator[CuttingProxy]:
    with CuttingProxy.in_front_of(stack.hub_url) as server:
        yield server


def write_sensors(path: Path, **readings: Any) -> None:
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(readings))
    staging.replace(path)  # the child never reads half a file


def presence(client: HubClient) -> dict[str, Any] | None:
    workers = client.workers()
    return workers[0] if workers else None


def test_a_hot_gpu_holds_new_tasks_after_the_one_in_hand_and_intake_resumes_when_it_cools(
    stack: Stack, key: str, proxy: CuttingProxy, tmp_path: Path
) -> None:
    admin = stack.redis.client()
    sensors = tmp_path / "sensors.json"
    write_sensors(sensors, gpu={"temperature_c": 60, "free_mb": 20000}, on_battery=False)
    with (
        LiveSupervisor(
            proxy.url, key, tmp_path, MORAG_TEST_SENSORS=str(sensors), MORAG_INTAKE_POLL_S="0.2"
        ) as live,
        closing(HubClient(proxy.url, key)) as submitter,
        closing(stack.client(key)) as observer,
    ):
        live.start()
        proxy.rules.rate_bps = SLOW_BPS
        ids = []
        for n in range(2):
            uploaded = submitter.upload(big_text_file(tmp_path / f"input-{n}.txt", 1.0))
            ids.append(str(submitter.create_task(file_id=uploaded["file_id"])["task_id"]))
        first, second = ids
        live.wait_progress(lambda p: p.task_id == first and p.stage == "DOWNLOADING" and p.done > 0)

        # The GPU heats up mid-task: intake pauses, the task in hand goes on.
        write_sensors(sensors, gpu={"temperature_c": 86, "free_mb": 20000}, on_battery=False)
        live.wait_state(WorkerState.HELD_BACK, timeout=60)
        status = live.status
        assert status.held_reason == HOT
        assert status.message == f"Paused: {HOT}. The task in hand finishes first."
        wait_for(
            lambda: (record := presence(observer)) is not None and record["state"] == "held_back" and record,
            60,
            "presence to say held_back",
        )
        assert presence(observer)["held_reason"] == HOT  # type: ignore[index]
        proxy.rules.rate_bps = None
        first_view = wait_task(observer, first, timeout=120)
        assert (
            first_view.state == "SUCCESS" and first_view.result is not None and first_view.result["success"]
        )
        wait_for(
            lambda: live.status.message == f"Paused: {HOT}.", 60, "the held status without a task in hand"
        )

        # Cooler, but not yet at 78 °C: still held (hysteresis); the second task waits in the queue.
        write_sensors(sensors, gpu={"temperature_c": 80, "free_mb": 20000}, on_battery=False)
        wait_for(
            lambda: live.status.held_reason == "GPU at 80 °C, waiting for 78 °C", 60, "the gate to read 80 °C"
        )
        assert queue_length(admin, USER) == 1
        assert observer.task(second).state == "PENDING"
        assert {p.task_id for p in live.listener.progress} == {first}
        assert any("hub.consumer_paused" in line for line in list(live.listener.logs))

        # Cool: intake resumes by itself and the second task runs.
        write_sensors(sensors, gpu={"temperature_c": 70, "free_mb": 20000}, on_battery=False)
        second_view = wait_task(observer, second, timeout=120)
        assert (
            second_view.state == "SUCCESS"
            and second_view.result is not None
            and second_view.result["success"]
        )
        live.wait_state(WorkerState.RUNNING)
        for task_id in ids:
            wait_for(lambda t=task_id: live.records(t), 60, f"the record of {task_id}")

        # Another rule, the same path: unplugged, the reason says so; plugged in, it clears.
        write_sensors(sensors, gpu={"temperature_c": 70, "free_mb": 20000}, on_battery=True)
        live.wait_state(WorkerState.HELD_BACK, timeout=60)
        assert live.status.message == "Paused: The computer runs on its battery."
        wait_for(
            lambda: (presence(observer) or {}).get("held_reason") == "The computer runs on its battery",
            60,
            "presence to name the battery",
        )
        write_sensors(sensors, gpu={"temperature_c": 70, "free_mb": 20000}, on_battery=False)
        live.wait_state(WorkerState.RUNNING, timeout=60)
    for task_id in ids:
        assert [r.outcome for r in live.records(task_id)] == [TaskOutcome.SUCCEEDED]
    states = live.listener.states()
    assert WorkerState.CRASHED not in states and WorkerState.BACKOFF not in states


def test_a_worker_started_while_held_takes_nothing_until_the_rule_clears(
    stack: Stack, key: str, tmp_path: Path
) -> None:
    admin = stack.redis.client()
    sensors = tmp_path / "sensors.json"
    write_sensors(sensors, gpu={"temperature_c": 90, "free_mb": 20000})
    with (
        LiveSupervisor(
            stack.hub_url, key, tmp_path, MORAG_TEST_SENSORS=str(sensors), MORAG_INTAKE_POLL_S="0.2"
        ) as live,
        closing(stack.client(key)) as client,
    ):
        uploaded = client.upload(big_text_file(tmp_path / "waiting.txt", 0.1))
        task_id = str(client.create_task(file_id=uploaded["file_id"])["task_id"])
        live.supervisor.start()  # the task is already queued: it must not be taken
        live.wait_state(WorkerState.HELD_BACK, timeout=120)
        assert live.status.held_reason == "GPU at 90 °C, waiting for 78 °C"
        wait_for(
            lambda: (presence(client) or {}).get("state") == "held_back", 60, "presence to say held_back"
        )
        write_sensors(sensors, gpu={"temperature_c": 85, "free_mb": 20000})  # one more look of the gate
        wait_for(
            lambda: live.status.held_reason == "GPU at 85 °C, waiting for 78 °C", 60, "the gate to read 85 °C"
        )
        assert queue_length(admin, USER) == 1 and not live.listener.progress
        write_sensors(sensors, gpu={"temperature_c": 60, "free_mb": 20000})
        view = wait_task(client, task_id, timeout=120)
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"]
    assert [r.outcome for r in live.records(task_id)] == [TaskOutcome.SUCCEEDED]
