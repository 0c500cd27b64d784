"""API keys: creation, validation, revocation and expiry, stored hashed in Redis (DESIGN §3).

The seed's interface is kept (``async create_api_key / validate_api_key``, ``get_user_queue_name``),
for a synchronous ``redis.Redis`` (as the seed's own test snippet passes) and a ``redis.asyncio.Redis``
alike: the service talks to Redis only through ``_KeyStore``, which hides which of the two it got.
Only ``sha256(key)`` is stored: ``morag:api_keys:{hash}`` holds the JSON record and
``morag:users:{user_id}`` indexes a user's hashes. A key without expiry never expires (the seed gave
every key a 365-day TTL). Expired keys stop validating at once; ``sweep_expired`` removes them and,
through the optional ``KeyAccessHook``, their broker credentials.

A key has a role (``KeyRole``): ``user``, the default and what every record without the field
reads as, or ``server``, given only explicitly at creation. A server key may additionally submit
local tasks (``remote: false``) through the hub, which reach the server's own workers on the
plain ``celery`` queue; its broker access is the same per-user ACL as any key's.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import redis
import structlog

from morag_worker.core.naming import WorkerType, queue_name, validate_user_id

__all__ = [
    "APIKeyService",
    "ApiKeyRecord",
    "KeyAccessHook",
    "KeyRole",
    "UnknownKey",
    "hash_api_key",
]

log = structlog.get_logger(__name__)

KEY_PREFIX = "morag:api_keys:"
USER_INDEX_PREFIX = "morag:users:"
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_KEY_LENGTH = 256


class KeyRole(StrEnum):
    """What a key may do beyond its own user's work."""

    USER = "user"  # its own user's queues, files, tasks and workers only
    SERVER = "server"  # also local tasks (the server's own workers), through the hub

    @classmethod
    def parse(cls, value: object) -> KeyRole:
        """``value`` as a role; ValueError (naming the choices) for anything else."""
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)
        choices = ", ".join(repr(r.value) for r in cls)
        raise ValueError(f"unknown key role {str(value)[:40]!r}: use one of {choices}")


class UnknownKey(LookupError):
    """Revoking a key or hash that the store does not hold."""


class KeyAccessHook(Protocol):
    """Keeps something else (the Redis ACL) in step with the set of live keys of a user."""

    async def key_added(self, user_id: str, key_hash: str) -> None: ...

    async def key_removed(self, user_id: str, key_hash: str) -> None: ...


def hash_api_key(api_key: str) -> str:
    """The SHA-256 hex digest under which a key is stored (and its Redis ACL password hash)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKeyRecord:
    """What the store knows about one key (never the key itself)."""

    key_hash: str
    user_id: str
    description: str
    created_at: datetime
    expires_at: datetime | None
    active: bool
    role: KeyRole = KeyRole.USER

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_dict(self) -> dict[str, Any]:
        """The seed's record shape (ISO times), as ``validate_api_key`` returns it."""
        data = asdict(self)
        data.pop("key_hash")
        data["created_at"] = self.created_at.isoformat()
        data["expires_at"] = self.expires_at.isoformat() if self.expires_at else None
        data["role"] = self.role.value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, key_hash: str, raw: str | bytes) -> ApiKeyRecord:
        data = json.loads(raw)
        expires = data.get("expires_at")
        return cls(
            key_hash=key_hash,
            user_id=validate_user_id(data["user_id"]),
            description=str(data.get("description") or ""),
            created_at=_aware(datetime.fromisoformat(data["created_at"])),
            expires_at=_aware(datetime.fromisoformat(expires)) if expires else None,
            active=bool(data.get("active", True)),
            # Records written before roles existed have no field: they are user keys.
            role=KeyRole.parse(data.get("role", KeyRole.USER)),
        )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class _KeyStore:
    """The five Redis operations the service needs, awaitable whatever client it was given.

    A synchronous client's calls block the event loop for one round trip each, as the seed's own
    code does; the hub passes an asyncio client.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._sync = isinstance(client, redis.Redis | redis.RedisCluster)

    async def _result(self, value: Any) -> Any:
        return value if self._sync else await value

    async def get(self, key: str) -> bytes | str | None:
        result: bytes | str | None = await self._result(self._client.get(key))
        return result

    async def members(self, key: str) -> set[bytes | str]:
        result: set[bytes | str] = await self._result(self._client.smembers(key))
        return result

    async def keys_matching(self, pattern: str) -> list[bytes | str]:
        if self._sync:
            return list(self._client.scan_iter(match=pattern, count=500))
        return [key async for key in self._client.scan_iter(match=pattern, count=500)]

    async def add(self, record: ApiKeyRecord) -> None:
        """The record and its entry in the user's index, in one transaction."""
        pipe = self._client.pipeline(transaction=True)
        pipe.set(KEY_PREFIX + record.key_hash, record.to_json())
        pipe.sadd(USER_INDEX_PREFIX + record.user_id, record.key_hash)
        await self._execute(pipe)

    async def remove(self, record: ApiKeyRecord) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(KEY_PREFIX + record.key_hash)
        pipe.srem(USER_INDEX_PREFIX + record.user_id, record.key_hash)
        await self._execute(pipe)

    async def _execute(self, pipe: Any) -> None:
        if self._sync:
            with pipe:
                pipe.execute()
        else:
            async with pipe:
                await pipe.execute()


