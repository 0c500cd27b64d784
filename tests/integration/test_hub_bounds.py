"""The hub's bounds (issue 10, item 1): key first, body caps and timeouts, header timeouts, no 500s
under a burst, and rate limits kept in Redis across hub processes. Loopback only.

Tests that trip a per-address limit send from their own loopback address (127.0.0.x), so the
limits they fill do not touch the other tests.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter

from tests.conftest import create_key, start_hub
from tests.processes import MemoryWatch, Proc, RedisServer, wait_for

pytestmark = pytest.mark.integration

BOUNDS = (
    "--max-json-kb", "1",
    "--header-timeout", "1",
    "--body-timeout", "1",
    "--max-upload-mb", "1",
)  # fmt: skip


class _SourceAdapter(HTTPAdapter):
    def __init__(self, address: str) -> None:
        self._address = address
        super().__init__(pool_connections=4, pool_maxsize=400)

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        kwargs["source_address"] = (self._address, 0)
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]


def session_from(address: str) -> requests.Session:
    """A requests session whose connections come from loopback ``address``."""
    session = requests.Session()
    session.mount("http://", _SourceAdapter(address))
    return session


class Hubs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis = RedisServer(tmp / "redis")
        self.procs: list[Proc] = []

    def start(self, *args: str) -> tuple[Proc, str]:
        hub, url = start_hub(self.tmp / f"hub{len(self.procs)}", self.redis.url, BOUNDS + args)
        self.procs.append(hub)
        return hub, url

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def hubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hubs]:
    result = Hubs(tmp_path_factory.mktemp("bounded-hub"))
    try:
        yield result
    finally:
        result.close()


@pytest.fixture(scope="module")
def bounded(hubs: Hubs) -> tuple[Proc, str, str]:
    hub, url = hubs.start()
    return hub, url, create_key(hubs.redis.url, "bounded")


def test_an_unauthenticated_huge_body_is_refused_before_it_is_read(bounded: tuple[Proc, str, str]) -> None:
    hub, url, _ = bounded
    chunk = b"{" + b" " * (1024 * 1024 - 1)

    def body() -> Iterator[bytes]:  # 300 MiB, never declared: only streaming would catch it
        for _ in range(300):
            yield chunk

    with MemoryWatch(hub.popen.pid) as watch:
        for path in ("/api/v1/tasks", "/api/v1/files"):
            try:
                response = requests.post(url + path, data=body(), timeout=60)
            except requests.ConnectionError as exc:
                print(f"{path}: {type(exc).__name__}")
                continue  # the hub answered and closed before taking the body
            print(f"{path}: {response.status_code}")
            assert response.status_code == 401, response.text
    print(f"\nunauthenticated 300 MiB bodies: {watch}")
    assert watch.peak - watch.baseline < 50, watch
    assert requests.get(url + "/healthz", timeout=10).ok


def test_a_body_over_the_cap_with_a_valid_key_is_413(bounded: tuple[Proc, str, str]) -> None:
    _, url, key = bounded
    headers = {"Authorization": f"Bearer {key}"}
    big = {"url": "http://example.invalid/x", "task_options": {"pad": "x" * 4096}}
    declared = requests.post(url + "/api/v1/tasks", json=big, headers=headers, timeout=30)
    assert declared.status_code == 413 and "larger than this hub accepts" in declared.json()["error"]

    def stream() -> Iterator[bytes]:
        yield b'{"url": "http://example.invalid/x", "task_options": {"pad": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}}'

    streamed = requests.post(
        url + "/api/v1/tasks",
        data=stream(),
        headers={**headers, "Content-Type": "application/json"},
        timeout=30,
    )
    assert streamed.status_code == 413


def _raw(url: str, source: str = "127.0.0.1") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0))
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the hub sent before closing ``sock``; fails when it is still open after ``seconds``."""
    sock.settimeout(seconds)
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:  # closed with bytes of ours unread: a reset, not a FIN
            return received
        if not data:
            return received
        received += data


