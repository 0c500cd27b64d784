"""The hub's outer bounds (issue 10, item 1): what any request may cost before it is trusted.

``HubGuard`` is a plain ASGI middleware around the app. For every ``/api/`` route it

- caps the requests in flight (503 with ``Retry-After`` beyond ``max_in_flight``);
- refuses an address or a presented key over its failed-authentication limit (429), then checks the
  API key *before the app reads a byte of the body* (401), and keeps the record for ``current_key``;
- limits task creation per key and per address (429);
- caps the body while it streams (413: a declared ``Content-Length`` before reading, the streamed
  bytes while reading), and cuts a body that stalls or trickles (408);
- answers 503 with ``Retry-After`` when Redis is saturated or unreachable, never 500.

Rate limits are fixed windows counted in Redis (``morag:ratelimit:...``), so they hold across every
hub process that shares the Redis. An address over its failed-authentication limit is also handed to
the ``AddressGate`` (``connections.py``), which then refuses its connections as they are accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from morag_worker.core.server.hub.connections import AddressGate

__all__ = [
    "RATE_PREFIX",
    "BodyTimeout",
    "BodyTooLarge",
    "HubGuard",
    "HubLimits",
    "RateLimiter",
    "Saturated",
]

RATE_PREFIX = "morag:ratelimit:"
UPLOAD_PATH = "/api/v1/files"
TASKS_PATH = "/api/v1/tasks"
MISSING_KEY = "missing API key (Authorization: Bearer <key>)"
MULTIPART_SLACK = 1024 * 1024  # boundaries and part headers around the file; the store caps the file


@dataclass(frozen=True)
class HubLimits:
    """The hub's bounds; ``morag-worker hub`` options set them (0 turns a rate limit off)."""

    max_json_bytes: int = 1024 * 1024
    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 30.0
    min_body_rate_bps: int = 16 * 1024  # enforced once body_idle_timeout_s has passed
    max_in_flight: int = 512
    redis_max_connections: int = 64
    redis_pool_timeout_s: float = 5.0
    retry_after_s: int = 2
    rate_window_s: int = 60
    auth_failures_per_address: int = 300
    auth_failures_per_key: int = 60
    tasks_per_key: int = 6000
    tasks_per_address: int = 12000


class BodyTooLarge(HTTPException):
    def __init__(self, cap: int) -> None:
        super().__init__(413, f"the request body is larger than this hub accepts ({cap} bytes)")
        self.headers = {"connection": "close"}


class BodyTimeout(HTTPException):
    def __init__(self, why: str) -> None:
        super().__init__(408, f"the request body {why}")
        self.headers = {"connection": "close"}


class Saturated(HTTPException):
    def __init__(self, retry_after_s: int, why: str = "the hub is busy; retry shortly") -> None:
        super().__init__(503, why)
        self.headers = {"retry-after": str(retry_after_s)}


