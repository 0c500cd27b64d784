"""While the hub does not answer, the worker takes no new task: the outage board and the hub gate.

A download from the hub that finds it unreachable keeps retrying (``transfer/retry.py``) and marks
the :class:`OutageBoard`. The board is a few bytes of anonymous shared memory created in the
worker's main process before the prefork pool forks, so the pool process that downloads and the
main process that consumes see the same values (with the threads pool it is simply shared).

In the main process, :class:`HubGateStep` (a worker bootstep) runs :class:`HubGate` on a daemon
thread: when the board says "unreachable" it asks for the consumer to be paused, probes the hub's
``/healthz`` with capped exponential backoff, says on the progress channel "hub unreachable,
retrying in N s" before each wait, and when the hub answers (its probe, or a download that got
through) clears the board and asks for the consumer to resume. The pausing itself happens on the
consumer's own thread (a timer of the worker's event loop): the consumer blueprint's
``cancel_task_queue`` / ``add_task_queue``, which keep ``app.amqp.queues`` in step, so a consumer
that reconnects while paused still consumes nothing. No remote control is involved. The switch
(:class:`ConsumerSwitch`) is shared with the intake gate (``intake_gate.py``): the queues are
paused while either gate holds. :class:`PauseAtStartStep`, a consumer step, applies the same wish
as soon as the task consumer exists, before the first fetch, so a worker started while a gate
holds takes nothing. (With the
threads pool on Windows there is no event loop and the worker's timer is a thread of its own;
kombu's Redis channel defers a cancel that arrives during a read until the read is over.)

When the worker starts to stop (warm: finish), the step marks the board "stopping", so a download
waiting for the hub gives up at once and its task goes back to the queue instead of holding the
shutdown until the download's deadline.
"""

from __future__ import annotations

import mmap
import random
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from celery import bootsteps

from morag_worker.core.fork_guard import import_guard
from morag_worker.core.transfer.retry import backoff_delay

if TYPE_CHECKING:
    import requests

__all__ = ["ConsumerSwitch", "HubGate", "HubGateStep", "OutageBoard", "PauseAtStartStep", "probe_healthz"]

log = structlog.get_logger(__name__)

_LAYOUT = struct.Struct("<dd")  # unreachable since (epoch seconds, 0: reachable), stopping (0 or 1)
APPLY_EVERY_S = 0.5  # how often the consumer's thread compares the gate's wish with what it does


class OutageBoard:
    """What the worker's processes know about the hub; implements ``transfer.retry.OutageWatch``.

    Create it in the main process before the pool forks. Writes are single aligned 8-byte stores:
    a reader sees the old value or the new one, which is all any decision here needs.
    """

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, _LAYOUT.size)
        self._lock = threading.Lock()  # for the threads of one process; processes need none

    def _read(self) -> tuple[float, float]:
        since, stopping = _LAYOUT.unpack_from(self._mem, 0)
        return float(since), float(stopping)

    def _write(self, since: float, stopping: float) -> None:
        _LAYOUT.pack_into(self._mem, 0, since, stopping)

    # -- OutageWatch (the downloading thread) ---------------------------------------------------
    def unreachable(self, reason: str, retry_in: float) -> None:
        with self._lock:
            since, stopping = self._read()
            if not since:
                self._write(time.time(), stopping)
                log.warning("hub.unreachable", reason=reason, retry_in_s=round(retry_in, 1))

    def answered(self) -> None:
        with self._lock:
            since, stopping = self._read()
            if since:
                self._write(0.0, stopping)
                log.info("hub.reachable", unreachable_s=round(time.time() - since, 1))

    def give_up_waiting(self) -> bool:
        return self.stopping

    def seen_back(self) -> bool:
        return self.unreachable_since is None

    # -- the main process ---------------------------------------------------------------------
    @property
    def unreachable_since(self) -> float | None:
        since, _ = self._read()
        return since or None

    @property
    def stopping(self) -> bool:
        return bool(self._read()[1])

    def set_stopping(self) -> None:
        with self._lock:
            since, _ = self._read()
            self._write(since, 1.0)


Report = Callable[..., object]
"""Sends one ``hub`` message on the progress channel: ``report(reachable=..., retry_in_s=...)``."""


