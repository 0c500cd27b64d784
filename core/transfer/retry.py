"""Which download failures are worth waiting out, and how long to wait between attempts (pure).

Three kinds of failure (:class:`RetryKind`):

- ``UNREACHABLE``: the server did not answer at all, or a gateway in front of it says it is gone:
  connection refused or reset, connect and read timeouts, a name that does not resolve, a
  connection cut mid-body, HTTP 502, 503 (its ``Retry-After`` honoured) and 504. An outage of the
  hub ends; a download from the hub waits it out until its overall deadline, however many attempts
  that takes, and tells an :class:`OutageWatch` so that the worker takes no new task meanwhile.
- ``TRANSIENT``: the server answered, badly, in a way another attempt may mend (408, 429, 500, a
  transfer under the minimum rate, a resume at the wrong offset). These have ``max_attempts``.
- Anything else (404, 403, a checksum mismatch, a file over the cap) is no ``RetryableFailure`` at
  all: the download fails at once.

A server other than the hub gets ``max_attempts`` for both retryable kinds: a third party that does
not answer is the task's problem, not an outage of ours.

The delays are capped exponential with jitter: about 1, 2, 4, 8, 15, 15… s by default, each taken
from the upper fifth of its step so that a schedule stays recognisable and workers do not retry in
step. Pure functions and a Protocol: no threads, no clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import Enum
from typing import Protocol

__all__ = [
    "BACKOFF_JITTER",
    "UNREACHABLE_STATUSES",
    "OutageWatch",
    "RetryKind",
    "backoff_delay",
    "kind_of_status",
]

UNREACHABLE_STATUSES = frozenset({502, 503, 504})
TRANSIENT_STATUSES = frozenset({408, 429, 500})
BACKOFF_JITTER = 0.2  # each delay is its step less up to this fraction


class RetryKind(Enum):
    UNREACHABLE = "unreachable"  # no answer, or a gateway saying the server is gone: wait it out
    TRANSIENT = "transient"  # an answer another attempt may mend: a few attempts


def kind_of_status(status: int) -> RetryKind | None:
    """The kind of an HTTP status worth retrying, or None when retrying cannot help."""
    if status in UNREACHABLE_STATUSES:
        return RetryKind.UNREACHABLE
    if status in TRANSIENT_STATUSES:
        return RetryKind.TRANSIENT
    return None


def backoff_delay(
    failures: int,
    *,
    base: float,
    cap: float,
    rng: Callable[[], float] = random.random,
    jitter: float = BACKOFF_JITTER,
) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1-based).

    ``min(cap, base * 2 ** (failures - 1))``, less up to ``jitter`` of it (``rng`` gives [0, 1)).
    """
    step = min(cap, base * 2.0 ** min(max(failures, 1) - 1, 30))
    return step * (1.0 - jitter * rng())


class OutageWatch(Protocol):
    """Told about the hub's availability by downloads from it (the worker pauses its consumer).

    Called on the downloading thread; must not block or raise.
    """

    def unreachable(self, reason: str, retry_in: float) -> None:
        """An attempt found the hub unreachable; the download tries again in ``retry_in`` s."""

    def answered(self) -> None:
        """The hub answered (any HTTP status): it is reachable."""

    def give_up_waiting(self) -> bool:
        """True when the worker is stopping: a download waiting for the hub should stop waiting."""
        ...

    def seen_back(self) -> bool:
        """True when the hub answered someone since it was last found unreachable: try again now."""
        ...