SATURATION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def api_key_from_headers(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization", b"").decode("latin-1")
    if value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return headers.get(b"x-api-key", b"").decode("latin-1") or None


def _key_tag(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).hexdigest()[:24]


class RateLimiter:
    """Fixed windows counted in Redis: ``morag:ratelimit:<bucket>:<window number>``."""

    def __init__(self, client: Any, window_s: int) -> None:
        self.client = client
        self.window_s = max(1, window_s)
        # Buckets this process already saw over their limit, and until when (monotonic): a flood
        # from a refused address is answered without a Redis round trip until its window turns.
        self._refused: dict[str, float] = {}

    def _known_over(self, buckets: list[str]) -> int | None:
        now = time.monotonic()
        for bucket in buckets:
            until = self._refused.get(bucket)
            if until is not None:
                if until > now:
                    return max(1, math.ceil(until - now))
                del self._refused[bucket]
        return None

    def _remember(self, bucket: str, retry_s: int) -> None:
        if len(self._refused) > 100_000:
            self._refused.clear()
        self._refused[bucket] = time.monotonic() + retry_s

    def refuses(self, bucket: str) -> bool:
        """Whether this process remembers ``bucket`` as over its limit."""
        return bucket in self._refused

    def _window(self) -> tuple[int, int]:
        now = time.time()
        return int(now // self.window_s), max(1, math.ceil(self.window_s - now % self.window_s))

    async def over(self, limits: list[tuple[str, int]]) -> int | None:
        """Seconds until the window turns when any bucket has reached its limit; None otherwise."""
        return (await self.over_and_get(limits, None))[0]

    async def over_and_get(self, limits: list[tuple[str, int]], name: str | None) -> tuple[int | None, Any]:
        """``over(limits)``, and the value at the Redis key ``name`` read by the same MGET: one
        command and one round trip for what every request checks (issue 14). The value is None
        when a bucket is over its limit."""
        active = [(bucket, limit) for bucket, limit in limits if limit > 0]
        known = self._known_over([bucket for bucket, _ in active])
        if known is not None:
            return known, None
        window, retry = self._window()
        names = [f"{RATE_PREFIX}{b}:{window}" for b, _ in active] + ([name] if name is not None else [])
        if not names:
            return None, None
        values = await self.client.mget(names)
        for (bucket, limit), count in zip(active, values, strict=False):
            if count is not None and int(count) >= limit:
                self._remember(bucket, retry)
                return retry, None
        return None, values[-1] if name is not None else None

    async def hit(self, limits: list[tuple[str, int]]) -> int | None:
        """Count one event in each bucket; seconds to wait when any is now over its limit."""
        active = [(bucket, limit) for bucket, limit in limits if limit > 0]
        if not active:
            return None
        window, retry = self._window()
        pipe = self.client.pipeline(transaction=False)
        for bucket, _ in active:
            key = f"{RATE_PREFIX}{bucket}:{window}"
            pipe.incr(key)
            pipe.expire(key, self.window_s * 2)
        replies = await pipe.execute()
        for n, (bucket, limit) in enumerate(active):
            if int(replies[2 * n]) > limit:
                self._remember(bucket, retry)
                return retry
        return None


class HubGuard:
    """ASGI middleware: the bounds above, for every ``/api/`` request."""

    def __init__(
        self,
        app: ASGIApp,
        limits: HubLimits,
        max_upload_bytes: int,
        state: dict[str, Any],
        gate: AddressGate | None = None,
    ) -> None:
        self.app = app
        self.gate = gate  # told which addresses to refuse at accept time
        self.limits = limits
        self.max_upload_bytes = max_upload_bytes
        self.state = state  # the app's lifespan state: "keys" and "aredis" once started
        self.in_flight = 0
        self._limiter: RateLimiter | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        limits = self.limits
        if self.in_flight >= limits.max_in_flight:
            await _answer(send, Saturated(limits.retry_after_s))
            return
        self.in_flight += 1
        try:
            await self._guarded(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.limits
        headers = dict(scope["headers"])
        address = (scope.get("client") or ("unknown", 0))[0]
        api_key = api_key_from_headers(headers)
        if self._limiter is None or self._limiter.client is not self.state["aredis"]:
            self._limiter = RateLimiter(self.state["aredis"], limits.rate_window_s)
        limiter = self._limiter
        address_bucket = f"authfail:addr:{address}"
        auth_buckets = [(address_bucket, limits.auth_failures_per_address)]
        if api_key:
            auth_buckets.append((f"authfail:key:{_key_tag(api_key)}", limits.auth_failures_per_key))
        try:
            keys = self.state["keys"]
            name = keys.record_name(api_key) if api_key else None
            retry, raw = await limiter.over_and_get(auth_buckets, name)
            record = keys.live_record(api_key, raw) if name is not None and retry is None else None
            if retry is not None:
                self._refuse_address(limiter, address_bucket, address, retry)
                await _answer(send, _too_many(retry, "too many failed authentications; retry later"))
                return
            if record is None:
                retry = await limiter.hit(auth_buckets)
                if retry is not None:
                    self._refuse_address(limiter, address_bucket, address, retry)
                why = "invalid, revoked or expired API key" if api_key else MISSING_KEY
                error = HTTPException(401, why)
                error.headers = {"www-authenticate": "Bearer"}
                await _answer(send, error)
                return
            if scope["method"] == "POST" and scope["path"].rstrip("/") == TASKS_PATH:
                retry = await limiter.hit(
                    [
                        (f"tasks:key:{record.key_hash}", limits.tasks_per_key),
                        (f"tasks:addr:{address}", limits.tasks_per_address),
                    ]
                )
                if retry is not None:
                    await _answer(send, _too_many(retry, "too many tasks created; retry later"))
                    return
        except SATURATION_ERRORS:
            await _answer(send, Saturated(limits.retry_after_s))
            return
        scope.setdefault("state", {})["api_key_record"] = record

        is_upload = scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_PATH
        cap = self.max_upload_bytes + MULTIPART_SLACK if is_upload else limits.max_json_bytes
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > cap:
            await _answer(send, BodyTooLarge(cap))
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._bounded_receive(receive, cap), tracked_send)
        except (BodyTooLarge, BodyTimeout, Saturated) as exc:
            if started:
                raise
            await _answer(send, exc)
        except SATURATION_ERRORS:
            if started:
                raise
            await _answer(send, Saturated(limits.retry_after_s))

    def _refuse_address(self, limiter: RateLimiter, bucket: str, address: str, retry_s: int) -> None:
        if self.gate is not None and limiter.refuses(bucket):
            self.gate.refuse(address, retry_s)

    def _bounded_receive(self, receive: Receive, cap: int) -> Receive:
        limits = self.limits
        begun = time.monotonic()
        received = 0

        async def bounded() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), limits.body_idle_timeout_s)
            except TimeoutError:
                raise BodyTimeout(f"stalled for {limits.body_idle_timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    raise BodyTooLarge(cap)
                elapsed = time.monotonic() - begun
                if (
                    message.get("more_body")
                    and limits.min_body_rate_bps > 0
                    and elapsed > limits.body_idle_timeout_s
                    and received < limits.min_body_rate_bps * (elapsed - limits.body_idle_timeout_s)
                ):
                    raise BodyTimeout(f"arrived slower than {limits.min_body_rate_bps} bytes/s")
            return message

        return bounded


def _too_many(retry_s: int, why: str) -> HTTPException:
    error = HTTPException(429, why)
    error.headers = {"retry-after": str(retry_s)}
    return error


async def _answer(send: Send, error: HTTPException) -> None:
    body = json.dumps({"error": error.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (error.headers or {}).items()]
    if error.status_code in (408, 413, 429, 401) and not any(k == b"connection" for k, _ in headers):
        # Refused before its body was read: close rather than drain what the client still sends.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
