"""The watchdog: puts each user's stale deliveries back into their queue (server side, admin rights).

A worker that dies without saying so (kill -9, power loss, a network that never comes back) leaves
its task in its namespace's ``unacked`` hash. Contributors' workers never restore such deliveries
themselves (``core/remote_transport.py``: that needs Lua, which their ACL does not allow), so the
hub runs this every maintenance round, for every user in the key index (``morag:users:*``).

The restore itself is kombu's own ``QoS.restore_visible`` on a channel opened with the user's
``global_keyprefix``: under the namespace's ``unacked_mutex`` lock it takes the entries of
``unacked_index`` older than the visibility timeout and, one transaction per delivery tag, removes
the tag from ``unacked`` / ``unacked_index`` and pushes the message back with its routing key.
Because the channel carries the prefix, whatever a user wrote into their own ``unacked`` hash can
only ever land in their own namespace. A cheap ``ZCOUNT`` first means a kombu channel is opened only
for a namespace that has something to restore.

The delivery times are the worker's own clock (kombu's ``time()`` when it took the task): a worker
whose clock is far off gets its own user's tasks restored early (a duplicate run) or late. The
visibility timeout (hours) dwarfs ordinary clock drift.

**Dead workers' deliveries come back within a minute, not after the visibility timeout.** Each
worker's presence record (``core/execution/presence.py``, TTL 30 s, rewritten every 5 s) lists what
it holds: ``held_deliveries`` (the delivery tags in its consumer channel's memory: kombu adds one
right after writing it to ``unacked`` / ``unacked_index`` and drops it only after deleting it
there) and ``held_tasks`` (those deliveries' task ids plus Celery's reserved and active requests),
sampled at ``updated_at`` (the worker's clock, taken before the sample). Every run, for
every user, a delivery in ``unacked_index`` is restored at once (same ``restore_by_tag`` transaction
as kombu's, a ``WATCH`` on ``unacked``, admin side, no Lua) when all of these hold:

1. it is older than ``claim_grace_s`` (default 30 s) by the hub's clock: a worker that just took it
   may not have written presence yet (it does every 5 s; a brand-new worker has no record at all);
2. no live presence record of the user lists its delivery tag or its task id;
3. every live record of the user publishes its holdings (``held_deliveries`` is not ``None``): a
   worker of a version that does not is alive and might hold anything, so its namespace falls back
   to the visibility timeout;
4. every live record was sampled at least ``SAMPLE_MARGIN_S`` after the delivery was taken (each
   worker compares against its own clock for its own deliveries): a record sampled earlier cannot
   vouch that its worker does not hold it.

A *missing* record means a dead worker (or one that could not write presence for 30 s, which is
treated as dead); a record that exists and does not list the delivery means that worker does not
hold it. Deliveries cannot be attributed to a worker (kombu stores no consumer in ``unacked``), so a
worker whose record says it holds nothing while an old delivery sits in ``unacked`` is simply not
its holder: the holder is the dead one. So with a live worker alive and publishing, its tasks are
never restored by this rule; a worker that dies is seen dead within 30 s (TTL) and its delivery is
back within the next run (every 15 s, ``core/server/hub/maintenance.py``): under a minute. What can
still run a task twice: a worker alive but unable to write presence for 30 s (its main process
stopped, its Redis connection for presence cut while its consumer's is not), a lost ack, and
clocks: a worker's clock far *behind* the hub's shortens rule 1 for it.

Synchronous (kombu and redis-py): the hub calls it from a worker thread.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog
from kombu.connection import Connection
from kombu.transport.redis import Mutex, MutexHeld

from morag_worker.core.auth import USER_INDEX_PREFIX
from morag_worker.core.execution.health.presence import live_workers
from morag_worker.core.naming import InvalidUserId, namespace_prefix, validate_user_id

__all__ = ["CLAIM_GRACE_S", "RestoreReport", "Watchdog"]

log = structlog.get_logger(__name__)

UNACKED_INDEX = "unacked_index"
UNACKED = "unacked"
CLAIM_GRACE_S = 30.0  # never restore by presence a delivery younger than this (hub clock)
SAMPLE_MARGIN_S = 5.0  # a record must be sampled this long after a delivery to disown it
_BATCH = 100  # deliveries per restore_visible call
_MAX_ROUNDS = 100  # batches per namespace per run, so that one namespace cannot hold up the rest


@dataclass
class RestoreReport:
    """What one run did: deliveries put back per user, and users whose restore failed."""

    restored: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.restored.values())


class Watchdog:
    """Restores stale deliveries in every user's namespace over an admin connection."""

    def __init__(
        self,
        redis_url: str,
        visibility_timeout: float,
        *,
        transport_options: Mapping[str, Any] | None = None,
        ssl_options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        claim_grace_s: float = CLAIM_GRACE_S,
    ) -> None:
        """``ssl_options`` (``celery_config.tls_options``) for a ``rediss://`` URL: kombu would
        otherwise connect without verifying the server's certificate."""
        if visibility_timeout <= 0:
            raise ValueError("the visibility timeout must be positive")
        self._url = redis_url
        self.visibility_timeout = visibility_timeout
        self._transport_options = dict(transport_options or {})
        self._ssl = dict(ssl_options) if ssl_options else None
        self._clock = clock
        self.claim_grace_s = claim_grace_s
        self._admin: redis.Redis = redis.Redis.from_url(redis_url, socket_timeout=30, **(self._ssl or {}))

    def close(self) -> None:
        self._admin.close()

    def user_ids(self) -> list[str]:
        """Every user with a key in the index (not a scan of every key in Redis)."""
        users = []
        for raw in self._admin.scan_iter(match=USER_INDEX_PREFIX + "*", count=500):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                users.append(validate_user_id(name[len(USER_INDEX_PREFIX) :]))
            except InvalidUserId:
                log.warning("watchdog.bad_index_key", key=name[:100])
        return sorted(users)

    def stale_count(self, user_id: str) -> int:
        """Deliveries of ``user_id`` taken longer ago than the visibility timeout."""
        ceiling = self._clock() - self.visibility_timeout
        return int(self._admin.zcount(namespace_prefix(user_id) + UNACKED_INDEX, "-inf", ceiling))

    def unclaimed(self, user_id: str) -> list[str]:
        """Delivery tags of ``user_id`` that no live worker holds (the rule in the module docstring)."""
        prefix = namespace_prefix(user_id)
        ceiling = self._clock() - self.claim_grace_s
        rows: list[tuple[bytes | str, float]] = self._admin.zrangebyscore(  # type: ignore[assignment]
            prefix + UNACKED_INDEX, "-inf", ceiling, start=0, num=_BATCH * _MAX_ROUNDS, withscores=True
        )
        if not rows:
            return []
        records = live_workers(self._admin, user_id)
        tags: set[str] = set()
        tasks: set[str] = set()
        for record in records:
            held = _strings(record.held_deliveries)
            held_tasks = _strings(record.held_tasks)
            if held is None or held_tasks is None:
                # A live worker that does not say (or garbles) what it holds might hold anything:
                # this namespace waits for the visibility timeout.
                return []
            tags |= held
            tasks |= held_tasks | (_strings(record.active_tasks) or set())
        oldest_sample = min((_number(r.updated_at) for r in records), default=float("inf"))
        out = []
        for raw, taken in rows:
            tag = raw.decode() if isinstance(raw, bytes) else str(raw)
            if tag in tags or taken > oldest_sample - SAMPLE_MARGIN_S:
                continue
            task_id = _task_id(self._admin.hget(prefix + UNACKED, tag))
            if task_id is not None and task_id in tasks:
                continue
            out.append(tag)
        return out

    def _channel_connection(self, user_id: str) -> Connection:
        options = {
            **self._transport_options,
            "global_keyprefix": namespace_prefix(user_id),
            "visibility_timeout": self.visibility_timeout,
        }
        return Connection(self._url, transport_options=options, ssl=self._ssl or False)  # type: ignore[no-untyped-call]

    def restore_dead(self, user_id: str) -> int:
        """Put back at once the deliveries of ``user_id`` that no live worker claims."""
        tags = self.unclaimed(user_id)
        if not tags:
            return 0
        restored = 0
        with self._channel_connection(user_id) as connection:
            channel = connection.default_channel
            qos = channel.qos
            try:
                # Under the namespace's mutex, as kombu's restore_visible (another party restoring).
                with (
                    channel.conn_or_acquire() as client,
                    Mutex(client, qos.unacked_mutex_key, qos.unacked_mutex_expire),
                ):
                    for tag in tags:
                        # kombu's own transaction: WATCH unacked, HGET, then remove and push in
                        # MULTI; a delivery acked meanwhile is only removed from the indices.
                        if self._admin.hexists(namespace_prefix(user_id) + UNACKED, tag):
                            qos.restore_by_tag(tag, client=client)
                            restored += 1
            except MutexHeld:
                log.info("watchdog.mutex_held", user_id=user_id)
        if restored:
            log.info("watchdog.restored", user_id=user_id, count=restored, reason="no_live_claim")
        return restored

    def restore_user(self, user_id: str) -> int:
        """Put ``user_id``'s stranded deliveries back in their queues; return how many went back:
        those no live worker claims, then those older than the visibility timeout."""
        dead = self.restore_dead(user_id)
        before = self.stale_count(user_id)
        if not before:
            return dead
        left = before
        connection = self._channel_connection(user_id)
        with connection:
            channel = connection.default_channel
            for _ in range(_MAX_ROUNDS):
                # interval=1: scan on every call (kombu otherwise skips nine calls in ten). When
                # another party holds the namespace's mutex kombu restores nothing: try next run.
                channel.qos.restore_visible(num=_BATCH, interval=1)
                previous, left = left, self.stale_count(user_id)
                if not left or left >= previous:
                    break
        restored = max(0, before - left)
        if restored:
            log.info("watchdog.restored", user_id=user_id, count=restored, reason="visibility_timeout")
        return dead + restored

    def run(self) -> RestoreReport:
        """One pass over every user; a failing namespace is reported and does not stop the rest."""
        report = RestoreReport()
        for user_id in self.user_ids():
            try:
                count = self.restore_user(user_id)
            except Exception as exc:  # noqa: BLE001 - one user's bad data must not stop the others
                log.warning("watchdog.restore_failed", user_id=user_id, error=repr(exc)[:300])
                report.failed[user_id] = repr(exc)[:300]
                continue
            if count:
                report.restored[user_id] = count
        return report


def _strings(value: object) -> set[str] | None:
    """A record's list of ids as a set; None when it is not a list (absent, or written by hand)."""
    if not isinstance(value, list):
        return None
    return {str(item) for item in value}


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0  # a record without a usable sample time vouches for nothing


def _task_id(raw: bytes | str | None) -> str | None:
    """The task id in a stored delivery (``[payload, exchange, routing_key]``); None if unreadable."""
    if raw is None:
        return None
    try:
        payload = json.loads(raw)[0]
        headers = payload.get("headers") or {}
        value = headers.get("id") or (payload.get("properties") or {}).get("correlation_id")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return str(value) if value else None
