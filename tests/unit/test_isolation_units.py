"""Isolation pieces without worker processes: ACL rules, the remote transport, hub maintenance."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from kombu.connection import Connection

from morag_worker.core.cli.parser import build_parser
from morag_worker.core.execution.celery_config import base_config, remote_worker_config, tls_options
from morag_worker.core.execution.contributor_transport import ALIAS, QoS, Transport, register
from morag_worker.core.logging import redact
from morag_worker.core.naming import InvalidUserId
from morag_worker.core.server.acl import (
    ALLOWED_COMMANDS,
    MARKER_USER,
    OPTIONAL_COMMANDS,
    RedisAclHook,
    acl_rules,
)
from morag_worker.core.server.hub.maintenance import HubMaintenance
from tests.fakes import FakeAclHook, FakeKeySweeper, FakeWatchdog
from tests.processes import RedisServer

pytestmark = pytest.mark.unit

# Never on a contributor's ACL: Lua, key listing, server administration, shared pub/sub.
FORBIDDEN = {
    "eval", "evalsha", "script|load", "fcall", "keys", "scan", "randomkey", "select", "subscribe",
    "psubscribe", "config|get", "client|kill", "client|list", "monitor", "flushall", "debug", "info",
}  # fmt: skip


def test_rules_confine_a_user_to_its_namespace_and_its_live_key_hashes() -> None:
    rules = acl_rules("u1", ["b" * 64, "a" * 64])
    assert rules[:2] == ["reset", "on"]
    assert rules[2:4] == ["#" + "a" * 64, "#" + "b" * 64]
    assert "~morag:ns:u1:*" in rules and "&morag:ns:u1:*" in rules
    assert rules.index("-@all") < rules.index("+ping")
    assert not any(r.startswith(("~", "&", "%")) and "u1:" not in r for r in rules)
    assert not FORBIDDEN & {r[1:] for r in rules if r.startswith("+")}
    assert not any(
        r.startswith("+@") or r in ("allkeys", "allchannels", "allcommands", "nopass") for r in rules
    )


def test_rules_without_keys_are_off_and_bad_ids_are_refused() -> None:
    assert acl_rules("u1", [])[:2] == ["reset", "off"]
    for bad in ("u*", "a:b", "", "x" * 65, "u?", "[u]"):
        with pytest.raises(InvalidUserId):
            acl_rules(bad, [])


def test_the_allowlist_has_no_duplicates_and_no_forbidden_command() -> None:
    assert len(set(ALLOWED_COMMANDS)) == len(ALLOWED_COMMANDS)
    assert not FORBIDDEN & set(ALLOWED_COMMANDS)
    assert not set(OPTIONAL_COMMANDS) & set(ALLOWED_COMMANDS)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    yield redis_server.url


def test_optional_commands_are_probed_without_leaving_users_behind(redis_url: str) -> None:
    async def probe() -> tuple[tuple[str, ...], list[Any]]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            known = await RedisAclHook(client).optional_commands()
            return known, await client.acl_users()
        finally:
            await client.aclose()

    known, users = asyncio.run(probe())
    assert set(known) <= set(OPTIONAL_COMMANDS)
    assert [u.decode() if isinstance(u, bytes) else u for u in users] == ["default"]


def test_sync_all_leaves_the_marker_that_says_acls_are_present(redis_url: str) -> None:
    async def run() -> tuple[bool, bool, bool]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            hook = RedisAclHook(client)
            before = await hook.acls_present()
            await hook.sync_all()
            after = await hook.acls_present()
            await client.execute_command("ACL", "DELUSER", MARKER_USER)  # as a restart would
            return before, after, await hook.acls_present()
        finally:
            await client.aclose()

    assert asyncio.run(run()) == (False, True, False)


def test_remote_workers_use_the_transport_that_never_restores_stale_deliveries() -> None:
    config = remote_worker_config({"REDIS_URL": "redis://127.0.0.1:1/0", "MORAG_API_KEY": "k"}, "u1")
    assert config["broker_transport"] == ALIAS
    register()
    connection = Connection(config["broker_url"], transport=config["broker_transport"])
    assert connection.transport_cls == ALIAS
    assert issubclass(cast(type, connection.transport.__class__), Transport)
    assert Transport.Channel.QoS is QoS
    qos = QoS.__new__(QoS)  # no channel: restore_visible must not need (or touch) one
    assert qos.restore_visible(num=10, interval=1) is None
    assert connection.as_uri().startswith(f"{ALIAS}://")


def maintenance(
    acl: FakeAclHook, keys: FakeKeySweeper, watchdog: FakeWatchdog | None = None
) -> HubMaintenance:
    return HubMaintenance(cast(Any, keys), cast(Any, acl), cast(Any, watchdog), interval_s=1.0)


def test_the_first_round_provisions_every_user_and_later_ones_only_after_a_loss() -> None:
    acl, keys, watchdog = FakeAclHook(), FakeKeySweeper(removed=2), FakeWatchdog({"u1": 1})
    loop = maintenance(acl, keys, watchdog)
    first = asyncio.run(loop.run_once())
    assert (first.users_synced, first.keys_swept, first.deliveries_restored) == (3, 2, 1)
    assert not first.errors
    second = asyncio.run(loop.run_once())
    assert second.users_synced is None and acl.syncs == 1
    acl.present = False  # Redis restarted
    third = asyncio.run(loop.run_once())
    assert third.users_synced == 3 and acl.syncs == 2
    assert keys.sweeps == 3 and watchdog.runs == 3


def test_a_failing_step_does_not_stop_the_others_and_is_retried() -> None:
    acl, keys, watchdog = FakeAclHook(), FakeKeySweeper(error=ConnectionError("redis away")), FakeWatchdog()
    acl.error = ConnectionError("redis away")
    loop = maintenance(acl, keys, watchdog)
    failed = asyncio.run(loop.run_once())
    assert set(failed.errors) == {"acl", "sweep"} and watchdog.runs == 1
    acl.error, keys.error = None, None
    recovered = asyncio.run(loop.run_once())
    assert recovered.users_synced == 3 and not recovered.errors


def test_hub_flags_for_the_maintenance_interval_and_visibility_timeout() -> None:
    args = build_parser().parse_args(["hub", "--maintenance-interval", "1.5", "--visibility-timeout", "5"])
    assert (args.maintenance_interval, args.visibility_timeout) == (1.5, 5.0)
    defaults = build_parser().parse_args(["hub"])
    assert (defaults.maintenance_interval, defaults.visibility_timeout) == (60.0, None)
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["hub", "--maintenance-interval", bad])


def test_task_ids_stay_readable_in_logs_while_keys_do_not() -> None:
    """The isolation tests follow a task through worker logs by its id (a UUID)."""
    task_id = "7af1d00d-2c25-4578-a17f-891d92ae5e8a"
    key = "Zx4-" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9"
    assert redact(f"task {task_id} done with key {key}") == f"task {task_id} done with key [REDACTED]"


def test_rediss_urls_verify_the_certificate_for_broker_and_results() -> None:
    env = {"REDIS_URL": "rediss://redis.example:6380/0", "REDIS_CA_CERTS": "/etc/morag/ca.pem"}
    config = base_config(env)
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/morag/ca.pem"}
    assert config["broker_use_ssl"] == expected == config["redis_backend_use_ssl"]
    remote = remote_worker_config({**env, "MORAG_API_KEY": "k"}, "u1")
    assert remote["broker_url"].startswith("rediss://worker-u1:k@") and remote["broker_use_ssl"] == expected
    assert "broker_use_ssl" not in base_config({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert tls_options("rediss://h/0", {}) == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
