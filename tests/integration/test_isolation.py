"""Attacks with one user's worker credentials on another user's namespace; revoked and expired keys.

Everything here logs in exactly as a contributor's worker does (``worker-{user}`` with the API key
as password) against a real redis-server provisioned by the key service, and every attack must be
refused by Redis itself (NOPERM), not by anything the worker runs.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from redis.exceptions import AuthenticationError, NoPermissionError

from morag_worker.core.auth import KEY_PREFIX, USER_INDEX_PREFIX, hash_api_key
from morag_worker.core.hub_client import HubClient, TaskView
from morag_worker.core.server.acl import ALLOWED_COMMANDS, acl_rules
from tests.conftest import Stack
from tests.processes import Proc, base_env, python_argv, wait_for

pytestmark = pytest.mark.integration

A, B = "a", "b"
NS_A, NS_B = f"morag:ns:{A}:", f"morag:ns:{B}:"
B_QUEUE = f"{NS_B}gpu-tasks-{B}"
B_TASK_ID = "b0b0b0b0-0000-4000-8000-000000000001"
B_RESULT = f"{NS_B}celery-task-meta-{B_TASK_ID}"
B_PRESENCE = f"{NS_B}workers:w-b@test"
SCRIPT_REFUSED = "(?i)no permissions|The user executing the script can.t|NOPERM"
AUTH_REFUSED = ("WRONGPASS", "invalid username-password pair")


@pytest.fixture(scope="module")
def hub_args() -> tuple[str, ...]:
    # The hub's own sweep must not race the `keys sweep` run by a test below, nor its watchdog put
    # back the deliveries that the attack tests plant in B's namespace.
    return ("--maintenance-interval", "3600", "--watchdog-interval", "3600")


@dataclass
class Users:
    keys: dict[str, str]
    admin: redis.Redis

    def login(self, user: str, key: str | None = None) -> redis.Redis:
        """A connection logged in exactly as ``user``'s worker logs in."""
        return redis.Redis(
            port=self.admin.connection_pool.connection_kwargs["port"],
            username=f"worker-{user}",
            password=key or self.keys[user],
            socket_timeout=10,
        )


B_PLANTED = (B_QUEUE, NS_B + "unacked", NS_B + "unacked_index", NS_B + "unacked_mutex", B_RESULT, B_PRESENCE)


def plant_bs_namespace(admin: redis.Redis) -> None:
    """B's namespace as a busy B leaves it: a queued task, an in-flight one, a result, presence."""
    admin.delete(*B_PLANTED)
    message = json.dumps({"body": "e30=", "headers": {"id": B_TASK_ID}, "properties": {}})
    admin.rpush(B_QUEUE, message)
    admin.hset(NS_B + "unacked", "tag-b", json.dumps([json.loads(message), "", f"gpu-tasks-{B}"]))
    admin.zadd(NS_B + "unacked_index", {"tag-b": 1.0})
    admin.set(B_RESULT, json.dumps({"status": "SUCCESS", "result": {"content": "b's private text"}}))
    admin.set(B_PRESENCE, json.dumps({"hostname": "w-b@test"}))


def assert_bs_namespace_as_planted(admin: redis.Redis) -> None:
    assert admin.llen(B_QUEUE) == 1
    assert admin.hkeys(NS_B + "unacked") == [b"tag-b"]
    assert admin.zrange(NS_B + "unacked_index", 0, -1) == [b"tag-b"]
    assert b"b's private text" in admin.get(B_RESULT)
    assert not admin.exists(NS_B + "unacked_mutex")


@pytest.fixture(scope="module")
def users(stack: Stack) -> Iterator[Users]:
    keys = {user: stack.key(user) for user in (A, B, "u1", "u12")}
    admin = stack.redis.client()
    plant_bs_namespace(admin)
    yield Users(keys, admin)
    admin.delete(*B_PLANTED)
    admin.close()


@pytest.fixture
def b_untouched(users: Users) -> Iterator[None]:
    """The test attacks B's namespace with A's credentials: afterwards it is exactly as planted."""
    assert_bs_namespace_as_planted(users.admin)
    yield
    assert_bs_namespace_as_planted(users.admin)