class HubGate:
    """Decides whether the consumer should be paused, and probes the hub until it answers.

    Runs on its own thread (``run``); ``paused`` is read from the consumer's thread.

    Args:
        board: The outage board the downloads mark.
        probe: True when the hub answers (``probe_healthz``); must not raise.
        report: Tells the supervisor (a ``hub`` channel message).
        base, cap: The probe's backoff, seconds (about 1, 2, 4, 8, 15, 15… by default).
        poll_s: How often the board is looked at.
        rng, clock: For the jitter and the waits; tests inject them.
    """

    def __init__(
        self,
        board: OutageBoard,
        probe: Callable[[], bool],
        report: Report,
        *,
        base: float = 1.0,
        cap: float = 15.0,
        poll_s: float = 0.25,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.board = board
        self._probe = probe
        self._report = report
        self._base, self._cap, self._poll = base, cap, poll_s
        self._rng, self._clock = rng, clock
        self.paused = False
        self.probes = 0

    def run(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            if self.board.unreachable_since is None:
                if self.paused:
                    self.paused, failures = False, 0
                    log.info("hub.gate_open")
                    self._report(reachable=True, retry_in_s=None)
                stop.wait(self._poll)
                continue
            if not self.paused:
                self.paused = True
                log.warning("hub.gate_closed")
            failures += 1
            delay = backoff_delay(failures, base=self._base, cap=self._cap, rng=self._rng)
            self._report(reachable=False, retry_in_s=round(delay, 1))
            end = self._clock() + delay
            while not stop.is_set() and self.board.unreachable_since is not None:
                left = end - self._clock()
                if left <= 0:
                    break
                stop.wait(min(left, self._poll))
            if stop.is_set() or self.board.unreachable_since is None:
                continue  # a download got through meanwhile: open at the top of the loop
            self.probes += 1
            if self._probe():
                self.board.answered()


def probe_healthz(hub_url: str, timeout: float = 5.0) -> Callable[[], bool]:
    """A probe: True when ``GET {hub_url}/healthz`` answers 200 within ``timeout`` s.

    requests is imported, and the session made, at the first probe: only an outage needs them,
    and the worker's start does not wait for them.
    """
    url = hub_url.rstrip("/") + "/healthz"
    sessions: list[requests.Session] = []

    def probe() -> bool:
        with import_guard():  # on the gate's thread, while the main thread may fork a pool process
            import requests

        if not sessions:
            session = requests.Session()
            session.trust_env = False  # like the downloads: no proxy variables, no .netrc
            sessions.append(session)
        try:
            response = sessions[0].get(url, timeout=(timeout, timeout), allow_redirects=False)
        except requests.RequestException as exc:
            log.debug("hub.probe_failed", error=type(exc).__name__)
            return False
        response.close()
        return response.status_code == 200

    return probe


class ConsumerSwitch:
    """Pauses and resumes the consumer's task queues; used on the consumer's thread only.

    ``cancelled`` names the queues taken away while paused. Celery's ``cancel_task_queue`` also
    deselects them in ``app.amqp.queues``, so a consumer rebuilt after a reconnect stays paused.
    """

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def apply(self, consumer: Any, *, hub: bool, intake: str | None) -> None:
        """Paused while the hub is unreachable (``hub``) or the intake rules hold (``intake``: why)."""
        if getattr(consumer, "task_consumer", None) is None or consumer.connection is None:
            return  # (re)connecting: the next tick applies the wish
        paused = hub or intake is not None
        try:
            if paused and not self.cancelled:
                names = [queue.name for queue in consumer.task_consumer.queues]
                for name in names:
                    consumer.cancel_task_queue(name)
                self.cancelled = names
                log.warning("hub.consumer_paused", queues=names, hub=hub, intake=intake)
            elif not paused and self.cancelled:
                for name in self.cancelled:
                    consumer.add_task_queue(name)
                log.info("hub.consumer_resumed", queues=self.cancelled)
                self.cancelled = []
        except Exception as exc:  # noqa: BLE001 - a broker hiccup: the next tick tries again
            log.warning("hub.consumer_switch_failed", error=type(exc).__name__, message=str(exc)[:200])


class PauseAtStartStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step: applies the gates' wish as soon as the task consumer exists.

    It runs after Celery's ``Tasks`` step has made the task consumer and before the event loop's
    first fetch, so a worker that starts (or reconnects) while a gate holds takes no task in the
    half second before the hub gate's timer would have paused it.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        from morag_worker.core.execution.context import get_runtime

        runtime = get_runtime()
        self.board, self.intake, self.switch = runtime.hub_board, runtime.intake, runtime.consumer_switch
        self.enabled = runtime.hub_url is not None
        super().__init__(parent, **kwargs)

    def start(self, parent: Any) -> None:
        self.switch.apply(parent, hub=self.board.unreachable_since is not None, intake=self.intake.reason)


class HubGateStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Pauses the consumer while the hub is unreachable; enabled when the worker has a hub."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        from morag_worker.core.execution.context import get_runtime

        runtime = get_runtime()
        self.board = runtime.hub_board
        self.intake = runtime.intake
        self.hub_url = runtime.hub_url
        self.channel = runtime.channel
        self.enabled = self.hub_url is not None
        self.gate: HubGate | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.switch = runtime.consumer_switch
        super().__init__(worker, **kwargs)

    def start(self, worker: Any) -> None:
        assert self.hub_url is not None
        self.gate = HubGate(self.board, probe_healthz(self.hub_url), self._send)
        self._thread = threading.Thread(
            target=self.gate.run, args=(self._stop,), name="morag-hub-gate", daemon=True
        )
        self._thread.start()
        worker.timer.call_repeatedly(APPLY_EVERY_S, self._apply, (worker,))

    def _send(self, **fields: Any) -> None:
        if self.channel is not None:
            self.channel.send("hub", **fields)

    def _apply(self, worker: Any) -> None:
        """On the consumer's thread: pause or resume its task queues as the gates wish.

        The intake gate (``intake_gate.py``) holds through the same switch: paused while either wants.
        """
        gate, consumer = self.gate, getattr(worker, "consumer", None)
        if gate is None or consumer is None or self._stop.is_set():
            return
        self.switch.apply(consumer, hub=gate.paused, intake=self.intake.reason)

    def stop(self, worker: Any) -> None:
        # A warm shutdown stops this step before the pool waits for its tasks: a download that
        # waits for the hub gives up now, and its task goes back to the queue.
        self.board.set_stopping()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def info(self, worker: Any) -> Mapping[str, Any]:
        return {"hub_gate": self.enabled}
