"""``morag-worker keys create|list|revoke|sweep``: server-side key administration over REDIS_URL.

``create`` prints the new key alone on stdout (and nothing else there), so it can be captured by a
script; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from morag_worker.core.auth import APIKeyService, KeyRole, UnknownKey
from morag_worker.core.cli.errors import CliError, ExitCode
from morag_worker.core.cli.redis_url import admin_redis_url
from morag_worker.core.execution.celery_config import strip_credentials
from morag_worker.core.naming import InvalidUserId

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    url = admin_redis_url(args)
    try:
        return asyncio.run(_run(args, url))
    except InvalidUserId as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    except RedisConnectionError:
        raise CliError(
            f"cannot reach Redis at {strip_credentials(url)} (check REDIS_URL or --redis-url)",
            ExitCode.BROKER_UNREACHABLE,
        ) from None
    except RedisError as exc:
        raise CliError(f"Redis refused the operation: {exc}", ExitCode.CONFIG) from None


async def _run(args: argparse.Namespace, url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        service = APIKeyService(client, access_hook=await _access_hook(client))
        action = args.keys_command
        if action == "create":
            if args.expires_days is not None and args.expires_days <= 0:
                raise CliError("the number of days in --expires-days must be at least 1", ExitCode.USAGE)
            role = KeyRole.parse(getattr(args, "role", "user"))
            key = await service.create_api_key(args.user, args.description, args.expires_days, role=role)
            print(key)
            kind = "a server key" if role is KeyRole.SERVER else "a key"
            print(f"Created {kind} for user {args.user!r}; it is shown only this once.", file=sys.stderr)
        elif action == "list":
            records = await service.list_keys(args.user)
            if not records:
                print(f"User {args.user!r} has no keys.", file=sys.stderr)
            for record in records:
                expires = record.expires_at.isoformat() if record.expires_at else "never"
                status = "active" if record.active else "revoked"
                print(
                    f"{record.key_hash}  created {record.created_at.isoformat()}  "
                    f"expires {expires}  {status}  role {record.role.value}  {record.description}"
                )
        elif action == "revoke":
            key_or_hash = sys.stdin.readline().strip() if args.key_or_hash == "-" else args.key_or_hash
            try:
                record = await service.revoke(key_or_hash)
            except UnknownKey as exc:
                raise CliError(str(exc), ExitCode.USAGE) from None
            print(f"Revoked key {record.key_hash[:12]}… of user {record.user_id!r}.", file=sys.stderr)
        elif action == "sweep":
            removed = await service.sweep_expired()
            print(f"Removed {len(removed)} expired key(s).", file=sys.stderr)
        return int(ExitCode.OK)
    finally:
        await client.aclose()


async def _access_hook(client: Any) -> Any:
    """The Redis ACL hook (broker credentials follow the keys)."""
    from morag_worker.core.server.acl import RedisAclHook

    return RedisAclHook(client)