def test_slow_and_silent_headers_are_cut_off(bounded: tuple[Proc, str, str]) -> None:
    _, url, _ = bounded
    silent = _raw(url)
    trickling = _raw(url)
    stop = threading.Event()

    def trickle() -> None:
        with contextlib.suppress(OSError):  # the hub closes while we write
            trickling.sendall(b"GET /api/v1/workers HTTP/1.1\r\nHost: x\r\n")
            while not stop.wait(0.2):
                trickling.sendall(b"X-Slow: y\r\n")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        assert _closed_within(silent, 30) == b""
        assert _closed_within(trickling, 30) == b""
        assert time.monotonic() - started < 20
    finally:
        stop.set()
        thread.join(timeout=10)
        silent.close()
        trickling.close()


def test_a_stalled_body_gets_408(bounded: tuple[Proc, str, str]) -> None:
    _, url, key = bounded
    sock = _raw(url)
    try:
        sock.sendall(
            b"POST /api/v1/files?filename=a.bin HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: 100000\r\n\r\n".encode()
            + b"z" * 1000
        )
        answer = _closed_within(sock, 30)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_a_burst_with_bogus_keys_gets_no_500(bounded: tuple[Proc, str, str]) -> None:
    _, url, _ = bounded
    session = session_from("127.0.0.3")
    start = threading.Barrier(300, timeout=60)

    def one(n: int) -> int:
        start.wait()
        try:
            return session.get(
                url + "/api/v1/workers", headers={"Authorization": f"Bearer bogus-{n}"}, timeout=60
            ).status_code
        except requests.ConnectionError:
            return -1

    with ThreadPoolExecutor(300) as pool:
        codes = Counter(pool.map(one, range(300)))
    print(f"\n300 concurrent bogus keys: {dict(codes)}")
    assert set(codes) <= {401, 429, 503}, codes


def test_failed_auth_is_rate_limited_across_hub_processes(hubs: Hubs) -> None:
    limit = ("--auth-failures-per-address", "5")
    (_, first), (_, second) = hubs.start(*limit), hubs.start(*limit)
    key = create_key(hubs.redis.url, "limited")
    client = session_from("127.0.0.4")
    bogus = {"Authorization": "Bearer not-a-key"}
    codes = [client.get(first + "/api/v1/workers", headers=bogus, timeout=10).status_code for _ in range(5)]
    assert codes == [401] * 5
    refused = client.get(second + "/api/v1/workers", headers={"X-API-Key": key}, timeout=10)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Another address is not affected.
    other = session_from("127.0.0.5").get(second + "/api/v1/workers", headers={"X-API-Key": key}, timeout=10)
    assert other.status_code == 200, other.text


def test_task_creation_is_rate_limited_per_key(hubs: Hubs) -> None:
    _, url = hubs.start("--tasks-per-key", "3")
    headers = {"Authorization": f"Bearer {create_key(hubs.redis.url, 'busy')}"}
    client = session_from("127.0.0.6")
    body = {"url": "http://127.0.0.1:9/nothing.txt", "content_type": "text/plain"}

    def create() -> requests.Response:
        return client.post(url + "/api/v1/tasks", json=body, headers=headers, timeout=30)

    assert [create().status_code for _ in range(3)] == [201] * 3
    refused = create()
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1


def test_an_unread_body_does_not_keep_its_connection(bounded: tuple[Proc, str, str]) -> None:
    _, url, _ = bounded
    for path in (b"/healthz", b"/nowhere"):
        sock = _raw(url)
        try:
            sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc")
            answer = _closed_within(sock, 30)
        finally:
            sock.close()
        assert answer.startswith((b"HTTP/1.1 404", b"HTTP/1.1 405")), answer[:200]


def test_saturation_is_503_with_retry_after(hubs: Hubs) -> None:
    _, url = hubs.start("--max-in-flight", "1", "--body-timeout", "60")
    key = create_key(hubs.redis.url, "saturated")
    holder = _raw(url)
    try:  # one upload in flight, stalled, holds the only slot
        holder.sendall(
            b"POST /api/v1/files?filename=a.bin HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: 100000\r\n\r\nz".encode()
        )

        def busy() -> list[requests.Response]:  # a Response is falsy when it is not ok
            response = requests.get(url + "/api/v1/workers", headers={"X-API-Key": key}, timeout=10)
            return [response] if response.status_code == 503 else []

        (refused,) = wait_for(busy, what="the stalled upload to hold the only slot")
        assert int(refused.headers["retry-after"]) >= 1 and refused.json()["error"]
    finally:
        holder.close()
    wait_for(
        lambda: requests.get(url + "/api/v1/workers", headers={"X-API-Key": key}, timeout=10).ok,
        what="the slot to free once the upload is gone",
    )


