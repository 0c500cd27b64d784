"""Which way a large body's buffers reach the disk: around the page cache, or through it.

Around the cache (``direct_copy.py``), a buffer costs the disk's time and almost no CPU. Through
it, the bytes are copied into new pages of cache, which costs the writing thread 0.4-2 CPU s/GiB
on the bench's VMs but frees the download from waiting for the disk. Which is faster depends on
the machine, and no one figure tells in advance:

- a disk that took O_DIRECT writes at 450-730 MiB/s held a 512 MiB download from Python's
  ``http.server`` to 421 MiB/s around the cache; going through the cache once the disk held the
  receiving back gave 633 (8 runs each, medians);
- on a VM whose disk took them at about 1,450 MiB/s alone, the receiving also waited on the disk
  for half its time, but there filling the cache cost 1.3-1.6 CPU s/GiB, and the same switch
  lowered the download from 894 MiB/s to 539 (from a sendfile server: 803 to 595).

So a download measures instead of guessing. It starts around the cache. Once the disk has held
the receiving back for :data:`LAGS_TO_TRY` buffers in a row, it tries the cache for a
:data:`WINDOW` of buffers, and keeps whichever way received faster over its last window (the
cache only when faster by :data:`MARGIN`: going around it costs less CPU and leaves other
programs' cached files in place). Later it tries the other way again, after :data:`PAUSE_WINDOWS`
windows, and after twice as long each time a try changed nothing (at most
:data:`MAX_PAUSE_WINDOWS`). A window is measured only once the ring has turned over on its way
(``settle`` buffers after the body's start or a change): until then the ring's buffers are still
free, or still being written the other way, and would flatter one way or the other.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import Enum

import structlog

from morag_worker.core.transfer import direct_copy

__all__ = ["LAGS_TO_TRY", "MARGIN", "MAX_PAUSE_WINDOWS", "PAUSE_WINDOWS", "WINDOW", "Route", "RouteChooser"]

log = structlog.get_logger(__name__)

# The disk held the receiving back this many buffers in a row (their hashing done, their writing
# not). One stalled write holds back at most the ring's buffers queued behind it.
LAGS_TO_TRY = direct_copy.BUFFERS + 1
WINDOW = 16  # buffers over which a way's speed is measured (64 MiB), once the ring turned over
MARGIN = 1.1  # the cache must receive this much faster to be kept
PAUSE_WINDOWS = 2  # windows on the way kept before the other one is tried again, at first
MAX_PAUSE_WINDOWS = 16  # and at most: a long body still notices a change within a GiB or so


class Route(Enum):
    """How the buffers of a body received directly are written."""

    AROUND_CACHE = "around the page cache"
    # Hashed on arrival; each buffer written around the cache if the disk is free, else through it.
    THROUGH_CACHE = "through the page cache while the disk is busy"


class RouteChooser:
    """Chooses the route of each buffer of one body from the speeds it measured (see above)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        window: int = WINDOW,
        lags_to_try: int = LAGS_TO_TRY,
        margin: float = MARGIN,
        pause_windows: int = PAUSE_WINDOWS,
        settle: int = direct_copy.BUFFERS,
    ) -> None:
        self.clock = clock
        self.window = window
        self.lags_to_try = lags_to_try
        self.margin = margin
        self.settle = settle
        self.route = Route.AROUND_CACHE
        self.tries = 0  # how often the other way was tried
        self._pause = pause_windows
        self._first_pause = pause_windows
        self._marks: deque[tuple[float, int]] = deque(maxlen=window + 1)  # (time, bytes received)
        self._on_route = 0  # buffers received on this route (the first ``settle`` are not measured)
        self._lags = 0
        self._against: float | None = None  # the other way's speed, while this one is tried
        self._wait = 0  # buffers before the other way may be tried again

    def next_buffer(self, held_by_the_disk: bool, received: int) -> Route:
        """The route of the next buffer. ``held_by_the_disk``: the buffer it is about to reuse was
        hashed but still being written; ``received``: the bytes received so far."""
        if self._on_route <= self.settle:  # measured from the end of the first ``settle`` buffers
            self._marks.clear()
        self._marks.append((self.clock(), received))
        measured = len(self._marks) > self.window  # a whole window on this route
        self._wait -= 1
        if self._against is not None:
            if measured:
                self._judge()
        elif self.route is Route.AROUND_CACHE:
            self._lags = self._lags + 1 if held_by_the_disk else 0
            if self._lags >= self.lags_to_try and measured and self._wait <= 0:
                self._try(Route.THROUGH_CACHE)
        elif measured and self._wait <= 0:
            self._try(Route.AROUND_CACHE)
        self._on_route += 1
        return self.route

    def _speed(self) -> float:
        """Bytes a second over the marks kept: the last window, or what this route has had of it."""
        (start, before), (now, after) = self._marks[0], self._marks[-1]
        return (after - before) / max(now - start, 1e-9)

    def _try(self, route: Route) -> None:
        self._against = self._speed()
        self.tries += 1
        self._take(route)

    def _take(self, route: Route) -> None:
        self.route = route
        self._marks = deque([self._marks[-1]], maxlen=self.window + 1)
        self._on_route = 0
        self._lags = 0

    def _judge(self) -> None:
        """The tried route has had its window: keep the faster way, and wait before the next try."""
        tried, other = self._speed(), self._against
        assert other is not None
        self._against = None
        through, around = (tried, other) if self.route is Route.THROUGH_CACHE else (other, tried)
        keep = Route.THROUGH_CACHE if through > around * self.margin else Route.AROUND_CACHE
        log.debug(
            "download.cache_route",
            tried=self.route.name.lower(),
            kept=keep.name.lower(),
            through_mib_s=round(through / direct_copy.MiB),
            around_mib_s=round(around / direct_copy.MiB),
        )
        if keep is self.route:
            self._pause = self._first_pause  # things changed: look again soon
        else:
            self._pause = min(2 * self._pause, MAX_PAUSE_WINDOWS)
            self._take(keep)
        self._wait = self._pause * self.window
