"""Small hub files over the kept hub line (issue 14): one connection for many tasks, no requests
on the way, every answer checked as the full way checks it, and anything the line does not read
fetched the full way."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from morag_worker.core.transfer.downloader import (
    Downloader,
    DownloadFailed,
    DownloadLimits,
    HubUnreachable,
    IntegrityError,
)
from morag_worker.core.transfer.hub_line import SMALL_BYTES, Unexpected, _parse_head, _request_bytes
from tests.fakes import RecordingOutageWatch
from tests.httpserver import HTTPTestServer, Reply, Route

pytestmark = pytest.mark.unit

API_KEY = "k3y-" + "Zq9" * 12
LIMITS = DownloadLimits(
    connect_timeout=5, read_timeout=15, deadline_s=60, backoff_base=0.01, backoff_max=0.05
)


@pytest.fixture
def hub() -> Iterator[HTTPTestServer]:
    with HTTPTestServer() as srv:
        yield srv


class FullWay:
    """Counts requests that go the full way (requests' adapter) instead of the hub line."""

    def __init__(self, downloader: Downloader) -> None:
        self.count = 0
        real = downloader.session.get_adapter

        def counted(url: str) -> Any:
            self.count += 1
            return real(url)

        downloader.session.get_adapter = counted  # type: ignore[method-assign]


@pytest.fixture
def dl(hub: HTTPTestServer) -> Iterator[Downloader]:
    with Downloader(
        limits=LIMITS, hub_origin=hub.origin, api_key=API_KEY, sleep=lambda _s: None
    ) as downloader:
        yield downloader


def fetch(dl: Downloader, hub: HTTPTestServer, path: str, folder: Path, **stated: Any) -> bytes:
    route = hub.routes[path]
    stated.setdefault("expected_size", len(route.body))
    stated.setdefault("expected_sha256", hashlib.sha256(route.body).hexdigest())
    folder.mkdir()
    return dl.download(hub.url(path), folder, **stated).path.read_bytes()


def test_small_hub_files_come_over_one_kept_line(dl: Downloader, hub: HTTPTestServer, tmp_path: Path) -> None:
    full = FullWay(dl)
    hub.route("/a", Route(body=b"first input\n"))
    hub.route("/b", Route(body=b"second input\n" * 100))
    assert fetch(dl, hub, "/a", tmp_path / "1") == b"first input\n"
    assert fetch(dl, hub, "/b", tmp_path / "2") == b"second input\n" * 100
    assert fetch(dl, hub, "/a", tmp_path / "3") == b"first input\n"
    assert full.count == 0 and hub.connections_accepted == 1
    seen = hub.requests("/a")[0].headers
    assert seen["authorization"] == f"Bearer {API_KEY}" and seen["accept-encoding"] == "identity"


def test_a_file_of_unknown_or_larger_size_goes_the_full_way(
    dl: Downloader, hub: HTTPTestServer, tmp_path: Path
) -> None:
    full = FullWay(dl)
    hub.route("/big", Route(body=b"x" * (SMALL_BYTES + 1)))
    hub.route("/a", Route(body=b"small"))
    assert fetch(dl, hub, "/big", tmp_path / "1") == b"x" * (SMALL_BYTES + 1)
    assert fetch(dl, hub, "/a", tmp_path / "2", expected_size=None) == b"small"
    assert full.count == 2


def test_a_connection_the_hub_closed_while_idle_is_replaced_without_a_retry(
    dl: Downloader, hub: HTTPTestServer, tmp_path: Path
) -> None:
    hub.route("/a", Route(body=b"input"))
    assert fetch(dl, hub, "/a", tmp_path / "1") == b"input"
    hub.each_connection(lambda conn: conn.shutdown(socket.SHUT_RDWR))  # it drops idle ones
    folder = tmp_path / "2"
    folder.mkdir()
    got = dl.download(hub.url("/a"), folder, expected_size=5)
    assert got.path.read_bytes() == b"input" and got.attempts == 1
    assert hub.connections_accepted == 2


def test_a_hub_that_closes_after_each_answer_is_followed(
    dl: Downloader, hub: HTTPTestServer, tmp_path: Path
) -> None:
    hub.route("/a", Route(body=b"input", headers={"Connection": "close"}))
    for n in range(3):
        assert fetch(dl, hub, "/a", tmp_path / str(n)) == b"input"
    assert hub.connections_accepted == 3


@pytest.mark.parametrize(
    "route",
    [Route(body=b"chunked input", send_length=False), Route(body=b"gzipped input", gzip=True)],
    ids=["chunked", "gzip"],
)
def test_an_answer_the_line_does_not_read_is_fetched_the_full_way(
    dl: Downloader, hub: HTTPTestServer, tmp_path: Path, route: Route
) -> None:
    full = FullWay(dl)
    hub.route("/a", route)
    assert fetch(dl, hub, "/a", tmp_path / "1") == route.body
    assert full.count == 1


def test_a_busy_hub_is_waited_for_and_its_answer_checked(
    dl: Downloader, hub: HTTPTestServer, tmp_path: Path
) -> None:
    hub.route("/a", Route(body=b"input", replies=[Reply(503, {"Retry-After": "0"}, b"busy")]))
    folder = tmp_path / "1"
    folder.mkdir()
    got = dl.download(hub.url("/a"), folder, expected_size=5)
    assert got.path.read_bytes() == b"input" and got.attempts == 2


def test_a_size_or_checksum_other_than_stated_is_refused(
    dl: Downloader, hub: HTTPTestServer, tmp_path: Path
) -> None:
    hub.route("/a", Route(body=b"input"))
    with pytest.raises(IntegrityError, match="task expects 6"):
        fetch(dl, hub, "/a", tmp_path / "1", expected_size=6, expected_sha256=None)
    with pytest.raises(IntegrityError):
        fetch(dl, hub, "/a", tmp_path / "2", expected_sha256="0" * 64)
    assert list((tmp_path / "1").iterdir()) == [] and list((tmp_path / "2").iterdir()) == []


def test_a_missing_file_fails_with_the_hubs_status(
    dl: Downloader, hub: HTTPTestServer, tmp_path: Path
) -> None:
    (folder := tmp_path / "1").mkdir()
    with pytest.raises(DownloadFailed, match="404") as failure:
        dl.download(hub.url("/gone"), folder, expected_size=5)
    assert failure.value.status == 404


def test_an_unreachable_hub_is_retried_as_the_full_way_retries(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]  # nothing listens there once closed
    origin = f"http://127.0.0.1:{port}"
    limits = DownloadLimits(
        connect_timeout=1, read_timeout=1, deadline_s=1.5, backoff_base=0.01, backoff_max=0.05
    )
    with Downloader(limits=limits, hub_origin=origin, api_key=API_KEY) as dl:
        full = FullWay(dl)
        with pytest.raises(HubUnreachable, match="could not be reached") as failure:
            dl.download(origin + "/a", tmp_path, expected_size=5)
    assert failure.value.attempts > 1 and full.count == 0
    assert list(tmp_path.iterdir()) == []


# -- the answer's head ---------------------------------------------------------------------------


def test_headers_are_read_by_any_case_and_repeats_joined() -> None:
    status, headers, keep = _parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nVary: a\r\nvary: b")
    assert (status, keep) == (200, True)
    assert headers.get("content-length") == "5" and headers["Content-Length"] == "5"
    assert headers.get("VARY") == "a, b" and "vary" in headers and headers.get("ETag") is None


@pytest.mark.parametrize(
    ("head", "keep"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close", False),
        (b"HTTP/1.0 200 OK", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive", True),
    ],
)
def test_the_connection_is_kept_as_the_hub_says(head: bytes, keep: bool) -> None:
    assert _parse_head(head)[2] is keep


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/2 200",
        b"HTTP/1.1 abc OK",
        b"HTTP/1.1 101 Switching Protocols",
        b"garbage",
        b"HTTP/1.1 200 OK\r\n folded: line",
        b"HTTP/1.1 200 OK\r\nno colon here",
        b"HTTP/1.1 200 OK\r\nName : spaced",
    ],
)
def test_a_head_the_line_does_not_read_is_unexpected(head: bytes) -> None:
    with pytest.raises(Unexpected):
        _parse_head(head)


