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

Synchronous (kombu and redis-py): the hub calls it from a worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog
from kombu.connection import Connection

from morag_worker.core.auth import USER_INDEX_PREFIX
from morag_worker.core.naming import InvalidUserId, namespace_prefix, validate_user_id

__all__ = ["RestoreReport", "Watchdog"]

log = structlog.get_logger(__name__)

UNACKED_INDEX = "unacked_index"
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

    def restore_user(self, user_id: str) -> int:
        """Put ``user_id``'s stale deliveries back in their queues; return how many went back."""
        before = self.stale_count(user_id)
        if not before:
            return 0
        options = {
            **self._transport_options,
            "global_keyprefix": namespace_prefix(user_id),
            "visibility_timeout": self.visibility_timeout,
        }
        left = before
        connection = Connection(self._url, transport_options=options, ssl=self._ssl or False)  # type: ignore[no-untyped-call]
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
            log.info("watchdog.restored", user_id=user_id, count=restored)
        return restored

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
