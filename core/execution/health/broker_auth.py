"""Telling the supervisor at once when Redis refuses this worker's login (a revoked or expired key).

Revoking a key deletes the worker's ACL password and kills its connections (``core/server/acl.py``);
every reconnect then fails with WRONGPASS. Celery only logs that and retries forever, so the worker
would look idle ("Waiting for work") while it can neither take nor finish a task. Whoever meets such
an error (the consumer's new broker channel, the presence thread) calls :func:`report_refusal`,
which sends a ``broker_refused`` line on the progress channel; the supervisor asks the hub
whether the key is still valid and stops the worker when it is not.

Runs on whichever thread met the error, in the worker's main process or a pool process; each source
reports at most every ``REPORT_EVERY_S`` so a reconnect loop cannot flood the channel.
"""

from __future__ import annotations

import threading
import time

import structlog

from morag_worker.core.logging import redact

__all__ = ["REPORT_EVERY_S", "is_auth_failure", "report_refusal"]

log = structlog.get_logger(__name__)

REPORT_EVERY_S = 5.0
# What Redis answers a login or a command it refuses for want of valid credentials.
_MARKERS = ("wrongpass", "noauth", "invalid username-password pair", "user is disabled")

_lock = threading.Lock()
_last_sent: dict[str, float] = {}  # source -> monotonic time of its last report


def is_auth_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is Redis refusing the credentials."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ == "AuthenticationError":  # redis.exceptions, without importing redis
            return True
        text = str(current).lower()
        if any(marker in text for marker in _MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def report_refusal(source: str, exc: BaseException, *, now: float | None = None) -> bool:
    """Send ``broker_refused`` when ``exc`` is an authentication failure; whether a line was sent."""
    if not is_auth_failure(exc):
        return False
    now = time.monotonic() if now is None else now
    with _lock:
        last = _last_sent.get(source)
        if last is not None and now - last < REPORT_EVERY_S:
            return False
        _last_sent[source] = now
    error = redact(str(exc))[:300] or type(exc).__name__
    log.error("broker.login_refused", source=source, error=error)
    from morag_worker.core.execution.context import get_runtime

    channel = get_runtime().channel
    return channel is not None and channel.send("broker_refused", source=source, error=error)


def _reset() -> None:
    """Forget the last report (tests)."""
    with _lock:
        _last_sent.clear()
