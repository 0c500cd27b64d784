"""A key revoked while its worker runs a task (issue 10, D6): the worker stops within 30 s and says why,
the task is never recorded as a success, and another worker of the same user finishes it.

Real redis-server (production ACL), real hub, a real worker child under a real ``Supervisor``; the
task is slowed by throttling its download through ``CuttingProxy``. The revoke goes through the
public CLI, as an administrator would run it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from morag_worker.core.hub_client import HubClient
from morag_worker.core.results import TaskOutcome
from morag_worker.core.supervisor.events import Problem, WorkerState
from tests.conftest import Stack
from tests.processes import base_env, wait_for
from tests.proxy import CuttingProxy, ProxyRules
from tests.supervised import LiveSupervisor, big_text_file, process_group, wait_task

pytestmark = pytest.mark.integration

STOPS_WITHIN_S = 30.0  # the contract: a revoked worker takes no work 30 s after the revoke
RATE_BPS = 64 * 1024  # the 4 MiB input downloads for about a minute: the revoke lands mid-task


@pytest.fixture
def slow_hub(stack: Stack) -> Iterator[CuttingProxy]:
    with CuttingProxy.in_front_of(stack.hub_url, ProxyRules(rate_bps=RATE_BPS)) as proxy:
        yield proxy


def revoke(stack: Stack, key: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "morag_worker", "keys", "revoke", "-"],
        input=key + "\n",
        env=base_env(REDIS_URL=stack.redis.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_a_key_revoked_mid_task_stops_the_worker_within_30_s_and_the_task_is_done_elsewhere(
    stack: Stack, slow_hub: CuttingProxy, tmp_path: Path
) -> None:
    user = "rev"
    doomed_key, spare_key = stack.key(user), stack.key(user)
    ns = f"morag:ns:{user}:"
    submitter = HubClient(slow_hub.url, spare_key)  # the file URL names the worker's hub origin
    big = big_text_file(tmp_path / "big.txt", 4.0)
    with LiveSupervisor(slow_hub.url, doomed_key, tmp_path) as live:
        live.start()
        child = live.supervisor.child_pid
        assert child is not None
        task_id = str(submitter.create_task(file_id=submitter.upload(big)["file_id"])["task_id"])
        live.wait_progress(lambda p: p.task_id == task_id and p.stage == "DOWNLOADING" and p.done > 0)
        revoked_at = time.monotonic()
        revoke(stack, doomed_key)
        live.wait_state(WorkerState.CRASHED, timeout=120)
        stopped_after = time.monotonic() - revoked_at
        print(f"\nrevoke -> supervisor in KEY_REJECTED: {stopped_after:.1f} s")
        status = live.status
        assert status.problem is Problem.KEY_REJECTED, status
        assert status.message.startswith("The hub rejected the API key"), status
        assert stopped_after <= STOPS_WITHIN_S
        assert process_group(child) == []
        records = live.records(task_id)
        assert [r.outcome for r in records] == [TaskOutcome.REQUEUED], records
        assert records[0].error is not None and "rejected the API key" in records[0].error
        logs = "\n".join(live.listener.logs)
        assert "broker.login_refused" in logs
        assert "task.done" not in logs and "succeeded" not in logs
        assert doomed_key not in logs

    # Another worker of the same user, with a key that still holds, finishes the task once the
    # hub's watchdog sees that no live worker claims it any more.
    admin = stack.redis.client()
    slow_hub.rules.rate_bps = None
    rescuer = stack.start_worker(user, spare_key, name="rescuer@rev", hub_url=slow_hub.url)
    view = wait_task(submitter, task_id, timeout=180)
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view
    assert view.result["metadata"]["worker_hostname"] == "rescuer@rev"
    wait_for(lambda: admin.hlen(ns + "unacked") == 0, 30, "the rescuer's ack")
    assert admin.llen(f"{ns}gpu-tasks-{user}") == 0
    rescuer.stop()
    submitter.close()
    admin.close()


def test_a_worker_whose_broker_login_is_refused_says_so_at_once(stack: Stack) -> None:
    """The consumer's own (re)connect meets the refusal too, not only presence: it is logged (and
    put on the progress channel, when there is one) instead of only retried forever."""
    user = "rev-late"
    key = stack.key(user)
    revoke(stack, key)
    worker = stack.start_worker(user, key, name="late@rev", wait_ready=False)
    try:

        def refused_by_the_consumer() -> list[str]:
            lines = worker.output().splitlines()
            return [
                line for line in lines if "broker.login_refused" in line and '"source": "consumer"' in line
            ]

        refused = wait_for(refused_by_the_consumer, 60, "the consumer to log the refused login")
        assert "invalid username-password pair" in refused[0]
        assert key not in worker.output()
        assert not worker.saw("worker.ready")
    finally:
        worker.stop()
