"""The watchdog against a real redis-server, with deliveries laid out exactly as kombu leaves them.

kombu's ``QoS.append`` stores a delivery as ``unacked[tag] = [payload, exchange, routing_key]`` and
``unacked_index[tag] = time of delivery``; a worker killed mid-task leaves both behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from morag_worker.core.server.watchdog import Watchdog
from tests.processes import RedisServer

pytestmark = pytest.mark.unit

VISIBILITY = 60.0


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def watchdog(redis_server: RedisServer) -> Iterator[Watchdog]:
    dog = Watchdog(redis_server.url, VISIBILITY)
    yield dog
    dog.close()


def user(admin: redis.Redis, user_id: str) -> str:
    admin.sadd(f"morag:users:{user_id}", "0" * 64)
    return f"morag:ns:{user_id}:"


def deliver(admin: redis.Redis, ns: str, tag: str, age: float, routing_key: str, task_id: str = "") -> None:
    payload = {
        "body": "W1tdLCB7fSwge31d",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"id": task_id or tag, "task": "morag.worker.process_file_task_remote"},
        "properties": {
            "delivery_tag": tag,
            "delivery_info": {"exchange": "", "routing_key": routing_key},
            "priority": 0,
        },
    }
    admin.hset(ns + "unacked", tag, json.dumps([payload, "", routing_key]))
    admin.zadd(ns + "unacked_index", {tag: time.time() - age})


def queued(admin: redis.Redis, key: str) -> list[dict[str, object]]:
    return [json.loads(m) for m in admin.lrange(key, 0, -1)]


def test_a_stale_delivery_goes_back_to_its_queue_marked_redelivered(
    admin: redis.Redis, watchdog: Watchdog
) -> None:
    ns = user(admin, "u1")
    deliver(admin, ns, "stale", VISIBILITY + 5, "gpu-tasks-u1", task_id="t-stale")
    deliver(admin, ns, "fresh", 1, "gpu-tasks-u1", task_id="t-fresh")
    report = watchdog.run()
    assert report.restored == {"u1": 1} and not report.failed
    (message,) = queued(admin, ns + "gpu-tasks-u1")
    assert message["headers"]["id"] == "t-stale" and message["headers"]["redelivered"] is True
    assert admin.hkeys(ns + "unacked") == [b"fresh"]
    assert admin.zrange(ns + "unacked_index", 0, -1) == [b"fresh"]
    assert watchdog.run().restored == {}  # nothing more to do: the fresh one is still in flight


def test_many_stale_deliveries_are_all_restored_in_one_run(admin: redis.Redis, watchdog: Watchdog) -> None:
    ns = user(admin, "many")
    for n in range(250):
        deliver(admin, ns, f"tag-{n}", VISIBILITY + 10 + n, "gpu-tasks-many")
    assert watchdog.run().restored == {"many": 250}
    assert admin.llen(ns + "gpu-tasks-many") == 250 and admin.hlen(ns + "unacked") == 0


def test_the_namespace_mutex_is_honoured(admin: redis.Redis, watchdog: Watchdog) -> None:
    ns = user(admin, "busy")
    deliver(admin, ns, "stale", VISIBILITY + 5, "gpu-tasks-busy")
    admin.set(ns + "unacked_mutex", "someone else", px=60_000)
    assert watchdog.run().restored == {}
    assert admin.hlen(ns + "unacked") == 1 and admin.llen(ns + "gpu-tasks-busy") == 0
    admin.delete(ns + "unacked_mutex")
    assert watchdog.run().restored == {"busy": 1}


def test_whatever_a_user_plants_stays_in_their_namespace(admin: redis.Redis, watchdog: Watchdog) -> None:
    mallory, victim = user(admin, "mallory"), user(admin, "victim")
    deliver(admin, mallory, "aimed", VISIBILITY + 5, "gpu-tasks-victim")
    deliver(admin, mallory, "aimed-ns", VISIBILITY + 5, "morag:ns:victim:gpu-tasks-victim")
    assert watchdog.run().restored == {"mallory": 2}
    assert admin.llen(victim + "gpu-tasks-victim") == 0
    assert admin.llen("gpu-tasks-victim") == 0
    assert admin.llen(mallory + "gpu-tasks-victim") == 1
    assert admin.llen(mallory + "morag:ns:victim:gpu-tasks-victim") == 1


def test_a_poisoned_namespace_does_not_stop_the_others(admin: redis.Redis, watchdog: Watchdog) -> None:
    bad, good = user(admin, "bad"), user(admin, "good")
    admin.hset(bad + "unacked", "junk", "this is not json")
    admin.zadd(bad + "unacked_index", {"junk": time.time() - VISIBILITY - 5})
    deliver(admin, good, "stale", VISIBILITY + 5, "gpu-tasks-good")
    report = watchdog.run()
    assert report.restored == {"good": 1} and set(report.failed) == {"bad"}


def test_only_users_in_the_key_index_are_visited(admin: redis.Redis, watchdog: Watchdog) -> None:
    ghost = "morag:ns:ghost:"
    deliver(admin, ghost, "stale", VISIBILITY + 5, "gpu-tasks-ghost")
    assert watchdog.user_ids() == []
    assert watchdog.run().restored == {}
    assert admin.hlen(ghost + "unacked") == 1


def test_the_visibility_timeout_must_be_positive(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError, match="positive"):
        Watchdog(redis_server.url, 0)