def refused(client: redis.Redis, *args: Any) -> str:
    with pytest.raises(NoPermissionError) as caught:
        client.execute_command(*args)
    return str(caught.value)


# --- A's credentials against B's namespace, the key store and the server ------------------------

CROSS_NAMESPACE = {
    # B's queue (and its priority sub-queue)
    "llen-queue": ("LLEN", B_QUEUE),
    "lrange-queue": ("LRANGE", B_QUEUE, 0, -1),
    "rpop-queue": ("RPOP", B_QUEUE),
    "brpop-queue": ("BRPOP", B_QUEUE, f"{B_QUEUE}\x06\x163", 1),
    "lpush-queue": ("LPUSH", B_QUEUE, "{}"),
    "rpush-queue": ("RPUSH", B_QUEUE, "{}"),
    # B's in-flight deliveries and their lock
    "hgetall-unacked": ("HGETALL", NS_B + "unacked"),
    "hget-unacked": ("HGET", NS_B + "unacked", "tag-b"),
    "hset-unacked": ("HSET", NS_B + "unacked", "forged", "[]"),
    "hdel-unacked": ("HDEL", NS_B + "unacked", "tag-b"),
    "zrange-unacked-index": ("ZRANGE", NS_B + "unacked_index", 0, -1),
    "zadd-unacked-index": ("ZADD", NS_B + "unacked_index", 1, "forged"),
    "zrem-unacked-index": ("ZREM", NS_B + "unacked_index", "tag-b"),
    "set-mutex": ("SET", NS_B + "unacked_mutex", "mine", "NX", "PX", 300000),
    "del-mutex": ("DEL", NS_B + "unacked_mutex"),
    "watch-unacked": ("WATCH", NS_B + "unacked"),
    # B's results and their channels
    "get-result": ("GET", B_RESULT),
    "setex-result": ("SETEX", B_RESULT, 60, '{"status": "SUCCESS", "result": "FORGED"}'),
    "set-result": ("SET", B_RESULT, "FORGED"),
    "publish-result": ("PUBLISH", B_RESULT, "FORGED"),
    # B's presence and bindings
    "get-presence": ("GET", B_PRESENCE),
    "set-presence": ("SET", B_PRESENCE, "{}"),
    "sadd-binding": ("SADD", f"{NS_B}_kombu.binding.gpu-tasks-{B}", "x"),
    # the key store, even A's own entries
    "get-key-record": ("GET", KEY_PREFIX + "0" * 64),
    "smembers-user-index": ("SMEMBERS", USER_INDEX_PREFIX + B),
    "smembers-own-index": ("SMEMBERS", USER_INDEX_PREFIX + A),
    # unprefixed kombu/celery names: the shared ones of a deployment without namespaces
    "hgetall-shared-unacked": ("HGETALL", "unacked"),
    "llen-default-queue": ("LLEN", "celery"),
    "rpush-default-queue": ("RPUSH", "celery", "{}"),
    # copying or moving B's data into A's namespace
    "copy": ("COPY", B_RESULT, NS_A + "stolen"),
    "rename": ("RENAME", B_RESULT, NS_A + "stolen"),
    "dump": ("DUMP", B_RESULT),
    "sort-by-get": ("SORT", NS_A + "list", "BY", "nosort", "GET", NS_B + "*"),
}