class APIKeyService:
    """Creates and checks API keys. ``redis_client``: ``redis.Redis`` or ``redis.asyncio.Redis``
    with admin rights."""

    def __init__(
        self,
        redis_client: Any,
        *,
        access_hook: KeyAccessHook | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = _KeyStore(redis_client)
        self._hook = access_hook
        self._now = clock

    async def create_api_key(
        self,
        user_id: str,
        description: str = "",
        expires_days: int | None = None,
        *,
        role: KeyRole | str = KeyRole.USER,
    ) -> str:
        """Create a key for ``user_id`` and return it; only its hash is stored.

        ``role`` is keyword-only so that the seed's positional calls keep meaning what they meant:
        a server key is only ever made by asking for one by name.
        """
        validate_user_id(user_id)
        key_role = KeyRole.parse(role)
        if expires_days is not None and expires_days <= 0:
            raise ValueError("expires_days must be a positive number of days")
        api_key = secrets.token_urlsafe(32)
        now = self._now()
        record = ApiKeyRecord(
            key_hash=hash_api_key(api_key),
            user_id=user_id,
            description=description,
            created_at=now,
            expires_at=now + timedelta(days=expires_days) if expires_days else None,
            active=True,
            role=key_role,
        )
        await self._store.add(record)
        if self._hook is not None:
            await self._hook.key_added(user_id, record.key_hash)
        log.info(
            "api_key.created",
            user_id=user_id,
            key_hash=record.key_hash[:12],
            expires_at=record.expires_at.isoformat() if record.expires_at else None,
            role=key_role.value,
        )
        return api_key

    async def lookup(self, api_key: str) -> ApiKeyRecord | None:
        """The live record of ``api_key``, or None when unknown, revoked or expired."""
        name = self.record_name(api_key)
        return None if name is None else self.live_record(api_key, await self._store.get(name))

    def record_name(self, api_key: str) -> str | None:
        """The Redis key of ``api_key``'s record (None for a value that cannot be a key), for a
        caller that reads it together with other keys (the hub's guard, in one MGET)."""
        if not isinstance(api_key, str) or not api_key or len(api_key) > MAX_KEY_LENGTH:
            return None
        return KEY_PREFIX + hash_api_key(api_key)

    def live_record(self, api_key: str, raw: bytes | str | None) -> ApiKeyRecord | None:
        """The record read from ``record_name(api_key)``, or None unless it is live."""
        record = self._parse(hash_api_key(api_key), raw)
        if record is None or not record.active or record.expired(self._now()):
            return None
        return record

    async def validate_api_key(self, api_key: str) -> dict[str, Any] | None:
        """The seed's check: the record as a dict for a live key, None otherwise."""
        record = await self.lookup(api_key)
        return record.to_dict() if record else None

    def get_user_queue_name(self, user_id: str, worker_type: str = "gpu") -> str:
        return queue_name(user_id, WorkerType(worker_type))

    async def revoke(self, key_or_hash: str) -> ApiKeyRecord:
        """Revoke a key given as the key itself or its SHA-256 hash; raise UnknownKey if absent."""
        key_hash = key_or_hash if _HASH_RE.fullmatch(key_or_hash) else hash_api_key(key_or_hash)
        record = await self._get(key_hash)
        if record is None:
            raise UnknownKey("no such API key (give the key itself or its 64-character hash)")
        await self._remove(record)
        log.info("api_key.revoked", user_id=record.user_id, key_hash=key_hash[:12])
        return record

    async def list_keys(self, user_id: str) -> list[ApiKeyRecord]:
        """All stored keys of ``user_id`` (expired ones included until swept), oldest first."""
        validate_user_id(user_id)
        hashes = sorted(_text(h) for h in await self._store.members(USER_INDEX_PREFIX + user_id))
        records = [r for r in [await self._get(h) for h in hashes] if r is not None]
        return sorted(records, key=lambda r: r.created_at)

    async def sweep_expired(self) -> list[ApiKeyRecord]:
        """Remove every expired key (record, index entry, broker access); return what was removed."""
        now = self._now()
        removed: list[ApiKeyRecord] = []
        for raw_key in await self._store.keys_matching(KEY_PREFIX + "*"):
            key_hash = _text(raw_key)[len(KEY_PREFIX) :]
            record = await self._get(key_hash)
            if record is not None and (record.expired(now) or not record.active):
                await self._remove(record)
                removed.append(record)
        if removed:
            log.info("api_key.swept", count=len(removed))
        return removed

    async def _get(self, key_hash: str) -> ApiKeyRecord | None:
        return self._parse(key_hash, await self._store.get(KEY_PREFIX + key_hash))

    def _parse(self, key_hash: str, raw: bytes | str | None) -> ApiKeyRecord | None:
        if raw is None:
            return None
        try:
            return ApiKeyRecord.from_json(key_hash, raw)
        except (ValueError, KeyError, TypeError):
            log.warning("api_key.corrupt_record", key_hash=key_hash[:12])
            return None

    async def _remove(self, record: ApiKeyRecord) -> None:
        await self._store.remove(record)
        if self._hook is not None:
            await self._hook.key_removed(record.user_id, record.key_hash)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
