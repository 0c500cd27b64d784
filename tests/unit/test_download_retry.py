"""Retries of downloads: which failures are waited out, the backoff schedule, and the hub's outages.

A hub that does not answer is retried until the download's deadline (not ``max_attempts``), told
to an ``OutageWatch``, and ends in ``HubUnreachable`` (the task is requeued, not failed); answers
that will not get better fail at once. The clock is fake and moves only while the downloader
waits, so an hour of backoff takes no time.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from morag_worker.core.transfer.downloader import (
    Downloader,
    DownloadFailed,
    DownloadLimits,
    HubUnreachable,
    IntegrityError,
)
from morag_worker.core.transfer.retry import RetryKind, backoff_delay, kind_of_status
from tests.fakes import FakeClock, RecordingOutageWatch
from tests.httpserver import HTTPTestServer, Reply, Route

pytestmark = pytest.mark.unit

LIMITS = DownloadLimits(
    deadline_s=120, max_attempts=3, disk_reserve_bytes=0, connect_timeout=2, read_timeout=5
)


@pytest.fixture
def server() -> Iterator[HTTPTestServer]:
    with HTTPTestServer() as srv:
        yield srv


class Waits:
    """The downloader's ``sleep``: records each wait and moves the fake clock by it."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.seen: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)
        self.clock.advance(seconds)


def hub_downloader(
    origin: str,
    watch: RecordingOutageWatch,
    waits: Waits,
    *,
    hub: bool = True,
    limits: DownloadLimits = LIMITS,
) -> Downloader:
    return Downloader(
        limits=limits,
        hub_origin=origin if hub else None,
        api_key="k" * 40,
        sleep=waits,
        clock=waits.clock.monotonic,
        trusted_origins=[origin],
        outage=watch,
        rng=lambda: 0.0,  # no jitter: the schedule itself
    )


def closed_port_origin() -> str:
    with socket.socket() as sock:  # nobody listens there once it is closed: connection refused
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (502, RetryKind.UNREACHABLE),
        (503, RetryKind.UNREACHABLE),
        (504, RetryKind.UNREACHABLE),
        (408, RetryKind.TRANSIENT),
        (429, RetryKind.TRANSIENT),
        (500, RetryKind.TRANSIENT),
        (400, None),
        (401, None),
        (403, None),
        (404, None),
        (410, None),
        (416, None),
    ],
)
def test_statuses_are_classified(status: int, kind: RetryKind | None) -> None:
    assert kind_of_status(status) is kind


def test_the_backoff_doubles_to_its_cap_with_jitter_below_each_step() -> None:
    schedule = [backoff_delay(n, base=1, cap=15, rng=lambda: 0.0) for n in range(1, 8)]
    assert schedule == [1, 2, 4, 8, 15, 15, 15]
    jittered = [backoff_delay(n, base=1, cap=15, rng=lambda: 0.999) for n in range(1, 8)]
    assert all(0.8 * step <= got < step for got, step in zip(jittered, schedule, strict=True))
    assert backoff_delay(10_000, base=1, cap=15, rng=lambda: 0.0) == 15  # no overflow


def test_an_unreachable_hub_is_waited_out_until_the_deadline_then_handed_back(tmp_path: Path) -> None:
    origin, watch, waits = closed_port_origin(), RecordingOutageWatch(), Waits(FakeClock())
    with hub_downloader(origin, watch, waits) as dl, pytest.raises(HubUnreachable) as caught:
        dl.download(origin + "/api/v1/files/f1", tmp_path)
    # Far more attempts than max_attempts (3), on the capped schedule, within the 120 s deadline.
    assert waits.seen == [1, 2, 4, 8, 15, 15, 15, 15, 15, 15]
    assert sum(waits.seen) < LIMITS.deadline_s <= sum(waits.seen) + 15  # one more wait would reach it
    assert caught.value.attempts == len(waits.seen) + 1 and not caught.value.stopping
    assert "could not be reached for 105 s" in str(caught.value) and "back to the queue" in str(caught.value)
    assert [retry_in for _, retry_in in watch.unreachable_calls] == waits.seen
    assert watch.unreachable_calls[0][0] == "could not connect" and watch.answers == 0
    assert list(tmp_path.iterdir()) == []


