"""The command allowlist, confirmed: a worker's whole life under the production ACL and ``ACL LOG``.

Every worker here reaches Redis through ``RespRecorder``, which records each command it sends. Each
flow starts its own workers and stops them at its end: a normal task, a finish (SIGTERM: the task
completes), a stop-now (SIGQUIT on prefork: the task goes back to the queue at once), a pool child
killed mid-task (the task is requeued at once) and a kill -9 whose task the hub's watchdog restores
after a short visibility timeout for another worker. After each flow ``ACL LOG`` must be empty.
Each flow is a test of its own; the allowlist test runs the flows that have not run yet (all of them
when it runs alone), then the recorded commands must all be in ``ALLOWED_COMMANDS`` and every
allowed command must have been seen, or be listed in ``UNEXERCISED`` with the path that needs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from morag_worker.core.hub_client import HubClient, TaskView
from morag_worker.core.server.acl import ALLOWED_COMMANDS, OPTIONAL_COMMANDS, UNEXERCISED, RedisAclHook
from tests.conftest import Stack
from tests.processes import Proc, wait_for
from tests.proxy import CuttingProxy
from tests.resp_recorder import RespRecorder

pytestmark = pytest.mark.integration

USER = "acl-user"
NS = f"morag:ns:{USER}:"
QUEUE_KEY = f"{NS}gpu-tasks-{USER}"
SLOW_BYTES = 512 * 1024
SLOW_RATE = 16 * 1024  # ~32 s to download SLOW_BYTES: long enough to interrupt, above the minimum rate
VISIBILITY_S = 10
# Redis lets any connection run these whatever its user's command rules say.
NOT_ACL_CHECKED = {"auth", "hello"}


def server_known_optional(url: str) -> set[str]:
    async def probe() -> set[str]:
        client = aioredis.Redis.from_url(url)
        try:
            return set(await RedisAclHook(client).optional_commands())
        finally:
            await client.aclose()

    return asyncio.run(probe())


class Harness:
    def __init__(self, stack: Stack, recorder: RespRecorder, proxy: CuttingProxy, key: str) -> None:
        self.stack, self.recorder, self.proxy, self.key = stack, recorder, proxy, key
        self.client = HubClient(proxy.url, key)
        self.admin = stack.redis.client()
        self.flows_done: set[str] = set()

    def worker(self, name: str, **env: str) -> Proc:
        return self.stack.start_worker(
            USER, self.key, name=f"{name}@acl", broker_url=self.recorder.url, hub_url=self.proxy.url, **env
        )

    def submit(self, path: Path) -> str:
        uploaded = self.client.upload(path)
        return str(self.client.create_task(file_id=uploaded["file_id"])["task_id"])

    def wait_done(self, task_id: str, timeout: float = 120) -> TaskView:
        return wait_for(
            lambda: (v := self.client.task(task_id)).done and v, timeout, f"task {task_id} to finish"
        )

    def wait_downloading(self, task_id: str) -> None:
        wait_for(lambda: self.client.task(task_id).state == "DOWNLOADING", what="the task to be downloading")

    def unacked_tags(self) -> list[bytes]:
        return list(self.admin.hkeys(NS + "unacked"))

    def run_flow(self, flow: Flow, tmp: Path) -> None:
        """``flow`` from a clean start (no worker, empty queue); its workers are stopped at its end,
        and then ``ACL LOG`` must be empty."""
        assert self.admin.llen(QUEUE_KEY) == 0 and self.unacked_tags() == []
        assert all(proc.popen.poll() is not None for proc in self.stack.workers)
        first = len(self.stack.workers)
        try:
            flow(self, tmp)
        finally:
            self.proxy.rules.rate_bps = None
            for proc in self.stack.workers[first:]:
                proc.stop(timeout=30)
        log = self.admin.execute_command("ACL", "LOG")
        assert log == [], log
        self.flows_done.add(flow.__name__)


Flow = Callable[[Harness, Path], None]


@pytest.fixture(scope="module")
def hub_args() -> tuple[str, ...]:
    # The watchdog restores deliveries older than VISIBILITY_S; each flow above the kill -9 one
    # keeps its task in flight for a few seconds at most.
    return ("--maintenance-interval", "1", "--visibility-timeout", str(VISIBILITY_S))


@pytest.fixture(scope="module")
def harness(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    recorder = RespRecorder(stack.redis.port)
    proxy = CuttingProxy(int(stack.hub_url.rsplit(":", 1)[1]))
    key = stack.key(USER)
    h = Harness(stack, recorder, proxy, key)
    h.admin.execute_command("ACL", "LOG", "RESET")
    try:
        yield h
    finally:
        h.client.close()
        proxy.close()
        recorder.close()


def slow_file(tmp: Path) -> Path:
    path = tmp / "slow.txt"
    path.write_bytes(b"a line the worker will take a while to fetch\n" * (SLOW_BYTES // 46))
    return path


# --- the flows ---------------------------------------------------------------------------------


def normal_task(harness: Harness, tmp: Path) -> None:
    harness.worker("normal")
    note = tmp / "note.txt"
    note.write_text("an ordinary task under the production ACL\n")
    view = harness.wait_done(harness.submit(note))
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view


def finish_completes_the_running_task(harness: Harness, tmp: Path) -> None:
    worker = harness.worker("finish")
    harness.proxy.rules.rate_bps = SLOW_RATE
    task_id = harness.submit(slow_file(tmp))
    harness.wait_downloading(task_id)
    harness.proxy.rules.rate_bps = SLOW_BYTES / 2  # the rest arrives in about two seconds
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0, worker.output()[-3000:]
    view = harness.wait_done(task_id)
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view
    assert harness.admin.llen(QUEUE_KEY) == 0 and harness.unacked_tags() == []


def stop_now_requeues_the_running_task(harness: Harness, tmp: Path) -> None:
    worker = harness.worker("stop-now")
    harness.proxy.rules.rate_bps = SLOW_RATE
    task_id = harness.submit(slow_file(tmp))
    harness.wait_downloading(task_id)
    worker.signal(signal.SIGQUIT)
    worker.wait(timeout=60)
    # Back in the queue at once, not parked in unacked until a visibility timeout.
    queued = harness.admin.lrange(QUEUE_KEY, 0, -1)
    assert [json.loads(m)["headers"]["id"] for m in queued] == [task_id]
    assert harness.unacked_tags() == []
    harness.proxy.rules.rate_bps = None
    harness.worker("after-stop-now")
    view = harness.wait_done(task_id)
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view


def a_pool_child_that_dies_mid_task_requeues_it_at_once(harness: Harness, tmp: Path) -> None:
    """A crash inside the task (a segfaulting library, the OOM killer) takes only the pool child."""
    worker = harness.worker("pool-child-dies")
    harness.proxy.rules.rate_bps = SLOW_RATE
    task_id = harness.submit(slow_file(tmp))
    harness.wait_downloading(task_id)
    harness.proxy.rules.rate_bps = None
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    assert len(children) == 1, children
    os.kill(int(children[0]), signal.SIGKILL)
    view = harness.wait_done(task_id)  # requeued to the front, then run again by the same worker
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view
    assert worker.popen.poll() is None
    assert worker.saw("WorkerLostError") or worker.saw("worker lost"), worker.output()[-3000:]


def killed_task_is_restored_by_the_watchdog_for_another_worker(harness: Harness, tmp: Path) -> None:
    worker = harness.worker("killed")
    restored_before = harness.stack.hub.output().count("watchdog.restored")
    harness.proxy.rules.rate_bps = SLOW_RATE
    task_id = harness.submit(slow_file(tmp))
    harness.wait_downloading(task_id)
    worker.kill_group()
    assert len(harness.unacked_tags()) == 1 and harness.admin.llen(QUEUE_KEY) == 0
    harness.proxy.rules.rate_bps = None
    harness.worker("redeliver")
    view = harness.wait_done(task_id)
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view
    wait_for(lambda: harness.unacked_tags() == [], what="the redelivered task to be acked")
    assert harness.admin.llen(QUEUE_KEY) == 0
    restored = harness.stack.hub.output().count("watchdog.restored") - restored_before
    assert restored == 1, harness.stack.hub.output()[-3000:]


FLOWS: tuple[Flow, ...] = (
    normal_task,
    finish_completes_the_running_task,
    stop_now_requeues_the_running_task,
    a_pool_child_that_dies_mid_task_requeues_it_at_once,
    killed_task_is_restored_by_the_watchdog_for_another_worker,
)


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flow", FLOWS, ids=[flow.__name__ for flow in FLOWS])
def test_a_flow_under_the_production_acl(harness: Harness, tmp_path: Path, flow: Flow) -> None:
    harness.run_flow(flow, tmp_path)


def test_the_allowlist_is_exactly_what_the_worker_needs(harness: Harness, tmp_path: Path) -> None:
    """Every command the workers sent in all the flows was allowed; every allowed one was needed."""
    for flow in FLOWS:
        if flow.__name__ not in harness.flows_done:
            flow_tmp = tmp_path / flow.__name__
            flow_tmp.mkdir()
            harness.run_flow(flow, flow_tmp)
    known_optional = server_known_optional(harness.stack.redis.url)
    allowed = set(ALLOWED_COMMANDS) | known_optional
    observed = set(harness.recorder.names()) - NOT_ACL_CHECKED
    # What this server does not know it refuses as unknown, before any ACL check (no ACL LOG entry).
    unknown_here = set(OPTIONAL_COMMANDS) - known_optional
    assert observed - unknown_here <= allowed, f"sent but not allowed: {sorted(observed - allowed)}"
    unneeded = allowed - observed - set(UNEXERCISED)
    assert not unneeded, f"allowed but never sent (trim, or explain in UNEXERCISED): {sorted(unneeded)}"
    stale = set(UNEXERCISED) & observed
    assert not stale, f"UNEXERCISED lists commands these flows do send: {sorted(stale)}"
