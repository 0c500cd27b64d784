"""APIKeyService against a real redis-server: hashed storage, expiry, revocation, sweeping."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from morag_worker.core.auth import APIKeyService, KeyRole, UnknownKey, hash_api_key
from morag_worker.core.naming import InvalidUserId
from tests.processes import RedisServer

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Hook:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    async def key_added(self, user_id: str, key_hash: str) -> None:
        self.events.append(("added", user_id, key_hash))

    async def key_removed(self, user_id: str, key_hash: str) -> None:
        self.events.append(("removed", user_id, key_hash))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis-auth"))
    yield srv
    srv.stop()


def run(server: RedisServer, coro_fn, clock: Clock | None = None, hook: Hook | None = None):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        client = aioredis.Redis.from_url(server.url)
        try:
            await client.flushall()
            service = APIKeyService(client, access_hook=hook, clock=clock or Clock())
            return await coro_fn(service, client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_only_the_hash_is_stored(server: RedisServer) -> None:
    async def body(service, client):  # type: ignore[no-untyped-def]
        key = await service.create_api_key("alice", "laptop")
        dump = {k: await client.get(k) for k in await client.keys("morag:api_keys:*")}
        return key, dump, await client.smembers("morag:users:alice")

    key, dump, index = run(server, body)
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert list(dump) == [f"morag:api_keys:{digest}".encode()]
    assert key.encode() not in b"".join(dump.values()) + b"".join(dump)
    record = json.loads(dump[f"morag:api_keys:{digest}".encode()])
    assert record["user_id"] == "alice" and record["active"] is True
    assert record["expires_at"] is None
    assert index == {digest.encode()}
    assert len(key) >= 43


def test_validate_returns_record_for_live_key_and_none_otherwise(server: RedisServer) -> None:
    async def body(service, client):  # type: ignore[no-untyped-def]
        key = await service.create_api_key("alice")
        return (
            await service.validate_api_key(key),
            await service.validate_api_key("nope" * 11),
            await service.validate_api_key(""),
            await service.validate_api_key("x" * 5000),
        )

    good, unknown, empty, huge = run(server, body)
    assert good["user_id"] == "alice" and good["active"] is True
    assert unknown is None and empty is None and huge is None


def test_key_without_expiry_has_no_ttl_and_key_with_expiry_expires(server: RedisServer) -> None:
    clock = Clock()

    async def body(service, client):  # type: ignore[no-untyped-def]
        forever = await service.create_api_key("alice")
        short = await service.create_api_key("alice", expires_days=2)
        ttls = [await client.ttl(f"morag:api_keys:{hash_api_key(k)}") for k in (forever, short)]
        clock.now += timedelta(days=1)
        before = await service.validate_api_key(short)
        clock.now += timedelta(days=1, seconds=1)
        after = await service.validate_api_key(short)
        clock.now += timedelta(days=3650)
        still = await service.validate_api_key(forever)
        return ttls, before, after, still

    ttls, before, after, still = run(server, body, clock=clock)
    assert ttls == [-1, -1]
    assert before is not None and after is None and still is not None
    assert datetime.fromisoformat(before["expires_at"]).tzinfo is not None


def test_revoke_by_key_and_by_hash_and_unknown(server: RedisServer) -> None:
    hook = Hook()

    async def body(service, client):  # type: ignore[no-untyped-def]
        k1 = await service.create_api_key("alice")
        k2 = await service.create_api_key("alice")
        await service.revoke(k1)
        await service.revoke(hash_api_key(k2))
        with pytest.raises(UnknownKey):
            await service.revoke(k1)
        return (
            await service.validate_api_key(k1),
            await service.validate_api_key(k2),
            await client.smembers("morag:users:alice"),
            k1,
            k2,
        )

    v1, v2, index, k1, k2 = run(server, body, hook=hook)
    assert v1 is None and v2 is None and index == set()
    assert [e[0] for e in hook.events] == ["added", "added", "removed", "removed"]
    assert hook.events[2][2] == hash_api_key(k1)


def test_list_and_sweep(server: RedisServer) -> None:
    clock = Clock()
    hook = Hook()

    async def body(service, client):  # type: ignore[no-untyped-def]
        await service.create_api_key("alice", "old", expires_days=1)
        clock.now += timedelta(seconds=1)
        keep = await service.create_api_key("alice", "new")
        await service.create_api_key("bob", "bob's")
        listed = await service.list_keys("alice")
        clock.now += timedelta(days=2)
        swept = await service.sweep_expired()
        return listed, swept, await service.list_keys("alice"), keep

    listed, swept, after, keep = run(server, body, clock=clock, hook=hook)
    assert [r.description for r in listed] == ["old", "new"]
    assert [r.description for r in swept] == ["old"]
    assert [r.key_hash for r in after] == [hash_api_key(keep)]
    assert ("removed", "alice", swept[0].key_hash) in hook.events


@pytest.mark.parametrize("bad", ["", "a" * 65, "a*", "a:b", "a b", "ä", "../x", ".", "..", "...", None, 5])
def test_invalid_user_ids_are_refused(server: RedisServer, bad: object) -> None:
    async def body(service, client):  # type: ignore[no-untyped-def]
        with pytest.raises(InvalidUserId):
            await service.create_api_key(bad)
        return await client.dbsize()

    assert run(server, body) == 0


def test_queue_name(server: RedisServer) -> None:
    async def body(service, client):  # type: ignore[no-untyped-def]
        return service.get_user_queue_name("u1"), service.get_user_queue_name("u1", "cpu")

    assert run(server, body) == ("gpu-tasks-u1", "cpu-tasks-u1")


def test_keys_are_user_keys_unless_a_server_role_is_asked_for_by_name(server: RedisServer) -> None:
    async def body(service, client):  # type: ignore[no-untyped-def]
        seed = await service.create_api_key("user123", "Test key")  # the seed's positional call
        dated = await service.create_api_key("user123", "Test key", 3)
        srv = await service.create_api_key("user123", "server side", role="server")
        with pytest.raises(TypeError):
            await service.create_api_key("user123", "x", None, "server")  # never positionally
        with pytest.raises(ValueError, match="unknown key role 'admin'"):
            await service.create_api_key("user123", role="admin")
        records = [await service.lookup(k) for k in (seed, dated, srv)]
        stored = json.loads(await client.get(f"morag:api_keys:{hash_api_key(srv)}"))
        return records, await service.validate_api_key(srv), stored, await service.list_keys("user123")

    (seed, dated, srv), validated, stored, listed = run(server, body)
    assert seed.role is KeyRole.USER and dated.role is KeyRole.USER and srv.role is KeyRole.SERVER
    assert validated["role"] == "server" and stored["role"] == "server"
    assert sorted(r.role.value for r in listed) == ["server", "user", "user"]


def test_a_record_without_a_role_reads_as_a_user_key_and_an_unknown_role_as_no_key(
    server: RedisServer,
) -> None:
    async def body(service, client):  # type: ignore[no-untyped-def]
        old = await service.create_api_key("alice", "before roles")
        odd = await service.create_api_key("alice", "tampered")
        for key, change in ((old, None), (odd, "root")):
            name = f"morag:api_keys:{hash_api_key(key)}"
            record = json.loads(await client.get(name))
            record.pop("role")
            if change:
                record["role"] = change
            await client.set(name, json.dumps(record))
        return await service.lookup(old), await service.lookup(odd)

    old, odd = run(server, body)
    assert old is not None and old.role is KeyRole.USER
    assert odd is None
