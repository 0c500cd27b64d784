"""Redis ACL users that make per-user isolation a property of the broker (DESIGN §3).

``worker-{user_id}`` may log in with any of the user's live API keys (its passwords are exactly
their SHA-256 hashes), touch only keys and channels under ``morag:ns:{user_id}:``, and run only the
commands a kombu consumer with acks-late and the Redis result backend send. The allowlist was
derived by running the pinned Celery 5.7.0 / kombu 5.7.0 / redis-py 8.1.0 worker under this ACL
and reading ``ACL LOG`` (see tests/integration/test_acl.py); re-derive it when those pins move.
"""

from __future__ import annotations

from typing import Any

import structlog

from .auth import KEY_PREFIX, USER_INDEX_PREFIX, ApiKeyRecord
from .naming import acl_username, namespace_prefix, validate_user_id

__all__ = ["ALLOWED_COMMANDS", "RedisAclHook", "acl_rules"]

log = structlog.get_logger(__name__)

ALLOWED_COMMANDS: tuple[str, ...] = (
    # connection
    "ping",
    "hello",
    "auth",
    "client|setname",
    "client|id",
    "select",
    "quit",
    "reset",
    # consuming (kombu Redis transport, acks_late emulation with unacked/unacked_index/mutex)
    "brpop",
    "rpop",
    "llen",
    "lpush",
    "rpush",
    "sadd",
    "smembers",
    "srem",
    "hset",
    "hget",
    "hdel",
    "zadd",
    "zrem",
    "zrange",
    "zrangebyscore",
    "set",
    "get",
    "setex",
    "del",
    "exists",
    "expire",
    "pexpire",
    "evalsha",
    "script|load",
    "script|exists",
    "time",
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    # result backend: state updates, results, their notifications
    "publish",
    "mget",
)


def acl_rules(user_id: str, key_hashes: list[str]) -> list[str]:
    """The ``ACL SETUSER`` arguments for ``user_id`` with exactly ``key_hashes`` as passwords."""
    prefix = namespace_prefix(validate_user_id(user_id))
    rules = ["reset", "on" if key_hashes else "off"]
    rules += [f"#{h}" for h in sorted(key_hashes)]
    rules += [f"~{prefix}*", f"&{prefix}*", "-@all"]
    rules += [f"+{command}" for command in ALLOWED_COMMANDS]
    return rules


class RedisAclHook:
    """Keeps ``worker-{user_id}`` in step with the user's live keys (admin connection)."""

    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    async def key_added(self, user_id: str, key_hash: str) -> None:
        await self.sync_user(user_id)

    async def key_removed(self, user_id: str, key_hash: str) -> None:
        await self.sync_user(user_id, drop_connections=True)

    async def live_hashes(self, user_id: str) -> list[str]:
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        hashes = []
        for raw in await self._redis.smembers(USER_INDEX_PREFIX + user_id):
            key_hash = raw.decode() if isinstance(raw, bytes) else raw
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

    async def sync_user(self, user_id: str, *, drop_connections: bool = False) -> None:
        """Make the ACL user match the live keys; delete it when none is left."""
        username = acl_username(user_id)
        hashes = await self.live_hashes(user_id)
        if hashes:
            await self._redis.execute_command("ACL", "SETUSER", username, *acl_rules(user_id, hashes))
            if drop_connections:
                # Connections already logged in keep working after a password is removed; drop
                # them so every worker logs in again, and one whose key was revoked is refused.
                await self._redis.execute_command("CLIENT", "KILL", "USER", username)
        else:
            # Deleting the user also disconnects every client logged in as it.
            await self._redis.execute_command("ACL", "DELUSER", username)
        log.info("acl.synced", user=username, keys=len(hashes))

    async def sync_all(self) -> int:
        """Re-provision every user from the key store (ACLs do not survive a Redis restart)."""
        count = 0
        async for raw in self._redis.scan_iter(match=USER_INDEX_PREFIX + "*", count=500):
            name = raw.decode() if isinstance(raw, bytes) else raw
            await self.sync_user(name[len(USER_INDEX_PREFIX) :])
            count += 1
        return count
