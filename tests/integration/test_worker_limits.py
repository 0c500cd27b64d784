"""The worker's own limits hold against what a message says, and a killed pool process leaves no files
(issue 10, D10).

A real worker child under the production ACL, the real hub behind a throttling proxy so that a task
downloads for as long as a case needs; tasks are published the way a server does, through a
namespaced Celery app, with the options a submitter controls.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from morag_worker.core.hub_client import HubClient
from morag_worker.core.routing import app_for_user
from tests.conftest import Stack
from tests.processes import wait_for
from tests.proxy import CuttingProxy, ProxyRules

pytestmark = pytest.mark.integration

FILE_TASK = "morag.worker.process_file_task_remote"
RATE_BPS = 16 * 1024  # a 1 MiB input takes about a minute to download


@pytest.fixture
def slow_hub(stack: Stack) -> Iterator[CuttingProxy]:
    with CuttingProxy.in_front_of(stack.hub_url, ProxyRules(rate_bps=RATE_BPS)) as proxy:
        yield proxy


def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "slow.txt"
    path.write_bytes(b"a line of a file that downloads slowly through the proxy\n" * 18_000)
    return path


def pool_children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_submitters_timelimit_header_cannot_raise_the_workers_own_limits(
    stack: Stack, slow_hub: CuttingProxy, tmp_path: Path
) -> None:
    user = "lim"
    key = stack.key(user)
    temp_dir = tmp_path / "worker-tmp"
    worker = stack.start_worker(
        user, key, hub_url=slow_hub.url, temp_dir=temp_dir, CELERY_SOFT_TIME_LIMIT="3", CELERY_TIME_LIMIT="6"
    )
    client = HubClient(slow_hub.url, key)
    url = str(client.upload(big_file(tmp_path))["url"])
    app = app_for_user(user, {"REDIS_URL": stack.redis.url})
    sent = time.monotonic()
    result = app.send_task(
        FILE_TASK, args=[url, user], queue=f"gpu-tasks-{user}", time_limit=10**6, soft_time_limit=10**6 - 1
    )
    wait_for(result.ready, 60, "the worker's own time limit to end the task")
    ran = time.monotonic() - sent
    assert result.state == "FAILURE", (result.state, result.result)
    assert "TimeLimitExceeded" in repr(result.result), repr(result.result)
    assert ran < 30, ran  # the download alone takes a minute: the worker's 6 s limit stopped it
    assert worker.saw("task.time_limits_capped")
    assert worker.popen.poll() is None
    # The next task runs, and whatever the stopped one left in its workspace is gone by then.
    slow_hub.rules.rate_bps = None
    note = tmp_path / "after.txt"
    note.write_text("the worker goes on\n")
    after = app.send_task(FILE_TASK, args=[str(client.upload(note)["url"]), user], queue=f"gpu-tasks-{user}")
    wait_for(after.ready, 60, "the next task")
    assert after.state == "SUCCESS" and after.result["success"], after.result
    assert not list(temp_dir.glob("task-*"))
    client.close()
    worker.stop()


def test_a_killed_pool_process_leaves_no_workspace_behind(
    stack: Stack, slow_hub: CuttingProxy, tmp_path: Path
) -> None:
    user = "orph"
    key = stack.key(user)
    temp_dir = tmp_path / "worker-tmp"
    worker = stack.start_worker(user, key, hub_url=slow_hub.url, temp_dir=temp_dir)
    client = HubClient(slow_hub.url, key)
    task_id = str(client.create_task(file_id=client.upload(big_file(tmp_path))["file_id"])["task_id"])
    workspace = wait_for(
        lambda: next((p for p in temp_dir.glob("task-*") if any(p.iterdir())), None),
        60,
        "the download to start in a workspace",
    )
    (child,) = pool_children(worker.pid)
    assert (workspace / ".owner").read_text().split()[0] == str(child)
    os.kill(child, signal.SIGKILL)  # the OOM killer, say
    wait_for(lambda: not workspace.exists(), 30, "the dead pool process's workspace to be removed")
    assert worker.popen.poll() is None  # the worker goes on, with a new pool process
    wait_for(lambda: worker.saw("workspace.orphans_removed"), 30, "the worker to log the removal")
    slow_hub.rules.rate_bps = None
    view = wait_for(lambda: (v := client.task(task_id)).done and v, 120, "the requeued task to finish")
    assert view.state == "SUCCESS", view
    wait_for(lambda: not list(temp_dir.glob("task-*")), 30, "the second run's workspace to go")
    client.close()
    worker.stop()