def test_redis_down_is_503_not_500(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    hub: Proc | None = None
    try:
        hub, url = start_hub(tmp_path, server.url, ("--redis-pool-timeout", "1"))
        key = create_key(server.url, "outage")
        assert requests.get(url + "/api/v1/workers", headers={"X-API-Key": key}, timeout=10).ok
        server.stop()
        response = requests.get(url + "/api/v1/workers", headers={"X-API-Key": key}, timeout=60)
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
    finally:
        if hub is not None:
            hub.stop()
        server.stop()


def test_a_trickling_body_gets_408(bounded: tuple[Proc, str, str]) -> None:
    _, url, key = bounded
    sock = _raw(url)
    stop = threading.Event()

    def trickle() -> None:  # never stalls for the 1 s body timeout, but far below 16 KiB/s
        with contextlib.suppress(OSError):
            while not stop.wait(0.2):
                sock.sendall(b"z" * 10)

    thread = threading.Thread(target=trickle, daemon=True)
    try:
        sock.sendall(
            b"POST /api/v1/files?filename=a.bin HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: 100000\r\n\r\n".encode()
        )
        thread.start()
        answer = _closed_within(sock, 30)
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=10)
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"slower than" in answer, answer[:300]


def test_an_address_over_its_failed_auth_limit_is_turned_away_as_it_connects(hubs: Hubs) -> None:
    _, url = hubs.start("--auth-failures-per-address", "3")
    key = create_key(hubs.redis.url, "gated")
    client = session_from("127.0.0.7")
    bogus = {"Authorization": "Bearer not-a-key"}
    codes = [client.get(url + "/api/v1/workers", headers=bogus, timeout=10).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429], codes
    # Now refused before any request is parsed: a connection that sends nothing gets the 429.
    silent = _raw(url, "127.0.0.7")
    try:
        answer = _closed_within(silent, 30)
    finally:
        silent.close()
    assert answer.startswith(b"HTTP/1.1 429") and b"retry-after:" in answer.lower(), answer[:300]
    # Even with a valid key, until the window turns; another address is not affected.
    assert client.get(url + "/api/v1/workers", headers={"X-API-Key": key}, timeout=10).status_code == 429
    other = session_from("127.0.0.8").get(url + "/api/v1/workers", headers={"X-API-Key": key}, timeout=10)
    assert other.status_code == 200, other.text


def test_connections_per_address_are_capped_from_the_environment(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    hub: Proc | None = None
    held: list[socket.socket] = []
    try:
        hub, url = start_hub(
            tmp_path, server.url, ("--header-timeout", "60"), MORAG_HUB_MAX_CONNECTIONS_PER_ADDRESS="3"
        )
        key = create_key(server.url, "crowded")
        held = [_raw(url, "127.0.0.9") for _ in range(3)]

        def healthz_from(address: str) -> bytes:
            sock = _raw(url, address)
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return _closed_within(sock, 30)
            finally:
                sock.close()

        # The hub counts a connection once it has accepted it: wait for the three to be counted.
        refused = wait_for(
            lambda: (answer := healthz_from("127.0.0.9")).startswith(b"HTTP/1.1 503") and answer,
            what="the fourth connection from one address to be refused",
        )
        assert b"retry-after:" in refused.lower() and b"too many connections" in refused, refused[:300]
        assert healthz_from("127.0.0.10").startswith(b"HTTP/1.1 200")  # another address is served
        held.pop().close()
        wait_for(
            lambda: healthz_from("127.0.0.9").startswith(b"HTTP/1.1 200"),
            what="a connection from that address to be served once one has closed",
        )
        client = session_from("127.0.0.10")
        assert client.get(url + "/api/v1/workers", headers={"X-API-Key": key}, timeout=10).ok
    finally:
        for sock in held:
            sock.close()
        if hub is not None:
            hub.stop()
        server.stop()