def test_another_server_that_does_not_answer_gets_max_attempts(tmp_path: Path) -> None:
    origin, watch, waits = closed_port_origin(), RecordingOutageWatch(), Waits(FakeClock())
    with (
        hub_downloader(origin, watch, waits, hub=False) as dl,
        pytest.raises(DownloadFailed, match="after 3 attempts: could not connect"),
    ):
        dl.download(origin + "/f", tmp_path)
    assert waits.seen == [1, 2] and watch.unreachable_calls == []


def test_a_503_with_retry_after_is_honoured_past_max_attempts_and_the_hub_is_back(
    server: HTTPTestServer, tmp_path: Path
) -> None:
    busy = [Reply(503, {"Retry-After": "7"}) for _ in range(5)] + [Reply(502), Reply(504)]
    server.route("/api/v1/files/f1", Route(body=b"finally", replies=busy))
    watch, waits = RecordingOutageWatch(), Waits(FakeClock())
    with hub_downloader(server.origin, watch, waits) as dl:
        result = dl.download(server.url("/api/v1/files/f1"), tmp_path)
    assert result.path.read_bytes() == b"finally" and result.attempts == 8
    assert waits.seen == [7, 7, 7, 7, 7, 15, 15]  # Retry-After, then the backoff (6th failure: capped)
    assert len(watch.unreachable_calls) == 7 and watch.answers == 1  # the 200 said the hub is back


@pytest.mark.parametrize(("status", "text"), [(404, "not found"), (403, "rejected the API key")])
def test_answers_that_will_not_get_better_fail_at_once(
    server: HTTPTestServer, tmp_path: Path, status: int, text: str
) -> None:
    server.route("/api/v1/files/f1", Route(status=status))
    watch, waits = RecordingOutageWatch(), Waits(FakeClock())
    with hub_downloader(server.origin, watch, waits) as dl, pytest.raises(DownloadFailed, match=text):
        dl.download(server.url("/api/v1/files/f1"), tmp_path)
    assert waits.seen == [] and watch.unreachable_calls == [] and watch.answers == 1


def test_a_checksum_mismatch_is_not_waited_out(server: HTTPTestServer, tmp_path: Path) -> None:
    server.route("/api/v1/files/f1", Route(body=b"rotten"))
    watch, waits = RecordingOutageWatch(), Waits(FakeClock())
    with hub_downloader(server.origin, watch, waits) as dl, pytest.raises(IntegrityError):
        dl.download(server.url("/api/v1/files/f1"), tmp_path, expected_sha256="0" * 64)
    assert waits.seen == [] and watch.unreachable_calls == []


def test_a_hub_answering_500_still_gets_max_attempts(server: HTTPTestServer, tmp_path: Path) -> None:
    server.route("/api/v1/files/f1", Route(status=500))
    watch, waits = RecordingOutageWatch(), Waits(FakeClock())
    with (
        hub_downloader(server.origin, watch, waits) as dl,
        pytest.raises(DownloadFailed, match="after 3 attempts: the server answered HTTP 500"),
    ):
        dl.download(server.url("/api/v1/files/f1"), tmp_path)
    assert waits.seen == [1, 2] and watch.unreachable_calls == []


def test_a_stopping_worker_stops_waiting_for_the_hub(tmp_path: Path) -> None:
    origin, watch, waits = closed_port_origin(), RecordingOutageWatch(stop_after=2), Waits(FakeClock())
    with hub_downloader(origin, watch, waits) as dl, pytest.raises(HubUnreachable) as caught:
        dl.download(origin + "/api/v1/files/f1", tmp_path)
    assert caught.value.stopping and "worker is stopping" in str(caught.value)
    assert waits.seen == [1, 2]


class BackSoon(RecordingOutageWatch):
    """The worker's probe found the hub back while the download waits."""

    def seen_back(self) -> bool:
        return True


def test_a_wait_for_the_hub_ends_early_when_it_is_seen_back(tmp_path: Path) -> None:
    origin, watch = closed_port_origin(), BackSoon(stop_after=2)
    limits = DownloadLimits(deadline_s=600, backoff_base=30, backoff_max=30, disk_reserve_bytes=0)
    started = time.monotonic()
    # The real waiting path (no injected sleep): a 30 s wait that ends at its first look.
    with (
        Downloader(limits=limits, hub_origin=origin, trusted_origins=[origin], outage=watch) as dl,
        pytest.raises(HubUnreachable),
    ):
        dl.download(origin + "/api/v1/files/f1", tmp_path)
    assert time.monotonic() - started < 10
    assert len(watch.unreachable_calls) == 1