def test_a_header_with_a_line_break_is_never_sent() -> None:
    assert (
        _request_bytes("/a?b=1", "hub:8000", {"X": "y"})
        == b"GET /a?b=1 HTTP/1.1\r\nHost: hub:8000\r\nX: y\r\n\r\n"
    )
    with pytest.raises(ValueError):
        _request_bytes("/a", "hub", {"Authorization": "Bearer k\r\nX-Injected: 1"})
    with pytest.raises(ValueError):
        _request_bytes("/a b", "hub", {})


def test_a_hub_that_trickles_its_answer_is_cut_off_at_the_read_timeout(tmp_path: Path) -> None:
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # the server thread looks at ``stop`` between accepts

    def trickle() -> None:  # a byte of headers every 0.2 s, for ever
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(4096)
                while not stop.wait(0.2):
                    try:
                        conn.sendall(b"X")
                    except OSError:
                        break

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    origin = f"http://127.0.0.1:{listener.getsockname()[1]}"
    limits = DownloadLimits(
        connect_timeout=5, read_timeout=1, deadline_s=2.5, backoff_base=0.01, backoff_max=0.05
    )
    try:
        with Downloader(limits=limits, hub_origin=origin, api_key=API_KEY) as dl:
            started = time.monotonic()
            with pytest.raises(HubUnreachable):
                dl.download(origin + "/a", tmp_path, expected_size=5)
        # Each answer is cut off after 1 s, not when its 64 KiB of headers have trickled in.
        assert time.monotonic() - started < 60
    finally:
        stop.set()
        thread.join(10)
        listener.close()
    assert not thread.is_alive()


