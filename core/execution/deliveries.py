"""How often a task was started: a task whose run kills the worker must not loop forever.

With acks-late and ``task_reject_on_worker_lost`` a task whose pool process dies (the OOM killer, a
crashing parser) goes back to the queue, and Redis does not count redeliveries. So each start
is counted under the user's namespace (``attempts:{task_id}``, GET and SETEX, both in the
contributor's ACL); every way a run ends normally removes the count, and only deaths leave it
standing. Past ``limit`` starts the task ends with a clear ``success: false`` instead of a run.
Counting is best effort: if Redis cannot be asked, the task simply runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

__all__ = ["DEFAULT_MAX_STARTS", "DeliveryCounter", "max_starts_from_env"]

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

    def start(self, task_id: str) -> int:
        """Record one more start of ``task_id``; return how many there have been (0: unknown)."""
        key = self._prefix + task_id
        try:
            starts = int(self._client.get(key) or 0) + 1
            self._client.setex(key, COUNT_TTL_S, starts)
        except Exception as exc:  # noqa: BLE001 - never keep a task from running over bookkeeping
            log.warning("deliveries.count_failed", task_id=task_id, error=type(exc).__name__)
            return 0
        return starts

    def finished(self, task_id: str) -> None:
        """The run ended without the worker dying: forget the count."""
        try:
            self._client.delete(self._prefix + task_id)
        except Exception as exc:  # noqa: BLE001 - a stale count expires on its own
            log.warning("deliveries.clear_failed", task_id=task_id, error=type(exc).__name__)
