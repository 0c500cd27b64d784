"""The supervisor against infrastructure faults: the hub down at start, Redis restarted mid-run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from morag_worker.core.hub_client import HubClient
from morag_worker.core.server.acl import RedisAclHook
from morag_worker.core.supervisor.events import Problem, StopMode, WorkerState
from tests.conftest import Stack, create_key, start_hub
from tests.processes import RedisServer, free_port, wait_for
from tests.supervised import LiveSupervisor, wait_task

pytestmark = pytest.mark.integration


def run_note(client: HubClient, tmp: Path, text: str) -> str:
    note = tmp / f"{abs(hash(text))}.txt"
    note.write_text(text + "\n")
    # The hub's own Redis connections may fail a first request after a Redis restart: retry.
    uploaded = wait_for(lambda: client.upload(note), what="the hub to take an upload")
    task_id = client.create_task(file_id=uploaded["file_id"])["task_id"]
    view = wait_task(client, task_id)
    assert view.state == "SUCCESS" and view.result and text in view.result["content"], view
    return str(task_id)


def test_hub_down_at_start_backs_off_and_recovers_when_it_comes_up(stack: Stack, tmp_path: Path) -> None:
    key = stack.key("hana")
    port = free_port()
    with LiveSupervisor(f"http://127.0.0.1:{port}", key, tmp_path) as live:
        live.supervisor.start()
        wait_for(
            lambda: live.status.state is WorkerState.BACKOFF and live.status.attempt >= 2,
            what="a second failed attempt",
        )
        status = live.status
        assert status.problem is Problem.HUB_UNREACHABLE
        assert f"attempt {status.attempt + 1}" in status.message and "127.0.0.1" in status.message
        assert status.retry_at is not None
        hub, url = start_hub(tmp_path, stack.redis.url, port=port)
        try:
            live.wait_state(WorkerState.RUNNING, timeout=120)
            run_note(HubClient(url, key), tmp_path, "served after the hub came up")
            live.supervisor.stop()
            live.wait_state(WorkerState.STOPPED)
        finally:
            hub.stop()
        backoffs = [s for s in live.listener.statuses if s.state is WorkerState.BACKOFF]
        assert [s.attempt for s in backoffs][:2] == [1, 2]


def test_redis_restart_mid_run_the_worker_reconnects_and_keeps_serving(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", extra=("--appendonly", "yes"))
    hub, url = start_hub(tmp_path, server.url)
    try:
        key = create_key(server.url, "rita")
        client = HubClient(url, key)
        with LiveSupervisor(url, key, tmp_path) as live:
            live.start()
            pid = live.supervisor.child_pid
            run_note(client, tmp_path, "before the restart")
            server.restart()
            # ACL users live only in memory; the hub re-provisions them from the key store at start.
            asyncio.run(_sync_acl(server.url))
            wait_for(
                lambda: (
                    live.status.message == "Waiting for work" and live.status.state is WorkerState.RUNNING
                ),
                what="the worker to be back to waiting for work",
            )
            run_note(client, tmp_path, "after the restart")
            assert live.supervisor.child_pid == pid, "reconnected, not restarted"
            assert not [s for s in live.listener.statuses if s.state is WorkerState.BACKOFF]
            live.supervisor.stop(StopMode.FINISH)
            live.wait_state(WorkerState.STOPPED)
    finally:
        hub.stop()
        server.stop()


async def _sync_acl(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await RedisAclHook(client).sync_all()
    finally:
        await client.aclose()


def test_broker_unreachable_is_reported_with_the_childs_words(stack: Stack, tmp_path: Path) -> None:
    key = stack.key("bruno")
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    hub, url = start_hub(tmp_path, stack.redis.url, ("--worker-broker-url", dead_broker))
    try:
        options = LiveSupervisor.options(connect_timeout_s=4.0, max_attempts=1)
        with LiveSupervisor(url, key, tmp_path, options=options) as live:
            live.supervisor.start()
            live.wait_state(WorkerState.CRASHED, timeout=120)
            status = live.status
            assert status.problem is Problem.BROKER_UNREACHABLE
            assert "no broker connection" in status.message.lower()
            assert any("Cannot connect" in line for line in status.last_output), status.last_output
            assert WorkerState.RUNNING not in [s.state for s in live.listener.statuses]
    finally:
        hub.stop()
