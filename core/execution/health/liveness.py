"""Child side of liveness: a heartbeat on the progress channel that also says whether the consumer polls.

A daemon thread in the worker's main process (a worker bootstep, started with the pool, so it
beats while the consumer connects too) writes a ``heartbeat`` every ``MORAG_HEARTBEAT_S`` seconds.
Besides proving that the main process runs, it reports what can be observed of the consumer
(measured on Celery 5.7 / kombu 5.7 with Redis):

- ``worker.consumer.connection`` is None while the consumer (re)connects to the broker;
- each kombu Redis channel stamps ``_brpop_sent_at`` (monotonic) whenever it sends a BRPOP; an idle
  consumer sends one every ``brpop_timeout`` (1 s), a consumer holding its one prefetched message
  sends none until it acks, so "seconds since the last BRPOP" is meaningful only when nothing is
  reserved;
- ``celery.worker.state`` lists the reserved and active requests;
- the hub outage board and the intake gate say whether the consumer is paused on purpose
  (``hub_outage.py``, ``intake_gate.py``).

The supervisor decides what is stalled (``HeartbeatMessage.stalled``); this side only reports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import structlog
from celery import bootsteps

from morag_worker.core.execution.progress_channel import ChannelWriter, heartbeat_interval

__all__ = ["HeartbeatStep", "consumer_health"]

log = structlog.get_logger(__name__)


def _last_brpop(connection: Any) -> float | None:
    """Monotonic time of the newest BRPOP any channel of ``connection`` sent, if observable."""
    try:
        channels = list(connection.transport.cycle._channels)
    except Exception:  # not the Redis transport, or no cycle yet
        return None
    stamps = [s for ch in channels if isinstance(s := getattr(ch, "_brpop_sent_at", None), int | float)]
    return max(stamps) if stamps else None


def consumer_health(worker: Any, now: float | None = None, *, paused: bool = False) -> dict[str, Any]:
    """The heartbeat's fields for ``worker`` (a WorkController): consumer state and requests.

    ``paused``: the consumer takes no task on purpose (the hub is unreachable, or the intake rules hold).
    """
    from celery.worker import state

    now = time.monotonic() if now is None else now
    consumer = getattr(worker, "consumer", None)
    connection = getattr(consumer, "connection", None) if consumer is not None else None
    if consumer is None:
        status, since_poll = "starting", None
    elif connection is None:
        status, since_poll = "connecting", None
    else:
        status = "connected"
        sent_at = _last_brpop(connection)
        since_poll = round(now - sent_at, 3) if sent_at is not None else None
    return {
        "consumer": status,
        "since_poll_s": since_poll,
        "reserved": len(state.reserved_requests),
        "active": sorted(str(r.id) for r in list(state.active_requests))[:20],
        "paused": paused,
    }


class HeartbeatStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Beats on the progress channel while the worker runs; enabled only when there is a channel."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        from morag_worker.core.execution.context import get_runtime

        runtime = get_runtime()
        self.channel: ChannelWriter | None = runtime.channel
        self._board = runtime.hub_board
        self._intake = runtime.intake
        self.enabled = self.channel is not None
        self._interval = heartbeat_interval(_environ())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        super().__init__(worker, **kwargs)

    def start(self, worker: Any) -> None:
        self._thread = threading.Thread(target=self._run, args=(worker,), name="morag-heartbeat", daemon=True)
        self._thread.start()

    def _run(self, worker: Any) -> None:
        channel = self.channel
        assert channel is not None
        while not self._stop.is_set():
            try:
                paused = self._board.unreachable_since is not None or self._intake.held
                fields = consumer_health(worker, paused=paused)
            except Exception as exc:  # noqa: BLE001 - a beat without details still proves life
                log.debug("heartbeat.probe_failed", error=type(exc).__name__)
                fields = {"consumer": "starting"}
            if not channel.send("heartbeat", **fields):
                return
            self._stop.wait(self._interval)

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def info(self, worker: Any) -> Mapping[str, Any]:
        return {"heartbeat_s": self._interval if self.enabled else None}


def _environ() -> Mapping[str, str]:
    import os

    return os.environ
