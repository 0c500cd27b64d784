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

from morag_worker.core.server.watchdog import CLAIM_GRACE_S, Watchdog
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


# Dead workers: deliveries no live presence record claims come back long before the visibility
# timeout (VISIBILITY here); the rule is in core/server/watchdog.py's docstring.

DEAD_AGE = CLAIM_GRACE_S + 10  # past the grace period, well inside the visibility timeout


def present(
    admin: redis.Redis,
    user_id: str,
    hostname: str,
    *,
    held: list[str] | None,
    tasks: list[str] | None = None,
    active: list[str] | None = None,
    sampled_ago: float = 1.0,
    **extra: object,
) -> None:
    """A live presence record as PresenceStep writes it (``held=None``: an older worker's)."""
    record: dict[str, object] = {
        "hostname": hostname,
        "user_id": user_id,
        "version": "test",
        "state": "working" if active else "idle",
        "queue": f"gpu-tasks-{user_id}",
        "queues": [f"gpu-tasks-{user_id}"],
        "active_tasks": active or [],
        "updated_at": time.time() - sampled_ago,
    }
    if held is not None:
        record["held_deliveries"] = held
        record["held_tasks"] = tasks if tasks is not None else []
    record.update(extra)
    admin.set(f"morag:ns:{user_id}:workers:{hostname}", json.dumps(record), ex=30)


def test_a_delivery_no_live_worker_claims_comes_back_before_the_visibility_timeout(
    admin: redis.Redis, watchdog: Watchdog
) -> None:
    ns = user(admin, "dead")
    deliver(admin, ns, "orphan", DEAD_AGE, "gpu-tasks-dead", task_id="t-orphan")
    report = watchdog.run()
    assert report.restored == {"dead": 1} and not report.failed
    (message,) = queued(admin, ns + "gpu-tasks-dead")
    assert message["headers"]["id"] == "t-orphan"
    assert admin.hlen(ns + "unacked") == 0 and admin.zcard(ns + "unacked_index") == 0


def test_a_live_worker_that_does_not_list_it_is_not_its_holder(
    admin: redis.Redis, watchdog: Watchdog
) -> None:
    ns = user(admin, "other")
    deliver(admin, ns, "orphan", DEAD_AGE, "gpu-tasks-other", task_id="t-orphan")
    deliver(admin, ns, "mine", DEAD_AGE, "gpu-tasks-other", task_id="t-mine")
    present(admin, "other", "alive@x", held=["mine"], tasks=["t-mine"], active=["t-mine"])
    present(admin, "other", "idle@y", held=[], tasks=[])
    assert watchdog.run().restored == {"other": 1}
    assert [m["headers"]["id"] for m in queued(admin, ns + "gpu-tasks-other")] == ["t-orphan"]
    assert admin.hkeys(ns + "unacked") == [b"mine"]


@pytest.mark.parametrize(
    "claim",
    [
        {"held": ["tag"]},
        {"held": [], "tasks": ["t-held"]},
        {"held": [], "active": ["t-held"]},
    ],
    ids=["by-delivery-tag", "by-task-id", "by-active-task"],
)
def test_a_delivery_a_live_worker_claims_is_kept(
    admin: redis.Redis, watchdog: Watchdog, claim: dict[str, list[str]]
) -> None:
    ns = user(admin, "held")
    deliver(admin, ns, "tag", DEAD_AGE, "gpu-tasks-held", task_id="t-held")
    present(admin, "held", "alive@x", **claim)  # type: ignore[arg-type]
    for _ in range(3):
        assert watchdog.run().restored == {}
    assert admin.hkeys(ns + "unacked") == [b"tag"] and admin.llen(ns + "gpu-tasks-held") == 0


def test_a_young_delivery_is_kept_even_with_no_worker_alive(admin: redis.Redis, watchdog: Watchdog) -> None:
    # Its worker may have taken it a moment ago and not written its presence yet.
    ns = user(admin, "young")
    deliver(admin, ns, "young", CLAIM_GRACE_S - 10, "gpu-tasks-young")
    assert watchdog.run().restored == {}
    assert admin.hkeys(ns + "unacked") == [b"young"]


def test_a_record_sampled_before_the_delivery_cannot_disown_it(
    admin: redis.Redis, watchdog: Watchdog
) -> None:
    ns = user(admin, "late")
    deliver(admin, ns, "tag", DEAD_AGE, "gpu-tasks-late")
    present(admin, "late", "slow@x", held=[], sampled_ago=DEAD_AGE)
    assert watchdog.run().restored == {}
    present(admin, "late", "slow@x", held=[])  # sampled since: it does not hold it
    assert watchdog.run().restored == {"late": 1}


@pytest.mark.parametrize("held", [None, 5, "tag"], ids=["older-worker", "garbled", "not-a-list"])
def test_a_live_worker_that_does_not_say_what_it_holds_makes_its_namespace_wait(
    admin: redis.Redis, watchdog: Watchdog, held: object
) -> None:
    ns = user(admin, "old")
    deliver(admin, ns, "tag", DEAD_AGE, "gpu-tasks-old")
    deliver(admin, ns, "stale", VISIBILITY + 5, "gpu-tasks-old", task_id="t-stale")
    if held is None:
        present(admin, "old", "old@x", held=None)
    else:
        present(admin, "old", "odd@x", held=[], held_deliveries=held)
    report = watchdog.run()
    assert report.restored == {"old": 1} and not report.failed  # only by the visibility timeout
    assert [m["headers"]["id"] for m in queued(admin, ns + "gpu-tasks-old")] == ["t-stale"]
    assert admin.hkeys(ns + "unacked") == [b"tag"]


def test_presence_of_another_user_claims_nothing(admin: redis.Redis, watchdog: Watchdog) -> None:
    ns = user(admin, "a1")
    user(admin, "b1")
    deliver(admin, ns, "tag", DEAD_AGE, "gpu-tasks-a1", task_id="t-a")
    present(admin, "b1", "b@x", held=["tag"], tasks=["t-a"])
    assert watchdog.run().restored == {"a1": 1}
