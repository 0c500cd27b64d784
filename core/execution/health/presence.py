"""Worker presence: ``morag:ns:{user_id}:workers:{hostname}`` kept alive while a worker runs.

The worker side is a Celery worker bootstep (a daemon thread in the main worker process) that
rewrites a small JSON record every few seconds with a ~30 s TTL; the hub lists the live records of
a user with ``live_workers``. Presence lives inside the user's namespace, so a contributor's ACL
user can write it and nobody else's worker can read it.

The record also says what the worker holds, so that the hub's watchdog can put a dead worker's task
back within a minute (the rule: ``core/server/watchdog.py``): ``held_deliveries`` are the delivery
tags in kombu's memory of the task consumer's channel (``QoS._delivered``: every delivery this worker
has in ``unacked``, reserved or running; kombu adds one right after writing it to Redis and drops it
only after deleting it there), ``held_tasks`` their task ids plus Celery's reserved and active
requests (a task still running after its channel was replaced stays claimed). ``updated_at`` is
taken before the sample. All of it is read from memory: presence needs no Redis command beyond
``SET`` / ``DEL``. The record is deleted on the way out only once nothing is held; otherwise it
stays until the process ends and then expires.
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

from morag_worker.core.execution.health.broker_auth import report_refusal
from morag_worker.core.naming import in_queue_order, namespace_prefix

__all__ = [
    "PRESENCE_TTL_S",
    "PresenceRecord",
    "PresenceStep",
    "held_by",
    "live_workers",
    "presence_key",
    "presence_state",
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
    # None: a worker that does not publish what it holds (older versions); the watchdog then waits.
    held_deliveries: list[str] | None = None
    held_tasks: list[str] | None = None
    gpu: str | None = None
    held_reason: str | None = None  # why no new task is taken (state ``held_back``): the intake rules
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


def presence_state(active: list[str], *, hub_unreachable: bool, held: bool = False) -> str:
    """``waiting_for_hub`` (no new task is taken until the hub answers), ``held_back`` (the
    contributor's rules hold new tasks back: ``held_reason`` says why), ``working`` or ``idle``."""
    if hub_unreachable:
        return "waiting_for_hub"
    if held:
        return "held_back"
    return "working" if active else "idle"


def held_by(worker: Any) -> tuple[list[str], list[str]]:
    """(delivery tags, task ids) this worker holds, from kombu's and Celery's memory."""
    from celery.worker import state

    delivered: dict[Any, Any] = {}
    try:
        source = worker.consumer.task_consumer.channel.qos._delivered
    except AttributeError:  # no consumer yet (or any more): nothing delivered through it
        source = None
    for _ in range(5):
        try:
            delivered = dict(source) if source is not None else {}
            break
        except RuntimeError:  # changed while copied from this thread: try again
            continue
    else:
        raise RuntimeError("the deliveries kept changing while being read")
    tags = sorted(str(tag) for tag in delivered)
    tasks = set()
    for message in delivered.values():
        headers = getattr(message, "headers", None) or {}
        properties = getattr(message, "properties", None) or {}
        task_id = headers.get("id") or properties.get("correlation_id")
        if task_id:
            tasks.add(str(task_id))
    tasks.update(str(r.id) for r in list(state.reserved_requests))
    tasks.update(str(r.id) for r in list(state.active_requests))
    return tags, sorted(tasks)


class PresenceStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Keeps this worker's presence record alive; enabled in the remote role only."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        from morag_worker.core.execution.context import get_runtime

        runtime = get_runtime()
        self.user_id = runtime.own_user_id
        self._board = runtime.hub_board
        self._intake = runtime.intake
        self.enabled = self.user_id is not None
        self._stop = threading.Event()
        self._wake = threading.Event()
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
        self._worker = worker
        self._thread = threading.Thread(target=self._run, name="morag-presence", daemon=True)
        self._thread.start()

    def _sample(self) -> bool:
        """Refresh the record from memory; whether this worker holds anything."""
        from celery.worker import state

        self._record.updated_at = time.time()  # before the sample: the watchdog relies on it
        active = sorted(str(r.id) for r in list(state.active_requests))
        self._record.active_tasks = active
        reason = self._intake.reason
        self._record.state = presence_state(
            active, hub_unreachable=self._board.unreachable_since is not None, held=reason is not None
        )
        self._record.held_reason = reason
        try:
            tags, tasks = held_by(self._worker)
        except Exception as exc:  # noqa: BLE001 - claim nothing we cannot vouch for
            log.warning("presence.sample_failed", error=type(exc).__name__)
            self._record.held_deliveries = self._record.held_tasks = None
            return True
        self._record.held_deliveries, self._record.held_tasks = tags, tasks
        return bool(tags or tasks or active)

    def _run(self) -> None:
        # After ``stop`` the record is kept alive while anything is still held (a warm shutdown
        # waits for the running task after this step stops): deleting it would let the watchdog
        # restore a task that still runs. The thread is a daemon: it ends with the process, and the
        # record expires PRESENCE_TTL_S later.
        while True:
            holding = self._sample()
            if self._stop.is_set() and not holding:
                break
            try:
                self._client.set(self._key, self._record.to_json(), ex=PRESENCE_TTL_S)
            except Exception as exc:  # noqa: BLE001 - the broker may be away; retry next round
                log.debug("presence.write_failed", error=type(exc).__name__)
                report_refusal("presence", exc)  # a refused login (revoked key) is news at once
            if self._wake.wait(REFRESH_S):
                self._wake.clear()
        with contextlib.suppress(Exception):  # best effort on the way out
            self._client.delete(self._key)
        self._client.close()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def info(self, worker: Any) -> Mapping[str, Any]:
        return {"presence": self._key if self.enabled else None}
