"""The choice between writing a body around the page cache and through it (cache_route.py)."""

from __future__ import annotations

import itertools
from typing import Any

import structlog.testing

from morag_worker.core.transfer.cache_route import Route, RouteChooser

AROUND, THROUGH = Route.AROUND_CACHE, Route.THROUGH_CACHE
BUFFER = 2 * 1024 * 1024


class Body:
    """A body received one buffer at a time at the speed each route is given, on a fake clock."""

    def __init__(
        self,
        chooser_kwargs: dict[str, object] | None = None,
        first: dict[Route, list[float]] | None = None,
        **speeds: float,
    ) -> None:
        self.now = 0.0
        self.received = 0
        self.seconds_per_buffer = {AROUND: speeds.get("around", 1.0), THROUGH: speeds.get("through", 1.0)}
        self.first = first or {}  # the seconds of a route's first buffers, at the start or after a change
        settings: dict[str, Any] = {"window": 4, "lags_to_try": 2, "settle": 0, **(chooser_kwargs or {})}
        self.chooser = RouteChooser(lambda: self.now, **settings)
        self.routes: list[Route] = []

    def buffer(self, held: bool = True) -> Route:
        """Take the next buffer (``held``: it had to wait for the disk) and receive it."""
        route = self.chooser.next_buffer(held, self.received)
        run = sum(1 for _ in itertools.takewhile(lambda earlier: earlier is route, reversed(self.routes)))
        self.routes.append(route)
        first = self.first.get(route, [])
        self.now += first[run] if run < len(first) else self.seconds_per_buffer[route]
        self.received += BUFFER
        return route

    def buffers(self, count: int, held: bool = True) -> list[Route]:
        return [self.buffer(held) for _ in range(count)]


def test_a_disk_that_never_holds_the_receiving_back_keeps_the_body_around_the_cache() -> None:
    body = Body(around=1.0, through=0.1)
    assert set(body.buffers(200, held=False)) == {AROUND}
    assert body.chooser.tries == 0


def test_the_cache_is_tried_only_after_a_whole_window_and_enough_lags_in_a_row() -> None:
    body = Body()
    # Lags from the first buffer, but a window (4 buffers) is measured first: the ring's first
    # buffers never wait, so a shorter stretch would flatter the disk.
    assert body.buffers(4) == [AROUND] * 4
    assert body.buffer() is THROUGH  # the 5th: a window measured, 2 lags in a row


def test_lags_must_come_in_a_row() -> None:
    body = Body()
    for _ in range(50):
        assert body.buffer(held=True) is AROUND
        assert body.buffer(held=False) is AROUND
    assert body.chooser.tries == 0


def test_a_faster_cache_is_kept_and_the_disk_tried_again_now_and_then() -> None:
    body = Body(around=1.0, through=0.5)
    routes = body.buffers(100)
    assert routes[4:9] == [THROUGH] * 5  # tried for a window, kept
    assert AROUND in routes[9:] and routes[-1] is THROUGH  # the disk's tries lose
    # Each try that changed nothing waits twice as long before the next: 2, 4, 8 windows.
    tries_back = [n for n in range(1, 100) if routes[n] is AROUND and routes[n - 1] is THROUGH]
    gaps = [b - a for a, b in itertools.pairwise(tries_back)]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0], tries_back


def test_a_dearer_cache_is_left_and_tried_again_after_ever_longer() -> None:
    body = Body(around=1.0, through=2.0)
    with structlog.testing.capture_logs() as logs:
        routes = body.buffers(120)
    judged = [e for e in logs if e["event"] == "download.cache_route"]
    assert judged and all(e["tried"] == "through_cache" and e["kept"] == "around_cache" for e in judged)
    assert routes.count(THROUGH) == 4 * len(judged)  # a window per try, no more
    starts = [n for n in range(1, 120) if routes[n] is THROUGH and routes[n - 1] is AROUND]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) >= 2 and all(later > earlier for earlier, later in itertools.pairwise(gaps)), starts


def test_the_cache_must_be_faster_by_the_margin() -> None:
    body = Body(around=1.0, through=1.0 / 1.05)  # 5 % faster: not worth the CPU and the evictions
    routes = body.buffers(40)
    assert routes[4:8] == [THROUGH] * 4 and routes[8] is AROUND


def test_a_change_of_speeds_midway_is_followed() -> None:
    body = Body(around=1.0, through=0.5)
    with structlog.testing.capture_logs() as before:
        body.buffers(40)
    body.seconds_per_buffer[THROUGH] = 3.0  # the page cache filled up: the cache is now the slower way
    with structlog.testing.capture_logs() as after:
        routes = body.buffers(200)
    assert before[-1]["kept"] == "through_cache" and after[-1]["kept"] == "around_cache"
    assert routes[-20:] == [AROUND] * 20


def test_speeds_are_measured_once_the_ring_has_turned_over() -> None:
    # At a body's start the ring's buffers are free, so the first ones never wait; just after a
    # change to the cache, the first ones wait for direct writes still queued. Measured from the
    # start, the disk would look faster than the cache, which it is not.
    first = {AROUND: [0.1, 0.1], THROUGH: [2.0, 2.0]}
    hasty = Body({"settle": 0}, first, around=1.0, through=0.8)
    with structlog.testing.capture_logs() as logs:
        hasty.buffers(12)
    assert logs[0]["kept"] == "around_cache"  # the wrong way, from the ring's first buffers
    settled = Body({"settle": 2}, first, around=1.0, through=0.8)
    with structlog.testing.capture_logs() as logs:
        settled.buffers(20)
    assert logs[0]["kept"] == "through_cache"