def test_a_kept_connection_with_something_to_say_is_not_reused(
    dl: Downloader, hub: HTTPTestServer, tmp_path: Path
) -> None:
    hub.route("/a", Route(body=b"input"))
    assert fetch(dl, hub, "/a", tmp_path / "1") == b"input"
    # What a hub sends an idle connection before it closes it.
    timeout = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    hub.each_connection(lambda conn: conn.sendall(timeout))
    assert fetch(dl, hub, "/a", tmp_path / "2") == b"input"
    assert hub.connections_accepted == 2 and len(hub.requests("/a")) == 2


def test_a_redirect_from_the_hub_is_refused(dl: Downloader, hub: HTTPTestServer, tmp_path: Path) -> None:
    hub.route("/a", Route(body=b"input", redirect_to="/b"))
    (folder := tmp_path / "1").mkdir()
    with pytest.raises(DownloadFailed, match="follow none"):
        dl.download(hub.url("/a"), folder, expected_size=5)


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nContent-Length: \xc2\xb2", b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5"],
)
def test_a_length_that_is_not_plain_ascii_digits_is_unexpected(head: bytes) -> None:
    from morag_worker.core.transfer.hub_line import _plain_length

    with pytest.raises(Unexpected):
        _plain_length(_parse_head(head)[1], SMALL_BYTES)


def test_the_outage_watch_hears_of_the_hub_going_and_coming_back(hub: HTTPTestServer, tmp_path: Path) -> None:
    watch = RecordingOutageWatch()
    hub.route("/a", Route(body=b"input", replies=[Reply(503, {"Retry-After": "0"}, b"busy")]))
    with Downloader(
        limits=LIMITS, hub_origin=hub.origin, api_key=API_KEY, sleep=lambda _s: None, outage=watch
    ) as dl:
        full = FullWay(dl)
        assert fetch(dl, hub, "/a", tmp_path / "1") == b"input"
    assert [reason for reason, _wait in watch.unreachable_calls] == ["the server answered HTTP 503"]
    assert watch.answers == 1 and full.count == 0


def test_a_hub_whose_answers_the_line_never_reads_is_asked_the_full_way_only(
    dl: Downloader, hub: HTTPTestServer, tmp_path: Path
) -> None:
    from morag_worker.core.transfer.downloader import LINE_MISSES_TO_STOP

    hub.route("/a", Route(body=b"chunked input", send_length=False))
    for n in range(LINE_MISSES_TO_STOP + 2):
        assert fetch(dl, hub, "/a", tmp_path / str(n)) == b"chunked input"
    # Each of the first answers was asked for twice (the line, then the full way); then once.
    assert len(hub.requests("/a")) == 2 * LINE_MISSES_TO_STOP + 2