SERVER_COMMANDS = {
    "keys": ("KEYS", "*"),
    "scan": ("SCAN", 0),
    "scan-match": ("SCAN", 0, "MATCH", NS_B + "*"),
    "randomkey": ("RANDOMKEY",),
    "dbsize": ("DBSIZE",),
    "pubsub-channels": ("PUBSUB", "CHANNELS"),
    "pubsub-numpat": ("PUBSUB", "NUMPAT"),
    "pubsub-numsub": ("PUBSUB", "NUMSUB", B_RESULT),
    "info": ("INFO",),
    "config-get": ("CONFIG", "GET", "*"),
    "config-set": ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"),
    "acl-list": ("ACL", "LIST"),
    "acl-users": ("ACL", "USERS"),
    "acl-getuser": ("ACL", "GETUSER", f"worker-{B}"),
    "acl-setuser": ("ACL", "SETUSER", f"worker-{A}", "~*"),
    "acl-deluser": ("ACL", "DELUSER", f"worker-{B}"),
    "acl-log": ("ACL", "LOG"),
    "debug": ("DEBUG", "SLEEP", 0),
    "flushall": ("FLUSHALL",),
    "flushdb": ("FLUSHDB",),
    "client-kill": ("CLIENT", "KILL", "USER", f"worker-{B}"),
    "client-list": ("CLIENT", "LIST"),
    "client-pause": ("CLIENT", "PAUSE", 1000),
    "client-no-evict": ("CLIENT", "NO-EVICT", "ON"),
    "monitor": ("MONITOR",),
    "shutdown": ("SHUTDOWN", "NOSAVE"),
    "select": ("SELECT", 1),
    "swapdb": ("SWAPDB", 0, 1),
    "move": ("MOVE", NS_A + "x", 1),
    "save": ("BGSAVE",),
    "replicaof": ("REPLICAOF", "127.0.0.1", 1),
    "object": ("OBJECT", "ENCODING", NS_A + "x"),
    "memory-usage": ("MEMORY", "USAGE", NS_A + "x"),
    "slowlog": ("SLOWLOG", "GET"),
    "latency": ("LATENCY", "LATEST"),
    "module": ("MODULE", "LIST"),
    "function-list": ("FUNCTION", "LIST"),
    "eval-own-key": ("EVAL", "return redis.call('GET', KEYS[1])", 1, NS_A + "x"),
    "eval-b-key": ("EVAL", f"return redis.call('GET', '{B_RESULT}')", 0),
    "eval-keys": ("EVAL", "return redis.call('KEYS', '*')", 0),
    "eval-flushall": ("EVAL", "return redis.call('FLUSHALL')", 0),
    "eval-ro": ("EVAL_RO", "return 1", 0),
    "script-load": ("SCRIPT", "LOAD", "return 1"),
    "script-flush": ("SCRIPT", "FLUSH"),
    "script-kill": ("SCRIPT", "KILL"),
    "fcall": ("FCALL", "f", 0),
    "subscribe-b": ("SUBSCRIBE", B_RESULT),
    "psubscribe-b": ("PSUBSCRIBE", NS_B + "*"),
    "psubscribe-own-pattern": ("PSUBSCRIBE", NS_A + "*"),
    "subscribe-pidbox": ("SUBSCRIBE", "/0.celery.pidbox"),
    "psubscribe-pidbox": ("PSUBSCRIBE", "/0.celery.pidbox"),
    "psubscribe-celeryev": ("PSUBSCRIBE", "/0.celeryev/*"),
    "publish-pidbox": ("PUBLISH", "/0.celery.pidbox", "{}"),
    "publish-pidbox-bare": ("PUBLISH", "celery.pidbox", "{}"),
    "publish-celeryev": ("PUBLISH", "/0.celeryev/worker.heartbeat", "{}"),
    "publish-b-prefixed-pidbox": ("PUBLISH", f"{NS_B}/0.celery.pidbox", "{}"),
}


@pytest.mark.usefixtures("b_untouched")
@pytest.mark.parametrize("args", list(CROSS_NAMESPACE.values()), ids=list(CROSS_NAMESPACE))
def test_a_cannot_touch_bs_namespace_or_the_key_store(users: Users, args: tuple[Any, ...]) -> None:
    with users.login(A) as client:
        refused(client, *args)


@pytest.mark.usefixtures("b_untouched")
@pytest.mark.parametrize("args", list(SERVER_COMMANDS.values()), ids=list(SERVER_COMMANDS))
def test_a_cannot_run_server_wide_commands(users: Users, args: tuple[Any, ...]) -> None:
    if args[0] == "DEBUG":  # redis-server refuses DEBUG to everyone unless enabled; ask the ACL itself
        answer = users.admin.execute_command("ACL", "DRYRUN", f"worker-{A}", *args)
        assert b"no permissions" in answer, answer
        return
    with users.login(A) as client:
        refused(client, *args)


