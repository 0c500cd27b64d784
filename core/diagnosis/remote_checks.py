"""The checks that reach outside this process: the API key and keychain, the hub, the broker login.

Each returns a ``CheckResult`` (never raises at a person) plus what the next check needs: the key
found, then the hub's queue-info. The key is registered for redaction as soon as it is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis
import redis.exceptions

from morag_worker.core.config.credentials import (
    API_KEY_ENV,
    CredentialError,
    CredentialStore,
    KeySource,
    read_api_key_file,
)
from morag_worker.core.diagnosis.report import CheckName, CheckResult, Outcome
from morag_worker.core.execution.celery_config import strip_credentials, tls_options
from morag_worker.core.hub_client import HubClientFactory, HubError, HubUnreachable, KeyRejected, QueueInfo
from morag_worker.core.logging import register_secret
from morag_worker.core.naming import acl_username, namespace_prefix

__all__ = ["FoundKey", "check_broker", "check_hub", "check_keychain"]

_REPORT = "if this goes on, send `morag-worker diagnostics -o diagnostics.zip` to the hub's operator"


@dataclass(frozen=True)
class FoundKey:
    key: str
    source: KeySource


def _other_source(env: Mapping[str, str], api_key_file: Path | None) -> FoundKey | None:
    if api_key_file is not None:
        return FoundKey(read_api_key_file(api_key_file), KeySource.FILE)
    if key := env.get(API_KEY_ENV, "").strip():
        register_secret(key)
        return FoundKey(key, KeySource.ENV)
    return None


def _source_name(source: KeySource, api_key_file: Path | None) -> str:
    if source is KeySource.FILE:
        return f"the file {os.fspath(api_key_file or '')}"
    return API_KEY_ENV if source is KeySource.ENV else "the keychain"


def check_keychain(
    store: CredentialStore, hub_url: str, env: Mapping[str, str], api_key_file: Path | None
) -> tuple[CheckResult, FoundKey | None]:
    """Whether the keychain works and holds a key for ``hub_url``; the key to use, in the worker's order
    (``--api-key-file``, ``MORAG_API_KEY``, then the keychain)."""
    name = CheckName.KEYCHAIN
    try:
        other = _other_source(env, api_key_file)
    except CredentialError as exc:
        return CheckResult(name, Outcome.FAILED, exc.message, exc.advice), None
    try:
        stored = store.get(hub_url)
        backend = store.backend_description
    except CredentialError as exc:
        if other is not None:
            summary = f"the keychain cannot be used ({exc.message}); the key comes from " + _source_name(
                other.source, api_key_file
            )
            advice = "the worker runs with that key; to keep it in a keychain instead: " + exc.advice
            return CheckResult(name, Outcome.WARNING, summary, advice), other
        return CheckResult(name, Outcome.FAILED, exc.message, exc.advice), None
    if stored is not None:
        register_secret(stored)
    source = other.source if other is not None else KeySource.KEYCHAIN
    details = {"backend": backend, "key_source": source.value}
    if other is not None:
        summary = (
            f"the keychain ({backend}) works; the key comes from {_source_name(other.source, api_key_file)}"
        )
        return CheckResult(name, Outcome.PASSED, summary, details=details), other
    if stored is None:
        return (
            CheckResult(
                name,
                Outcome.FAILED,
                f"the keychain ({backend}) holds no API key for {hub_url}",
                "run `morag-worker login` (or open Settings) and paste the key from your MoRAG account",
                details=details,
            ),
            None,
        )
    found = FoundKey(stored, KeySource.KEYCHAIN)
    return CheckResult(
        name, Outcome.PASSED, f"the API key for {hub_url} is in {backend}", details=details
    ), found


def check_hub(
    factory: HubClientFactory, hub_url: str, key: FoundKey | None
) -> tuple[CheckResult, QueueInfo | None]:
    """Whether the hub answers and accepts the key (its queue-info)."""
    name = CheckName.HUB
    if key is None:
        return CheckResult(name, Outcome.SKIPPED, "needs an API key, and none was found"), None
    client = factory(hub_url, key.key)
    try:
        info = client.queue_info()
    except KeyRejected:
        return (
            CheckResult(
                name,
                Outcome.FAILED,
                f"the hub at {hub_url} rejected the API key (unknown, revoked or expired)",
                "get a new key from your MoRAG account and run `morag-worker login` with it",
            ),
            None,
        )
    except HubUnreachable:
        return (
            CheckResult(
                name,
                Outcome.FAILED,
                f"cannot reach the hub at {hub_url}",
                "check the hub address (Settings, --hub or MAIN_SERVER_URL), your network, and that the "
                "hub is running",
            ),
            None,
        )
    except (HubError, KeyError, TypeError, ValueError) as exc:
        return CheckResult(
            name, Outcome.FAILED, f"the hub at {hub_url} answered wrongly: {exc}", _REPORT
        ), None
    finally:
        client.close()
    expiry = f"; the key expires {info.expires_at}" if info.expires_at else ""
    details = {
        "user_id": info.user_id,
        "queues": [info.gpu_queue, info.cpu_queue],
        "expires_at": info.expires_at,
    }
    summary = f"the hub at {hub_url} accepts the key of user {info.user_id!r}{expiry}"
    return CheckResult(name, Outcome.PASSED, summary, details=details), info


def check_broker(
    info: QueueInfo | None, key: FoundKey | None, env: Mapping[str, str], timeout_s: float = 10.0
) -> CheckResult:
    """Whether the broker lets this user's worker log in and see its own queue (PING, then LLEN of the
    GPU queue under the user's namespace, both in the worker's ACL allowlist)."""
    name = CheckName.BROKER
    if info is None or key is None:
        return CheckResult(name, Outcome.SKIPPED, "needs the hub's answer, which the hub check did not get")
    url = (env.get("REDIS_URL") or "").strip() or info.broker_url
    if not url:
        return CheckResult(name, Outcome.FAILED, "the hub did not say where the broker is", _REPORT)
    shown = strip_credentials(url)
    username = acl_username(info.user_id)
    client = redis.Redis.from_url(
        strip_credentials(url),
        username=username,
        password=key.key,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        **(tls_options(url, env) or {}),
    )
    try:
        client.ping()
        waiting = int(client.llen(namespace_prefix(info.user_id) + info.gpu_queue))
    except redis.exceptions.AuthenticationError:
        return CheckResult(
            name,
            Outcome.FAILED,
            f"the broker at {shown} refused the login of {username}",
            "the hub knows the key but the broker does not: ask the hub's operator to let the hub's "
            "maintenance run (it restores broker logins), or log in with a new key",
        )
    except redis.exceptions.NoPermissionError:
        return CheckResult(
            name,
            Outcome.FAILED,
            f"the broker at {shown} accepted {username} but refused access to its queue",
            "ask the hub's operator to check the broker's ACL for this user",
        )
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return CheckResult(
            name,
            Outcome.FAILED,
            f"cannot reach the broker at {shown}",
            "check your network and firewall; when the hub advertises an address this machine cannot "
            "reach, set REDIS_URL to one it can (without a password)",
        )
    except redis.exceptions.RedisError as exc:
        return CheckResult(name, Outcome.FAILED, f"the broker at {shown} answered an error: {exc}", _REPORT)
    finally:
        client.close()
    details = {"broker": shown, "username": username, "waiting_tasks": waiting}
    summary = f"logged in to the broker at {shown} as {username}; {waiting} task(s) wait in your GPU queue"
    return CheckResult(name, Outcome.PASSED, summary, details=details)
