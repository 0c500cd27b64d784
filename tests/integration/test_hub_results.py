"""The hub reads results with a cap (issue 10, item 2): a huge value in a user's result key costs nothing.

A contributor's worker can write anything into its own user's namespace, including a 300 MB
"result". Here the values are planted straight into Redis (as such a worker could) and the hub,
started with ``--max-result-mb 4``, is asked for them: over the cap it answers 413 without reading
the value (Redis's own command statistics and traffic counters show it was not read); under the cap,
and for another user meanwhile, it answers as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from tests.conftest import create_key, start_hub
from tests.processes import MemoryWatch, Proc, RedisServer

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
CAP_MB = 4


class World:
    def __init__(self, tmp: Path) -> None:
        self.redis = RedisServer(tmp / "redis")
        self.hub: Proc | None = None
        self.hub, self.url = start_hub(tmp, self.redis.url, ("--max-result-mb", str(CAP_MB)))
        self.admin = redis.Redis.from_url(self.redis.url)

    def close(self) -> None:
        self.admin.close()
        if self.hub is not None:
            self.hub.stop()
        self.redis.stop()

    def task(self, user: str) -> tuple[str, str]:
        """A key for ``user`` and a task of theirs, queued (no worker runs it)."""
        key = create_key(self.redis.url, user)
        answer = requests.post(
            f"{self.url}/api/v1/tasks",
            json={"url": "https://example.org/a.html"},
            headers=auth(key),
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        return key, answer.json()["task_id"]

    def result_key(self, user: str, task_id: str) -> str:
        return f"morag:ns:{user}:celery-task-meta-{task_id}"

    def plant_result(self, user: str, task_id: str, content: str) -> None:
        result = {"success": True, "content": content, "metadata": {}, "processing_time": 1.0}
        result.update(error_message=None, user_id=user)
        meta = {"status": "SUCCESS", "result": result, "traceback": None, "children": [], "task_id": task_id}
        self.admin.set(self.result_key(user, task_id), json.dumps(meta))

    def reads(self) -> dict[str, int]:
        """How often Redis served GETRANGE, and the bytes it has sent, so far."""
        stats = self.admin.info("commandstats")
        sent = int(self.admin.info("stats")["total_net_output_bytes"])
        return {"getrange": int(stats.get("cmdstat_getrange", {}).get("calls", 0)), "sent": sent}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    made = World(tmp_path_factory.mktemp("hub-results"))
    try:
        yield made
    finally:
        made.close()


def get(world: World, key: str, task_id: str) -> requests.Response:
    return requests.get(f"{world.url}/api/v1/tasks/{task_id}", headers=auth(key), timeout=30)


def test_a_huge_planted_result_is_refused_unread(world: World) -> None:
    key, task_id = world.task("hoarder")
    # 300 MB in the user's result key, made inside Redis (SETRANGE pads with zero bytes).
    world.admin.setrange(world.result_key("hoarder", task_id), 300 * MIB - 1, b"}")
    before = world.reads()
    assert world.hub is not None
    with MemoryWatch(world.hub.pid) as memory:
        answers = [get(world, key, task_id) for _ in range(3)]
    after = world.reads()
    for answer in answers:
        assert answer.status_code == 413
        error: str = answer.json()["error"]
        expected = f"the result of this task is 300 MB, larger than this hub serves ({CAP_MB} MB)"
        assert error == expected + "; it was not read"
    assert after["getrange"] == before["getrange"]
    # Redis sent the hub key records, task index entries and lengths: kilobytes, not the value.
    assert after["sent"] - before["sent"] < 64 * 1024
    assert memory.peak - memory.baseline < 30, memory


def test_results_under_the_cap_and_other_users_are_served_as_before(world: World) -> None:
    hoarder, big = world.task("hoarder2")
    world.admin.setrange(world.result_key("hoarder2", big), 50 * MIB, b"x")
    other, small = world.task("neighbour")
    world.plant_result("neighbour", small, "# Hello\n")
    near, under = world.task("near")
    world.plant_result("near", under, "y" * (3 * MIB))

    assert get(world, hoarder, big).status_code == 413
    view: dict[str, Any] = get(world, other, small).json()
    assert view["state"] == "SUCCESS" and view["result"]["content"] == "# Hello\n"
    view = get(world, near, under).json()
    assert view["state"] == "SUCCESS" and len(view["result"]["content"]) == 3 * MIB


def test_a_value_that_is_not_a_result_is_a_clear_failure_and_a_missing_one_is_pending(world: World) -> None:
    key, task_id = world.task("planter")
    view = get(world, key, task_id).json()
    assert view["state"] == "PENDING" and view["result"] is None
    world.admin.set(world.result_key("planter", task_id), b"\x80\x04not json")
    answer = get(world, key, task_id)
    assert answer.status_code == 200
    assert answer.json()["state"] == "FAILURE"
    assert answer.json()["error"] == "the stored result of this task cannot be read"