@pytest.mark.usefixtures("b_untouched")
def test_a_still_works_in_its_own_namespace_and_its_refusals_are_logged(users: Users) -> None:
    users.admin.execute_command("ACL", "LOG", "RESET")
    with users.login(A) as client:  # the refusals are about B, not a broken login
        assert client.ping()
        assert client.llen(f"{NS_A}gpu-tasks-{A}") == 0
        assert client.set(NS_A + "workers:w-a@test", "{}", ex=5)
        assert client.publish(NS_A + "celery-task-meta-x", "{}") == 0
        refused(client, "LLEN", B_QUEUE)
    log = users.admin.acl_log(count=100)
    assert any(e.get("username") == f"worker-{A}" and e.get("object") == B_QUEUE for e in log), log


@pytest.mark.usefixtures("b_untouched")
def test_scripts_loaded_by_someone_else_cannot_be_run_either(users: Users) -> None:
    sha = users.admin.script_load(f"return redis.call('GET', '{B_RESULT}')")
    with users.login(A) as client:
        refused(client, "EVALSHA", sha, 0)
        refused(client, "EVALSHA", sha, 1, NS_A + "x")
        refused(client, "EVALSHA_RO", sha, 0)


@pytest.mark.usefixtures("b_untouched")
def test_inside_a_script_the_key_patterns_still_apply(users: Users) -> None:
    """Defence in depth: even a namespace user *given* Lua could not reach B's keys from it."""
    key = str(uuid.uuid4())
    probe = "worker-lua-probe"
    users.admin.execute_command(
        "ACL", "SETUSER", probe, *acl_rules(A, [hash_api_key(key)]), "+eval", "+evalsha"
    )
    try:
        client = redis.Redis(
            port=users.admin.connection_pool.connection_kwargs["port"], username=probe, password=key
        )
        with client:
            for script in (
                f"return redis.call('GET', '{B_RESULT}')",
                f"return redis.call('HGETALL', '{NS_B}unacked')",
                f"return redis.call('RPUSH', '{B_QUEUE}', 'x')",
                "return redis.call('KEYS', '*')",
                "return redis.call('SCAN', 0)",
                "return redis.call('FLUSHALL')",
                "return redis.call('PUBLISH', '/0.celery.pidbox', 'x')",
            ):
                with pytest.raises(
                    redis.ResponseError, match="(?i)permission|The user executing the script can.t|NOPERM"
                ):
                    client.eval(script, 1, NS_A + "x")
    finally:
        users.admin.execute_command("ACL", "DELUSER", probe)


@pytest.mark.usefixtures("b_untouched")
def test_prefix_collision_u1_does_not_reach_u12(users: Users) -> None:
    with users.login("u1") as u1, users.login("u12") as u12:
        for key in ("morag:ns:u12:gpu-tasks-u12", "morag:ns:u12:unacked", "morag:ns:u12:celery-task-meta-x"):
            refused(u1, "GET" if "meta" in key else "LLEN" if "tasks" in key else "HGETALL", key)
        refused(u12, "LLEN", "morag:ns:u1:gpu-tasks-u1")
        refused(u1, "PUBLISH", "morag:ns:u12:celery-task-meta-x", "x")
        assert u1.llen("morag:ns:u1:gpu-tasks-u1") == 0


def test_the_acl_permits_exactly_the_allowlist(users: Users) -> None:
    """ACL DRYRUN of every command this server knows, with arguments in A's own namespace."""
    server = redis.Redis(
        port=users.admin.connection_pool.connection_kwargs["port"], protocol=2, decode_responses=True
    )
    permitted, unchecked = set(), set()
    own_key = NS_A + "k"
    for name, info in server.command().items():
        entries = [(name, info["arity"])] + [(sub[0], sub[1]) for sub in info.get("subcommands") or []]
        for full, arity in entries:
            if info.get("subcommands") and full == name:
                continue  # a container command is permitted per subcommand
            words = full.split("|")
            args = [*words, *[own_key] * max(0, abs(int(arity)) - len(words))]
            try:
                answer = server.execute_command("ACL", "DRYRUN", f"worker-{A}", *args)
            except redis.ResponseError:
                unchecked.add(full)
                continue
            if answer == "OK":
                permitted.add(full)
    server.close()
    # Redis never checks AUTH, HELLO, QUIT and RESET against a user's command rules.
    assert permitted - {"auth", "hello", "quit", "reset"} == set(ALLOWED_COMMANDS)
    assert not unchecked & set(ALLOWED_COMMANDS), unchecked
    assert len(unchecked) < 10, f"too many commands the dry run could not check: {sorted(unchecked)}"


