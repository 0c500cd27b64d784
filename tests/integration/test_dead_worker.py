"""A worker killed with its machine: its task is back within 90 s, not after the visibility timeout.

The hub runs with its defaults (a maintenance round a minute, the watchdog every 15 s, a three-hour
visibility timeout): only presence can bring the task back this fast. A worker that is alive keeps
its task, however long it runs (the rule: ``core/server/watchdog.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from morag_worker.core.hub_client import HubClient, TaskView
from morag_worker.core.server.hub.maintenance import WATCHDOG_INTERVAL_S
from morag_worker.core.server.watchdog import CLAIM_GRACE_S
from tests.conftest import Stack
from tests.processes import wait_for
from tests.proxy import CuttingProxy

pytestmark = pytest.mark.integration

BACK_WITHIN_S = 90.0
RATE_BPS = 16 * 1024


@pytest.fixture
def slow_hub(stack: Stack) -> Iterator[CuttingProxy]:
    with CuttingProxy.in_front_of(stack.hub_url) as proxy:
        yield proxy


def restores(stack: Stack, user: str) -> list[str]:
    """Why the hub's watchdog restored deliveries of ``user`` (its JSON log), one entry a restore."""
    out = []
    for line in stack.hub.output().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "watchdog.restored" and event.get("user_id") == user:
            out.append(str(event.get("reason")))
    return out


def finish(client: HubClient, task_id: str, timeout: float) -> TaskView:
    return wait_for(lambda: (v := client.task(task_id)).done and v, timeout, f"task {task_id} to finish")


def submit_big(client: HubClient, tmp_path: Path, seconds_at_rate: float) -> str:
    big = tmp_path / "big.txt"
    line = b"a task that must run exactly once\n"
    big.write_bytes(line * int(seconds_at_rate * RATE_BPS / len(line)))
    return str(client.create_task(file_id=client.upload(big)["file_id"])["task_id"])


def test_a_task_of_a_worker_killed_for_good_is_done_by_another_within_90_s(
    stack: Stack, slow_hub: CuttingProxy, tmp_path: Path
) -> None:
    user = "dead"
    key = stack.key(user)
    ns = f"morag:ns:{user}:"
    client = HubClient(slow_hub.url, key)
    doomed = stack.start_worker(user, key, name="doomed@dead", hub_url=slow_hub.url)
    slow_hub.rules.rate_bps = RATE_BPS
    task_id = submit_big(client, tmp_path, 30)
    wait_for(lambda: client.task(task_id).state == "DOWNLOADING", what="the doomed worker to take it")
    rescuer = stack.start_worker(user, key, name="rescuer@dead", hub_url=slow_hub.url)
    admin = stack.redis.client()
    assert admin.hlen(ns + "unacked") == 1 and admin.llen(f"{ns}gpu-tasks-{user}") == 0
    (doomed_tag,) = admin.hkeys(ns + "unacked")
    killed = time.monotonic()
    doomed.kill_group()  # the whole process group, as a power loss would
    slow_hub.rules.rate_bps = None
    wait_for(
        lambda: not admin.hexists(ns + "unacked", doomed_tag),
        BACK_WITHIN_S,
        "the watchdog to put the task back",
        interval=0.2,
    )
    back = time.monotonic() - killed
    view = finish(client, task_id, BACK_WITHIN_S - back)
    done = time.monotonic() - killed
    print(f"\nkill -9 -> task back in its queue: {back:.1f} s; -> done by the rescuer: {done:.1f} s")
    assert done < BACK_WITHIN_S
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view
    assert view.result["metadata"]["worker_hostname"] == "rescuer@dead"
    assert restores(stack, user) == ["no_live_claim"]
    assert rescuer.output().count("task.done") == 1
    assert admin.hlen(ns + "unacked") == 0 and admin.llen(f"{ns}gpu-tasks-{user}") == 0
    rescuer.stop()
    client.close()
    admin.close()


def test_a_long_task_of_a_live_worker_is_never_restored(
    stack: Stack, slow_hub: CuttingProxy, tmp_path: Path
) -> None:
    user = "alive"
    key = stack.key(user)
    ns = f"morag:ns:{user}:"
    client = HubClient(slow_hub.url, key)
    holder = stack.start_worker(user, key, name="holder@alive", hub_url=slow_hub.url)
    slow_hub.rules.rate_bps = RATE_BPS
    held_for = CLAIM_GRACE_S + 2 * WATCHDOG_INTERVAL_S + 5  # past the grace, two watchdog runs
    task_id = submit_big(client, tmp_path, held_for + 30)
    wait_for(lambda: client.task(task_id).state == "DOWNLOADING", what="the holder to take it")
    spare = stack.start_worker(
        user, key, name="spare@alive", hub_url=slow_hub.url
    )  # would run a restored task
    admin = stack.redis.client()
    ((tag, taken),) = admin.zrange(ns + "unacked_index", 0, -1, withscores=True)

    seen_back: list[float] = []

    def held_long_enough() -> bool:
        # At every look until then: still held, never back in the queue (wait_for swallows
        # exceptions, so a breach is recorded and ends the wait).
        if not admin.hexists(ns + "unacked", tag) or admin.llen(f"{ns}gpu-tasks-{user}"):
            seen_back.append(time.time() - taken)
        return bool(seen_back) or time.time() - taken > held_for

    wait_for(held_long_enough, held_for + 30, "the task to be held past the grace period", interval=0.5)
    assert seen_back == [], f"restored while its worker was alive, {seen_back[0]:.0f} s after it was taken"
    slow_hub.rules.rate_bps = None
    view = finish(client, task_id, 120)
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view
    assert view.result["metadata"]["worker_hostname"] == "holder@alive"
    assert holder.output().count("task.done") == 1 and task_id not in spare.output()
    assert restores(stack, user) == []
    assert admin.hlen(ns + "unacked") == 0
    holder.stop()
    spare.stop()
    client.close()
    admin.close()
