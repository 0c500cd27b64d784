"""The hub's maintenance loop with real processes: ACL users after a Redis restart, the periodic
sweep of expired keys, and the watchdog that saves a task whose worker was killed for good.

The hub here runs a round every second and restores deliveries older than five seconds; Redis keeps
an append-only file, as in production, so keys and queues survive its restart (ACL users do not).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from redis.exceptions import AuthenticationError

from morag_worker.core.auth import KEY_PREFIX, hash_api_key
from morag_worker.core.hub_client import HubClient, TaskView
from morag_worker.core.server.acl import HUB_ADMIN_RULES, MARKER_USER
from tests.conftest import Stack, start_hub
from tests.processes import wait_for
from tests.proxy import CuttingProxy

pytestmark = pytest.mark.integration

VISIBILITY_S = 5


@pytest.fixture(scope="module")
def hub_args() -> tuple[str, ...]:
    return ("--maintenance-interval", "1", "--visibility-timeout", str(VISIBILITY_S))


HUB_USER, HUB_PASSWORD = "morag-hub", "hub-password-for-tests"


@pytest.fixture(scope="module")
def redis_args() -> tuple[str, ...]:
    # As in production: an append-only file, and the hub logs in as an admin user with the
    # documented rules (the default user stays on here only for the tests' own inspection).
    hub_user = ("--user", HUB_USER, "on", f">{HUB_PASSWORD}", *HUB_ADMIN_RULES)
    return ("--appendonly", "yes", "--appendfsync", "always", *hub_user)


@pytest.fixture(scope="module")
def hub_redis_login() -> tuple[str, str]:
    return (HUB_USER, HUB_PASSWORD)


def acl_users(stack: Stack) -> set[str]:
    with stack.redis.client() as admin:
        return {u if isinstance(u, str) else u.decode() for u in admin.acl_users()}


def can_log_in(stack: Stack, user: str, key: str) -> bool:
    client = redis.Redis(port=stack.redis.port, username=f"worker-{user}", password=key, socket_timeout=5)
    try:
        return bool(client.ping())
    except AuthenticationError:
        return False
    finally:
        client.close()


def finish(client: HubClient, task_id: str, timeout: float = 120) -> TaskView:
    return wait_for(lambda: (v := client.task(task_id)).done and v, timeout, f"task {task_id} to finish")


def submit_text(client: HubClient, tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(client.create_task(file_id=client.upload(path)["file_id"])["task_id"])


def test_acl_users_come_back_after_a_redis_restart(stack: Stack, tmp_path: Path) -> None:
    key = stack.key("rs")
    stack.start_worker("rs", key, name="w@rs")
    wait_for(lambda: MARKER_USER in acl_users(stack), what="the hub's first round to provision")
    stack.redis.restart()
    # Keys and queues are back from the append-only file; the hub's next round notices that the
    # ACL users are not, and provisions them again; the worker logs in again by itself.
    wait_for(lambda: {"worker-rs", MARKER_USER} <= acl_users(stack), what="the hub to re-provision")
    assert can_log_in(stack, "rs", key)
    client = stack.client(key)
    view = finish(client, submit_text(client, tmp_path, "after.txt", "after the restart\n"))
    assert view.result is not None and view.result["success"], view
    assert view.result["metadata"]["worker_hostname"] == "w@rs"


def test_a_hub_provisions_every_user_when_it_starts(stack: Stack) -> None:
    keys = {user: stack.key(user) for user in ("boot", "boot-other")}
    wait_for(lambda: MARKER_USER in acl_users(stack), what="the hub's first round to provision")
    with stack.redis.client() as admin:
        # Lost users but the marker kept: the running hub sees nothing amiss; a new one still
        # provisions every user in its first round, whatever the marker says.
        for name in {u for u in acl_users(stack) if u.startswith("worker-")}:
            admin.execute_command("ACL", "DELUSER", name)
    assert not any(can_log_in(stack, user, key) for user, key in keys.items())
    hub, _ = start_hub(stack.tmp / "second-hub", stack.redis.url, ("--maintenance-interval", "3600"))
    try:
        wait_for(
            lambda: all(can_log_in(stack, user, key) for user, key in keys.items()),
            what="the new hub to provision every user at start-up",
        )
        assert {"worker-boot", "worker-boot-other", MARKER_USER} <= acl_users(stack)
    finally:
        hub.stop()


def test_the_loop_sweeps_expired_keys_and_their_broker_access(stack: Stack) -> None:
    key = stack.key("old", expires_days=1)
    assert can_log_in(stack, "old", key)
    with stack.redis.client() as admin:
        record_key = KEY_PREFIX + hash_api_key(key)
        record = json.loads(admin.get(record_key))
        record["expires_at"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        admin.set(record_key, json.dumps(record))
        # The sweep deletes the record, then the broker access: wait for both.
        wait_for(
            lambda: admin.get(record_key) is None and "worker-old" not in acl_users(stack),
            what="the hub's loop to sweep the expired key and its ACL user",
        )
    assert not can_log_in(stack, "old", key)


@pytest.fixture
def slow_hub(stack: Stack) -> Iterator[CuttingProxy]:
    with CuttingProxy.in_front_of(stack.hub_url) as proxy:
        yield proxy


def test_the_watchdog_saves_the_task_of_a_worker_killed_for_good(
    stack: Stack, slow_hub: CuttingProxy, tmp_path: Path
) -> None:
    user = "wd"
    key = stack.key(user)
    ns = f"morag:ns:{user}:"
    client = HubClient(slow_hub.url, key)
    doomed = stack.start_worker(user, key, name="doomed@wd", hub_url=slow_hub.url)
    slow_hub.rules.rate_bps = 16 * 1024
    big = tmp_path / "big.txt"
    big.write_bytes(b"the watchdog puts this back in the queue\n" * 12_000)
    task_id = str(client.create_task(file_id=client.upload(big)["file_id"])["task_id"])
    wait_for(lambda: client.task(task_id).state == "DOWNLOADING", what="the doomed worker to take it")
    doomed.kill_group()  # and it never comes back
    slow_hub.rules.rate_bps = None
    admin = stack.redis.client()
    assert admin.hlen(ns + "unacked") == 1 and admin.llen(f"{ns}gpu-tasks-{user}") == 0
    restored_before = stack.hub.output().count("watchdog.restored")
    rescuer = stack.start_worker(user, key, name="rescuer@wd", hub_url=slow_hub.url)
    view = finish(client, task_id)
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view
    assert view.result["metadata"]["worker_hostname"] == "rescuer@wd"
    assert "the watchdog puts this back" in (view.result["content"] or "")
    assert stack.hub.output().count("watchdog.restored") == restored_before + 1
    # Exactly once as far as anyone can see: one run finished, one result, nothing left behind.
    assert rescuer.output().count("task.done") == 1 and task_id in rescuer.output()
    assert admin.hlen(ns + "unacked") == 0 and admin.zcard(ns + "unacked_index") == 0
    assert admin.llen(f"{ns}gpu-tasks-{user}") == 0
    assert admin.exists(f"{ns}celery-task-meta-{task_id}") == 1
    client.close()
    admin.close()


@pytest.fixture(autouse=True)
def hub_needed_nothing_beyond_its_documented_rules(stack: Stack) -> Iterator[None]:
    """After each test, in any order: nothing the hub did (provisioning, sweeping, restoring,
    submitting, reading results and presence) was refused to its admin user."""
    yield
    with stack.redis.client() as admin:
        entries = admin.acl_log(count=1000)
    refused = [e for e in entries if e.get("username") == HUB_USER]
    assert refused == [], refused
    assert stack.hub.popen.poll() is None