# --- Forged work planted for B -------------------------------------------------------------------


def test_a_forged_delivery_for_b_is_refused_and_b_never_runs_it(
    stack: Stack, users: Users, tmp_path: Path
) -> None:
    forged_id = str(uuid.uuid4())
    body = [["http://169.254.169.254/latest/meta-data/", B, None, {}], {}, {}]
    forged = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"id": forged_id, "task": "morag.worker.process_url_task_remote", "lang": "py"},
        "properties": {"delivery_tag": "forged", "delivery_info": {"exchange": "", "routing_key": ""}},
    }
    entry = json.dumps([forged, "", f"gpu-tasks-{B}"])
    with users.login(A) as client:
        refused(client, "HSET", NS_B + "unacked", "forged", entry)
        refused(client, "ZADD", NS_B + "unacked_index", 1, "forged")
        refused(client, "LPUSH", B_QUEUE, json.dumps(forged))
        pipe = client.pipeline(transaction=True)
        pipe.hset(NS_B + "unacked", "forged", entry).zadd(NS_B + "unacked_index", {"forged": 1})
        with pytest.raises(redis.ResponseError):
            pipe.execute()
    assert users.admin.hget(NS_B + "unacked", "forged") is None
    # B's worker starts afterwards and runs only B's own, real task. Then B's namespace is planted
    # again for the other tests here.
    users.admin.delete(B_QUEUE, NS_B + "unacked", NS_B + "unacked_index")
    worker = stack.start_worker(B, users.keys[B], name="w-b@test")
    try:
        client = stack.client(users.keys[B])
        note = tmp_path / "b.txt"
        note.write_text("b's real task\n")
        task_id = client.create_task(file_id=client.upload(note)["file_id"])["task_id"]
        view = wait_for(lambda: (v := client.task(task_id)).done and v, 120, "b's task to finish")
        assert view.result is not None and view.result["success"] and "real task" in view.result["content"]
        assert view.result["metadata"]["worker_hostname"] == "w-b@test"
        assert forged_id not in worker.output()
        assert worker.output().count("task.done") == 1, worker.output()[-3000:]
    finally:
        worker.stop()
        plant_bs_namespace(users.admin)


def test_a_running_worker_exposes_nothing_shared(stack: Stack, tmp_path: Path) -> None:
    """No pidbox or event subscriptions, and its presence, progress and results only in its namespace."""
    user, hostname = "quiet", "w@quiet"
    key = stack.key(user)
    stack.start_worker(user, key, name=hostname)
    client = stack.client(key)
    wait_for(client.workers, what="the worker's presence")
    view = run_task(client, tmp_path, "nothing shared\n")
    assert view.result is not None and view.result["success"], view
    admin = stack.redis.client()
    channels = [c.decode() for c in admin.pubsub_channels()]
    assert not [c for c in channels if "pidbox" in c or "celeryev" in c], channels
    assert admin.pubsub_numpat() == 0
    workers = [c for c in admin.client_list() if c.get("user", "").startswith("worker-")]
    assert any(c["user"] == f"worker-{user}" for c in workers)
    for conn in workers:
        assert (conn["sub"], conn["psub"]) == ("0", "0"), conn
    ns = f"morag:ns:{user}:"
    keys = {k.decode() for k in admin.scan_iter(count=1000)}
    server_side = ("morag:api_keys:", "morag:users:", "morag:hub:tasks:", "morag:ratelimit:", "morag:ns:")
    assert not [k for k in keys if not k.startswith(server_side)], sorted(keys)
    mine = {k for k in keys if k.startswith(ns)}
    assert f"{ns}workers:{hostname}" in mine
    assert f"{ns}celery-task-meta-{view.task_id}" in mine
    assert f"{ns}_kombu.binding.gpu-tasks-{user}" in mine
    assert not [k for k in keys if "pidbox" in k or "celeryev" in k]
    about_task = {k for k in keys if view.task_id in k} - mine
    assert about_task == {f"morag:hub:tasks:{view.task_id}"}  # the hub's own index of who owns it


