"""The child's side of the channel without a broker: runtime hooks, the heartbeat probe, and what the
supervisor's preparation hands the child."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from morag_worker.core.config.settings import Settings
from morag_worker.core.execution.context import WorkerRuntime
from morag_worker.core.execution.health.liveness import consumer_health
from morag_worker.core.execution.progress_channel import (
    ProgressMessage,
    ReadyMessage,
    TaskEndMessage,
    TaskStartMessage,
    parse_line,
)
from morag_worker.core.hub_client import HubUnreachable
from morag_worker.core.results import ProgressMeta, TaskOutcome
from morag_worker.core.supervisor.events import Problem
from morag_worker.core.supervisor.options import SupervisorOptions
from morag_worker.core.supervisor.prepare import PrepareFailed, prepare
from tests.fakes import FakeGpuProbe, FakeHub, make_gpu, queue_info

pytestmark = pytest.mark.unit

KEY = "Kx9" + "a" * 20 + "7" * 20


def read_lines(fd: int) -> list[object]:
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return [parse_line(line) for line in data.splitlines()]


def test_runtime_reports_start_progress_end_and_ready_on_the_channel() -> None:
    read_fd, write_fd = os.pipe()
    try:
        runtime = WorkerRuntime({"MORAG_PROGRESS_FD": str(write_fd)})
        assert runtime.channel is not None and runtime.channel.progress_sink in runtime.extra_sinks
        runtime.announce_ready(hostname="w@h", queues=["gpu-tasks-u"], config={"task_acks_late": True})
        runtime.task_started("t1", name="morag.worker.process_file_task_remote", filename="a.pdf")
        for sink in runtime.extra_sinks:
            sink("t1", ProgressMeta.of("DOWNLOADING", 5, 10, "downloading input"))
        runtime.task_finished("t1", TaskOutcome.SUCCEEDED, metadata={"pages": 2, "big": list(range(9))})
        runtime.task_finished("t2")  # the old call shape: no outcome, nothing sent
        ready, start, progress, end = read_lines(read_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert isinstance(ready, ReadyMessage) and ready.config == {"task_acks_late": True}
    assert isinstance(start, TaskStartMessage) and start.filename == "a.pdf"
    assert isinstance(progress, ProgressMessage) and progress.percent == 50.0
    assert isinstance(end, TaskEndMessage) and end.outcome == "succeeded" and end.metadata == {"pages": 2}


def test_runtime_without_a_channel_is_quiet() -> None:
    runtime = WorkerRuntime({})
    assert runtime.channel is None and runtime.extra_sinks == []
    runtime.task_started("t", name="n")
    runtime.task_finished("t", TaskOutcome.FAILED, error="x")


def test_consumer_health_reads_what_kombu_exposes() -> None:
    assert consumer_health(SimpleNamespace(consumer=None))["consumer"] == "starting"
    assert (
        consumer_health(SimpleNamespace(consumer=SimpleNamespace(connection=None)))["consumer"]
        == "connecting"
    )
    channel_a = SimpleNamespace(_brpop_sent_at=100.0)
    channel_b = SimpleNamespace(_brpop_sent_at=None)
    connection = SimpleNamespace(
        transport=SimpleNamespace(cycle=SimpleNamespace(_channels=[channel_a, channel_b]))
    )
    health = consumer_health(SimpleNamespace(consumer=SimpleNamespace(connection=connection)), now=103.5)
    assert health["consumer"] == "connected" and health["since_poll_s"] == 3.5
    assert health["reserved"] == 0 and health["active"] == []
    opaque = SimpleNamespace(consumer=SimpleNamespace(connection=SimpleNamespace()))
    assert consumer_health(opaque)["since_poll_s"] is None  # not the Redis transport: unknown


def plan(**env: str) -> object:
    return prepare(
        Settings(hub_url="http://hub.test:8700", concurrency=2),
        key_resolver=lambda: KEY,
        hub_client_factory=FakeHub(queue_info("u1", "redis://broker.example:6379/0")),
        gpu_probe=FakeGpuProbe([make_gpu(0), make_gpu(1)]),
        env={"PATH": "/bin", **env},
        options=SupervisorOptions(heartbeat_s=2.5),
    )


def test_prepare_builds_the_child_command() -> None:
    prepared = plan()
    command = prepared.command  # type: ignore[attr-defined]
    assert command.env["REDIS_URL"] == "redis://broker.example:6379/0"
    assert command.env["MORAG_HEARTBEAT_S"] == "2.5" and command.env["MORAG_USER_ID"] == "u1"
    assert command.argv[command.argv.index("-c") + 1] == "2"
    assert command.env["CUDA_VISIBLE_DEVICES"] == make_gpu(0).uuid
    assert KEY not in command.argv
    # REDIS_URL on the worker side overrides the advertised broker, and never carries a password.
    overridden = plan(REDIS_URL="redis://user:secret@local:7000/1").command  # type: ignore[attr-defined]
    assert overridden.env["REDIS_URL"] == "redis://local:7000/1"


def test_prepare_failures_say_whether_to_retry() -> None:
    with pytest.raises(PrepareFailed) as caught:
        prepare(
            Settings(),
            key_resolver=lambda: KEY,
            hub_client_factory=FakeHub(HubUnreachable("cannot reach the hub")),
            gpu_probe=FakeGpuProbe(),
            env={},
            options=SupervisorOptions(),
        )
    assert caught.value.problem is Problem.HUB_UNREACHABLE and caught.value.retry
    with pytest.raises(PrepareFailed) as caught:
        prepare(
            Settings(),
            key_resolver=lambda: KEY,
            hub_client_factory=FakeHub(queue_info("bad id!")),
            gpu_probe=FakeGpuProbe(),
            env={},
            options=SupervisorOptions(),
        )
    assert caught.value.problem is Problem.CONFIG and not caught.value.retry


def test_a_download_ends_before_the_soft_time_limit_would_fail_its_task() -> None:
    assert WorkerRuntime({}).download_limits.deadline_s == 3600
    assert WorkerRuntime({"MORAG_DOWNLOAD_DEADLINE_S": "30"}).download_limits.deadline_s == 30
    short = WorkerRuntime({"CELERY_SOFT_TIME_LIMIT": "600", "CELERY_TIME_LIMIT": "700"})
    assert short.download_limits.deadline_s == 540
