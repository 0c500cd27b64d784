"""Redis ACL users that make per-user isolation a property of the broker (DESIGN §3).

``worker-{user_id}`` may log in with any of the user's live API keys (its passwords are exactly
their SHA-256 hashes), touch only keys and channels under ``morag:ns:{user_id}:``, and run only the
commands in ``ALLOWED_COMMANDS``. Runs on the caller's event loop (hub, ``keys`` CLI, demo) over an
admin ``redis.asyncio`` connection.

How the allowlist was derived, and how to derive it again when Celery, kombu or redis-py move
(it was derived on Celery 5.7.0, kombu 5.7.0, redis-py 8.1.0 and Redis 7.0.15):
``tests/integration/test_acl.py`` puts a recording proxy between real worker children and Redis
and runs them through a normal task, a finish (SIGTERM), a stop-now (SIGQUIT), a pool child killed
mid-task (requeued at once), and a kill -9 whose task the hub's watchdog restores after the
visibility timeout for another worker to run. ``ACL LOG`` must stay empty, every recorded command
must be allowed, and every allowed command must have been recorded or be listed in
``UNEXERCISED`` with the path that needs it. When a pin moves, run that module: it names what to
add and what to drop.

Not listed because Redis never checks them against a user's command rules: ``AUTH``, ``HELLO``,
``QUIT`` and ``RESET``.
Left out on purpose: Lua (``EVAL``, ``EVALSHA``, ``SCRIPT``, ``FCALL``: a script that writes and
then loops forever cannot be killed and stops Redis for everyone; see ``core/remote_transport.py``
for what that costs), ``SELECT`` (the broker must be database 0), everything kombu needs only for
remote control, events, fanout exchanges or expiring queues (``PSUBSCRIBE``, ``TIME``,
``ZRANGEBYSCORE``, ``PEXPIRE``...), the synchronous ``RPOP`` path, and all result-reading and chord
commands (``MGET``, ``EXPIRE``, ``SUBSCRIBE``...), which only the server side sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import structlog
from redis.exceptions import ResponseError

from morag_worker.core.auth import KEY_PREFIX, USER_INDEX_PREFIX, ApiKeyRecord
from morag_worker.core.naming import acl_username, namespace_prefix, validate_user_id

__all__ = [
    "ALLOWED_COMMANDS",
    "HUB_ADMIN_RULES",
    "MARKER_USER",
    "OPTIONAL_COMMANDS",
    "UNEXERCISED",
    "RedisAclHook",
    "acl_rules",
]

log = structlog.get_logger(__name__)

ALLOWED_COMMANDS: tuple[str, ...] = (
    # Connection health: redis-py's health check and kombu's check of a new channel.
    "ping",
    # Consuming: SADD of the queue's binding when it is declared, LLEN of the queue, BRPOP on the
    # queue and its priority sub-queues.
    "sadd",
    "llen",
    "brpop",
    # Ack emulation (acks_late): a delivery is remembered in ``unacked`` (HSET) and
    # ``unacked_index`` (ZADD) and forgotten on ack (ZREM, HDEL), each in a MULTI/EXEC pipeline.
    "hset",
    "zadd",
    "zrem",
    "hdel",
    "multi",
    "exec",
    # Putting a delivery back (a stop-now worker puts back what it had taken as it shuts down; a
    # pool child lost mid-task has its task requeued): WATCH ``unacked``, HGET the message, then
    # MULTI/EXEC that forgets it and pushes it back (RPUSH, or LPUSH to the front for a requeue).
    # Stale deliveries of a worker that died are restored by the hub's watchdog, never by a
    # worker: kombu does that under a lock that redis-py releases with Lua, and Lua (EVALSHA,
    # SCRIPT LOAD) is not allowed here.
    "watch",
    "unwatch",
    "hget",
    "rpush",
    "lpush",
    # Result backend: GET of the current state before writing, SETEX of the state or result,
    # PUBLISH of it on the task's channel.
    "get",
    "setex",
    "publish",
    # Presence: SET with a TTL while running, DEL on the way out.
    "set",
    "del",
)

# Sent by redis-py 8.1 on every connection, errors ignored; harmless (they describe the
# connection itself). Allowed only where the server knows them (Redis 7.0 does not), so that a
# newer server does not fill ACL LOG with denials.
OPTIONAL_COMMANDS: tuple[str, ...] = ("client|setinfo", "client|maint_notifications")

# Allowed commands the flows in tests/integration/test_acl.py do not send, and why they stay.
UNEXERCISED: dict[str, str] = {
    "unwatch": "redis-py's pipeline reset after an error between WATCH and EXEC in a restore",
}

# The rules of the admin ACL user the hub (and the MoRAG server's submitter) should log in as in
# production, after ``ACL SETUSER <name> on #<sha256 of its password>``: everything but the
# dangerous commands, except the ACL and CLIENT KILL subcommands that keep workers' users in step
# (see SECURITY.md; tests/integration/test_hub_maintenance.py runs the hub as such a user).
HUB_ADMIN_RULES: tuple[str, ...] = (
    "~*",
    "&*",
    "+@all",
    "-@dangerous",
    "+acl|setuser",
    "+acl|deluser",
    "+acl|getuser",
    "+client|kill",
)

# A disabled ACL user with no rights, made by ``sync_all`` once every user is provisioned: its
# absence means Redis lost its ACL users (a restart without an ACL file).
MARKER_USER = "morag-acl-marker"
_PROBE_USER = "morag-acl-probe"  # disabled, no rights, deleted right after each probe


def acl_rules(user_id: str, key_hashes: Iterable[str], extra_commands: Iterable[str] = ()) -> list[str]:
    """The ``ACL SETUSER`` arguments for ``user_id`` with exactly ``key_hashes`` as passwords."""
    prefix = namespace_prefix(validate_user_id(user_id))
    hashes = sorted(key_hashes)
    rules = ["reset", "on" if hashes else "off"]
    rules += [f"#{h}" for h in hashes]
    rules += [f"~{prefix}*", f"&{prefix}*", "-@all"]
    rules += [f"+{command}" for command in (*ALLOWED_COMMANDS, *extra_commands)]
    return rules


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisAclHook:
    """Keeps ``worker-{user_id}`` in step with the user's live keys (admin connection)."""

    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client
        self._optional: tuple[str, ...] | None = None

    async def key_added(self, user_id: str, key_hash: str) -> None:
        await self.sync_user(user_id)

    async def key_removed(self, user_id: str, key_hash: str) -> None:
        await self.sync_user(user_id, drop_connections=True)

    async def live_hashes(self, user_id: str) -> list[str]:
        now = datetime.now(UTC)
        hashes = []
        for raw in await self._redis.smembers(USER_INDEX_PREFIX + user_id):
            key_hash = _text(raw)
            data = await self._redis.get(KEY_PREFIX + key_hash)
            if data is None:
                continue
            try:
                record = ApiKeyRecord.from_json(key_hash, data)
            except (ValueError, KeyError, TypeError):
                continue
            if record.active and not record.expired(now):
                hashes.append(key_hash)
        return hashes

    async def optional_commands(self) -> tuple[str, ...]:
        """Those of ``OPTIONAL_COMMANDS`` this server can name in an ACL rule (probed once)."""
        if self._optional is None:
            known = []
            try:
                for command in OPTIONAL_COMMANDS:
                    try:
                        await self._redis.execute_command("ACL", "SETUSER", _PROBE_USER, "off", f"+{command}")
                        known.append(command)
                    except ResponseError:
                        pass  # "Unknown command": this server has no such command
            finally:
                await self._redis.execute_command("ACL", "DELUSER", _PROBE_USER)
            self._optional = tuple(known)
        return self._optional

    async def sync_user(self, user_id: str, *, drop_connections: bool = False) -> None:
        """Make the ACL user match the live keys; delete it when none is left."""
        username = acl_username(user_id)
        hashes = await self.live_hashes(user_id)
        if hashes:
            rules = acl_rules(user_id, hashes, await self.optional_commands())
            await self._redis.execute_command("ACL", "SETUSER", username, *rules)
            if drop_connections:
                # Connections already logged in keep working after a password is removed; drop
                # them so every worker logs in again, and one whose key was revoked is refused.
                await self._redis.execute_command("CLIENT", "KILL", "USER", username)
        else:
            # Deleting the user also disconnects every client logged in as it.
            await self._redis.execute_command("ACL", "DELUSER", username)
        log.info("acl.synced", user=username, keys=len(hashes))

    async def acls_present(self) -> bool:
        """False once Redis has lost the ACL users this hook made (e.g. it restarted)."""
        return await self._redis.acl_getuser(MARKER_USER) is not None

    async def sync_all(self) -> int:
        """Re-provision every user from the key store (ACLs do not survive a Redis restart)."""
        self._optional = None  # the server may have changed too
        count = 0
        async for raw in self._redis.scan_iter(match=USER_INDEX_PREFIX + "*", count=500):
            await self.sync_user(_text(raw)[len(USER_INDEX_PREFIX) :])
            count += 1
        await self._redis.execute_command("ACL", "SETUSER", MARKER_USER, "reset", "off")
        log.info("acl.synced_all", users=count)
        return count


def create_provisioned_key(
    redis_url: str,
    user_id: str,
    description: str = "",
    expires_days: int | None = None,
    *,
    role: str = "user",
) -> str:
    """Create a key for ``user_id`` and its broker access, from synchronous code (demo, tests, benches).

    ``role``: ``user`` or ``server`` (``KeyRole``); either gets the same per-user broker access.
    Opens its own admin connection and event loop; not for use inside a running event loop.
    """
    import asyncio

    import redis.asyncio as aioredis

    from morag_worker.core.auth import APIKeyService

    async def create() -> str:
        client = aioredis.Redis.from_url(redis_url)
        try:
            service = APIKeyService(client, access_hook=RedisAclHook(client))
            return await service.create_api_key(user_id, description, expires_days, role=role)
        finally:
            await client.aclose()

    return asyncio.run(create())