# --- Revoked and expired keys ----------------------------------------------------------------------


def keys_cli(stack: Stack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python_argv("-m", "morag_worker", "keys", *args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=base_env(REDIS_URL=stack.redis.url),
    )


def can_log_in(stack: Stack, user: str, key: str) -> bool:
    client = redis.Redis(port=stack.redis.port, username=f"worker-{user}", password=key, socket_timeout=5)
    try:
        return bool(client.ping())
    except AuthenticationError:
        return False
    finally:
        client.close()


def hub_status(stack: Stack, key: str) -> int:
    return requests.get(
        stack.hub_url + "/api/v1/auth/queue-info", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).status_code


def logged_in_as(stack: Stack, user: str) -> int:
    clients = stack.redis.client().client_list()
    return sum(1 for c in clients if c.get("user") == f"worker-{user}")


def wait_refused(worker: Proc) -> None:
    wait_for(
        lambda: any(worker.saw(text) for text in AUTH_REFUSED),
        what=f"{worker.name} to report that Redis refused its login",
    )


def run_task(client: HubClient, tmp_path: Path, text: str) -> TaskView:
    note = tmp_path / f"{uuid.uuid4().hex}.txt"
    note.write_text(text)
    task_id = client.create_task(file_id=client.upload(note)["file_id"])["task_id"]
    return wait_for(lambda: (v := client.task(task_id)).done and v, 120, "the task to finish")


def test_revoking_one_key_disconnects_its_worker_for_good_and_spares_the_other(
    stack: Stack, tmp_path: Path
) -> None:
    user = "rv"
    revoked, kept = stack.key(user), stack.key(user)
    doomed = stack.start_worker(user, revoked, name="doomed@rv")
    survivor = stack.start_worker(user, kept, name="survivor@rv")
    done = keys_cli(stack, "revoke", "-", stdin=revoked + "\n")
    assert done.returncode == 0, done.stderr
    assert not can_log_in(stack, user, revoked) and can_log_in(stack, user, kept)
    assert hub_status(stack, revoked) == 401 and hub_status(stack, kept) == 200
    wait_refused(doomed)
    # The survivor logs in again with its own key and keeps serving; the doomed one takes nothing.
    view = run_task(stack.client(kept), tmp_path, "after the revocation\n")
    assert view.result is not None and view.result["success"], view
    assert view.result["metadata"]["worker_hostname"] == "survivor@rv"
    assert not doomed.saw(view.task_id)
    assert revoked not in doomed.output() and revoked not in survivor.output()
    for proc in (doomed, survivor):
        proc.stop()


def test_revoking_the_last_key_removes_the_acl_user(stack: Stack) -> None:
    user = "solo"
    key = stack.key(user)
    worker = stack.start_worker(user, key, name="w@solo")
    wait_for(lambda: logged_in_as(stack, user) > 0, what="the worker to be connected")
    done = keys_cli(stack, "revoke", hash_api_key(key))
    assert done.returncode == 0, done.stderr
    assert stack.redis.client().acl_getuser(f"worker-{user}") is None
    assert logged_in_as(stack, user) == 0  # ACL DELUSER disconnects at once
    assert not can_log_in(stack, user, key) and hub_status(stack, key) == 401
    wait_refused(worker)
    assert logged_in_as(stack, user) == 0
    worker.stop()


def test_keys_sweep_of_an_expired_key_does_the_same(stack: Stack) -> None:
    user = "ex"
    key = stack.key(user, expires_days=1)
    worker = stack.start_worker(user, key, name="w@ex")
    admin = stack.redis.client()
    record_key = KEY_PREFIX + hash_api_key(key)
    record = json.loads(admin.get(record_key))
    record["expires_at"] = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    admin.set(record_key, json.dumps(record))
    assert hub_status(stack, key) == 401  # expired keys stop validating before any sweep
    done = keys_cli(stack, "sweep")
    assert done.returncode == 0 and "Removed 1" in done.stderr, done.stderr
    assert admin.get(record_key) is None and not admin.exists(USER_INDEX_PREFIX + user)
    assert not can_log_in(stack, user, key)
    wait_refused(worker)
    assert logged_in_as(stack, user) == 0
    worker.stop()
