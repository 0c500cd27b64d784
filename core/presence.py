"""Worker presence: ``morag:ns:{user_id}:workers:{hostname}`` kept alive while a worker runs.

The worker side is a Celery worker bootstep (a daemon thread in the main worker process) that
rewrites a small JSON record every few seconds with a ~30 s TTL; the hub lists the live records of
a user with ``live_workers``. Presence lives inside the user's namespace, so a contributor's ACL
user can write it and nobody else's worker can read it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from celery import bootsteps

from .naming import in_queue_order, namespace_prefix

__all__ = [
    "PRESENCE_TTL_S",
    "PresenceRecord",
    "PresenceStep",
    "live_workers",
    "presence_key",
]

log = structlog.get_logger(__name__)

PRESENCE_TTL_S = 30
REFRESH_S = 5.0


def presence_key(user_id: str, hostname: str) -> str:
    return f"{namespace_prefix(user_id)}workers:{hostname}"


@dataclass
class PresenceRecord:
    """What a worker says about itself (no secrets)."""

    hostname: str
    user_id: str
    version: str
    state: str
    queue: str | None  # the first of ``queues``, for readers written before ``queues``
    queues: list[str] = field(default_factory=list)  # every queue this worker consumes
    active_tasks: list[str] = field(default_factory=list)
    gpu: str | None = None
    pid: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def consumes(self, queue: str) -> bool:
        """Whether this worker takes tasks from ``queue`` (records older than ``queues`` name one)."""
        return queue in (self.queues or ([self.queue] if self.queue else []))

    @classmethod
    def from_json(cls, raw: str | bytes) -> PresenceRecord | None:
        try:
            return cls.from_dict(json.loads(raw))
        except ValueError:
            return None

    @classmethod
    def from_dict(cls, data: object) -> PresenceRecord | None:
        """A record from its JSON object (as ``/api/v1/workers`` lists it); None when malformed."""
        if not isinstance(data, dict):
            return None
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return None


def live_workers(redis_client: Any, user_id: str) -> list[PresenceRecord]:
    """The user's workers seen in the last ``PRESENCE_TTL_S`` seconds (admin connection)."""
    pattern = presence_key(user_id, "*")
    records = []
    for key in redis_client.scan_iter(match=pattern, count=200):
        raw = redis_client.get(key)
        record = PresenceRecord.from_json(raw) if raw is not None else None
        if record is not None and record.user_id == user_id:
            records.append(record)
    return sorted(records, key=lambda r: r.hostname)


class PresenceStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Keeps this worker's presence record alive; enabled in the remote role only."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        from .runtime import get_runtime

        self.user_id = get_runtime().own_user_id
        self.enabled = self.user_id is not None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        super().__init__(worker, **kwargs)

    def start(self, worker: Any) -> None:
        import redis

        from morag_worker import __version__

        assert self.user_id is not None
        url = worker.app.conf.broker_url
        self._client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
        queues = in_queue_order(q.name for q in worker.app.amqp.queues.consume_from.values())
        self._record = PresenceRecord(
            hostname=worker.hostname,
            user_id=self.user_id,
            version=__version__,
            state="idle",
            queue=queues[0] if queues else None,
            queues=queues,
            gpu=os.environ.get("MORAG_WORKER_GPU") or None,
            pid=os.getpid(),
            started_at=time.time(),
        )
        self._key = presence_key(self.user_id, worker.hostname)
        self._thread = threading.Thread(target=self._run, name="morag-presence", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from celery.worker import state

        while not self._stop.is_set():
            active = sorted(str(r.id) for r in list(state.active_requests))
            self._record.active_tasks = active
            self._record.state = "working" if active else "idle"
            self._record.updated_at = time.time()
            try:
                self._client.set(self._key, self._record.to_json(), ex=PRESENCE_TTL_S)
            except Exception as exc:  # noqa: BLE001 - the broker may be away; retry next round
                log.debug("presence.write_failed", error=type(exc).__name__)
            self._stop.wait(REFRESH_S)

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._client is not None:
            with contextlib.suppress(Exception):  # best effort on the way out
                self._client.delete(self._key)
            self._client.close()

    def info(self, worker: Any) -> Mapping[str, Any]:
        return {"presence": self._key if self.enabled else None}
