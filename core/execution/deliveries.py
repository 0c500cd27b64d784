"""How often a task was started: a task whose run kills the worker must not loop forever.

With acks-late and ``task_reject_on_worker_lost`` a task whose pool process dies (the OOM killer, a
crashing parser) goes back to the queue, and Redis does not count redeliveries. Every way back to
the queue (a dead pool process's reject, a stop now, the hub's watchdog, a visibility timeout) goes
through kombu's restore, which marks the message ``redelivered``. So a first delivery, the common
case, costs no Redis call at all: it is the first start. A redelivered one counts its start under
the user's namespace (``attempts:{task_id}``, GET and SET with a TTL, both in the contributor's ACL): a
missing count means one earlier start that died before anything was recorded. A run that ends
normally removes the count it wrote; one that goes back to the queue on purpose (stop now, hub
unreachable) leaves a count of 0, so that its next start counts as a first; only deaths leave the
count standing. Past ``limit`` starts the task ends with a clear ``success: false`` instead of a
run. Counting is best effort: if Redis cannot be asked, the task simply runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

__all__ = ["DEFAULT_MAX_STARTS", "DeliveryCounter", "Start", "max_starts_from_env"]

log = structlog.get_logger(__name__)

DEFAULT_MAX_STARTS = 3
COUNT_TTL_S = 7 * 24 * 3600


def max_starts_from_env(env: Mapping[str, str]) -> int:
    raw = env.get("MORAG_MAX_TASK_STARTS") or ""
    try:
        value = int(raw) if raw else DEFAULT_MAX_STARTS
    except ValueError:
        raise ValueError(f"MORAG_MAX_TASK_STARTS must be a whole number, not {raw!r}") from None
    if value < 1:
        raise ValueError("MORAG_MAX_TASK_STARTS must be at least 1")
    return value


class DeliveryCounter:
    """Counts starts of tasks in one namespace through ``client`` (a redis-py client)."""

    def __init__(self, client: Any, key_prefix: str, limit: int) -> None:
        self._client = client
        self._prefix = f"{key_prefix}attempts:"
        self.limit = limit

    def start(self, task_id: str, *, redelivered: bool = True) -> Start:
        """Record one more start of ``task_id``; say how many there have been (0: unknown).

        ``redelivered`` is the message's flag: False for a first delivery, which asks nothing.
        """
        if not redelivered:
            return Start(1, recorded=False)
        key = self._prefix + task_id
        try:
            stored = self._client.get(key)
            starts = (1 if stored is None else int(stored)) + 1
            self._client.set(key, starts, ex=COUNT_TTL_S)
        except Exception as exc:  # noqa: BLE001 - never keep a task from running over bookkeeping
            log.warning("deliveries.count_failed", task_id=task_id, error=type(exc).__name__)
            return Start(0, recorded=False)
        return Start(starts, recorded=True)

    def finished(self, task_id: str, start: Start) -> None:
        """The run ended without the worker dying: forget the count, if this start wrote one."""
        if start.recorded:
            try:
                self._client.delete(self._prefix + task_id)
            except Exception as exc:  # noqa: BLE001 - a stale count expires on its own
                log.warning("deliveries.clear_failed", task_id=task_id, error=type(exc).__name__)

    def requeued(self, task_id: str, start: Start) -> Start:
        """The run goes back to the queue on purpose: its next start counts as a first one.

        Returns the start as it now stands, for :meth:`finished` (which must leave the 0 alone).
        """
        try:
            self._client.set(self._prefix + task_id, 0, ex=COUNT_TTL_S)
        except Exception as exc:  # noqa: BLE001 - then it counts as one more start, no worse
            log.warning("deliveries.count_failed", task_id=task_id, error=type(exc).__name__)
        return Start(start.starts, recorded=False)


@dataclass(frozen=True)
class Start:
    """One start of a task: how many starts it has had (0: unknown), and whether Redis holds it."""

    starts: int
    recorded: bool
