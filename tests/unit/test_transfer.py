"""Downloader against a real HTTP server on 127.0.0.1 that misbehaves on cue (tests/httpserver.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import itertools
import mmap
import os
import random
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from email.utils import formatdate
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog.testing

from morag_worker.core.transfer import cache_route, direct_copy
from morag_worker.core.transfer import download_state as transfer_job
from morag_worker.core.transfer import downloader as downloader_module
from morag_worker.core.transfer.downloader import (
    MEMORY_MAX_BYTES,
    DownloadCancelled,
    Downloader,
    DownloadFailed,
    DownloadLimits,
    InsufficientDiskSpace,
    IntegrityError,
    TooLarge,
    UnsafeURL,
)
from tests.httpserver import HTTPTestServer, Reply, Route

pytestmark = pytest.mark.unit

KiB, MiB = 1024, 1024 * 1024
API_KEY = "k3y-" + "Zq9" * 12
LIMITS = DownloadLimits(
    chunk_size=64 * KiB,
    connect_timeout=5,
    read_timeout=15,
    deadline_s=60,
    min_rate_bps=1,
    min_rate_window_s=30,
    max_bytes=64 * MiB,
    max_attempts=4,
    backoff_base=0.01,
    backoff_max=0.05,
    retry_after_max=5,
    disk_reserve_bytes=0,
)


def data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def server() -> Iterator[HTTPTestServer]:
    with HTTPTestServer() as srv:
        yield srv


@pytest.fixture
def other() -> Iterator[HTTPTestServer]:
    with HTTPTestServer() as srv:
        yield srv


@pytest.fixture
def sleeps() -> list[float]:
    return []


linux_only = pytest.mark.skipif(not direct_copy.DIRECT_AVAILABLE, reason="O_DIRECT is Linux's")
COPIES = ["portable", pytest.param("direct", marks=linux_only), pytest.param("slow disk", marks=linux_only)]
SLOW_DIRECT_WRITE_S = 0.01  # a disk that takes 64 KiB in 10 ms, slower than SHA-256 hashes it


@pytest.fixture(params=COPIES)
def copy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How bodies are copied: ``portable`` everywhere, or ``direct`` (Linux) from the first body
    on that has any bytes left after the first read, not only past ``DIRECT_MIN_BYTES``; or so
    onto a ``slow disk``, where the body soon goes through the cache, and back around it for a
    while now and then (hashed on arrival, written around the cache while the disk is free)."""
    if request.param != "portable":
        monkeypatch.setattr(transfer_job, "DIRECT_MIN_BYTES", 1)
    if request.param == "slow disk":
        slow_disk(monkeypatch)
    return str(request.param)


def slow_disk(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Make direct writes slow (the disk's speed, not a wait for anything) into 64 KiB buffers, and
    try the cache at the first buffer the disk holds back, measuring over windows of 2 buffers;
    each write's ``cached``, in order."""
    real = direct_copy.DirectFile.write
    writes: list[bool] = []

    def write(disk: direct_copy.DirectFile, data: memoryview, offset: int, *, cached: bool = False) -> None:
        writes.append(cached)
        if not cached:
            time.sleep(SLOW_DIRECT_WRITE_S)
        real(disk, data, offset, cached=cached)

    monkeypatch.setattr(direct_copy.DirectFile, "write", write)
    monkeypatch.setattr(direct_copy, "BUFFER_BYTES", 64 * KiB)
    quick = functools.partial(cache_route.RouteChooser, window=2, lags_to_try=1)
    monkeypatch.setattr(transfer_job, "RouteChooser", quick)
    return writes


@pytest.fixture
def dl(server: HTTPTestServer, sleeps: list[float], copy: str) -> Iterator[Downloader]:
    """A downloader that may reach ``server`` (a trusted test origin) and records its waits; each
    test that uses it runs with every copy."""
    with Downloader(
        limits=LIMITS, sleep=sleeps.append, trusted_origins=[server.origin], direct_io=copy != "portable"
    ) as downloader:
        yield downloader


def downloader(
    sleeps: list[float], *origins: str, limits: DownloadLimits = LIMITS, **kwargs: Any
) -> Downloader:
    return Downloader(limits=limits, sleep=sleeps.append, trusted_origins=origins, **kwargs)


def assert_empty(directory: Path) -> None:
    assert list(directory.iterdir()) == []


# --- the plain path -----------------------------------------------------------------------------


def test_download_streams_into_private_input_file_with_sha(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path
) -> None:
    body = data(3 * MiB + 17)
    route = server.route("/f", Route(body=body, headers={"Content-Type": "application/pdf"}))
    result = dl.download(server.url("/f"), tmp_path, expected_sha256=route.sha256.upper())
    assert result.path == tmp_path / "input.bin"
    assert result.path.read_bytes() == body
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o600
    assert (result.size, result.sha256, result.verified) == (len(body), route.sha256, True)
    assert (result.attempts, result.resumes) == (1, 0)
    assert result.content_type == "application/pdf"
    [seen] = server.requests("/f")
    assert seen.headers["accept-encoding"] == "identity"
    assert "authorization" not in seen.headers and "range" not in seen.headers
    # The request is built by hand (downloader._prepared_get): still with the session's defaults.
    assert seen.headers["user-agent"].startswith("python-requests/")


def test_server_checksum_header_is_verified(server: HTTPTestServer, dl: Downloader, tmp_path: Path) -> None:
    body = data(100 * KiB)
    route = server.route("/f", Route(body=body))
    route.headers["X-Checksum-SHA256"] = route.sha256
    assert dl.download(server.url("/f"), tmp_path).verified


def test_wrong_checksum_raises_integrity_error_after_one_fresh_download(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path
) -> None:
    server.route("/f", Route(body=data(200 * KiB)))
    with pytest.raises(IntegrityError, match="SHA-256"):
        dl.download(server.url("/f"), tmp_path, expected_sha256="ab" * 32)
    assert len(server.requests("/f")) == 2
    assert all("range" not in r.headers for r in server.requests("/f"))
    assert_empty(tmp_path)


def test_server_checksum_contradicting_the_task_fails_before_reading(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path
) -> None:
    server.route("/f", Route(body=b"x" * 10, headers={"X-Checksum-SHA256": "cd" * 32}))
    with pytest.raises(IntegrityError, match="different SHA-256"):
        dl.download(server.url("/f"), tmp_path, expected_sha256="ab" * 32)
    assert len(server.requests("/f")) == 1
    assert_empty(tmp_path)


def test_expected_size_mismatch_is_refused(server: HTTPTestServer, dl: Downloader, tmp_path: Path) -> None:
    server.route("/f", Route(body=b"x" * 100))
    with pytest.raises(IntegrityError, match="100 bytes; the task expects 50"):
        dl.download(server.url("/f"), tmp_path, expected_size=50)
    assert_empty(tmp_path)


def test_existing_input_file_is_never_overwritten(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path
) -> None:
    server.route("/f", Route(body=b"new"))
    (tmp_path / "input.bin").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        dl.download(server.url("/f"), tmp_path)
    assert (tmp_path / "input.bin").read_bytes() == b"old"


def test_malformed_expected_checksum_is_a_value_error(
    dl: Downloader, server: HTTPTestServer, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="64 hexadecimal"):
        dl.download(server.url("/f"), tmp_path, expected_sha256="not-a-sha")
    assert server.requests() == []


# --- a small body kept in memory ------------------------------------------------------------------


def test_a_small_hub_file_is_kept_in_memory_verified_and_nothing_is_written(
    server: HTTPTestServer, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_file(*_a: object) -> None:
        raise AssertionError("a file was created")

    monkeypatch.setattr(downloader_module, "create_input", no_file)
    route = server.route("/f", Route(body=data(MEMORY_MAX_BYTES)))
    with downloader(sleeps, hub_origin=server.origin, api_key=API_KEY) as dl:
        got = dl.download_to_memory(server.url("/f"), **_stated(route))
    assert got.content == route.body and (got.size, got.sha256, got.verified) == (
        MEMORY_MAX_BYTES,
        route.sha256,
        True,
    )
    assert server.requests("/f")[0].headers["authorization"] == f"Bearer {API_KEY}"


SMALL = data(40 * KiB)
STARTS_AGAIN: dict[str, tuple[Callable[[], Route], list[str | None]]] = {
    # a wrong body first: the integrity check asks once more, from the start
    "integrity retry": (
        lambda: Route(body=SMALL, replies=[Reply(200, {}, data(40 * KiB, seed=2))]),
        [None, None],
    ),
    # a server that ignores Range answers 200 to the resume: the body starts again
    "200 to a resume": (
        lambda: Route(body=SMALL, ranges=False, cut_after=10_000, cut_times=1),
        [None, "bytes=10000-"],
    ),
    # a 416 short of the end: the body starts again
    "416 to a resume": (
        lambda: Route(body=SMALL, refuse_ranges=True, cut_after=10_000, cut_times=1),
        [None, "bytes=10000-", None],
    ),
}


@pytest.mark.parametrize("case", STARTS_AGAIN)
def test_a_small_body_in_memory_that_starts_again_keeps_only_the_new_bytes(
    server: HTTPTestServer, dl: Downloader, case: str
) -> None:
    make_route, asked = STARTS_AGAIN[case]
    route = server.route("/f", make_route())
    got = dl.download_to_memory(server.url("/f"), **_stated(route))
    assert got.content == SMALL
    assert [r.headers.get("range") for r in server.requests("/f")] == asked


def test_a_small_body_in_memory_resumes_after_a_cut(server: HTTPTestServer, dl: Downloader) -> None:
    route = server.route("/f", Route(body=data(60 * KiB), cut_after=20_000, cut_times=1))
    got = dl.download_to_memory(server.url("/f"), **_stated(route))
    assert (got.content, got.resumes) == (route.body, 1)
    assert server.requests("/f")[1].headers["range"] == "bytes=20000-"


def test_a_small_body_in_memory_is_checked_as_a_file_is(server: HTTPTestServer, dl: Downloader) -> None:
    server.route("/f", Route(body=b"x" * 100))
    with pytest.raises(IntegrityError, match="SHA-256"):
        dl.download_to_memory(server.url("/f"), expected_size=100, expected_sha256="ab" * 32)
    assert len(server.requests("/f")) == 2  # and one fresh download
    with pytest.raises(IntegrityError, match="100 bytes; the task expects 50"):
        dl.download_to_memory(server.url("/f"), expected_size=50)
    server.route("/unsized", Route(body=b"x" * 100, send_length=False))
    with pytest.raises(IntegrityError, match="larger than the 50 bytes expected"):
        dl.download_to_memory(server.url("/unsized"), expected_size=50)


def test_a_body_from_memory_is_written_as_a_download_would_be(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    route = server.route("/f", Route(body=b"small input"))
    got = dl.download_to_memory(server.url("/f"), **_stated(route))
    path = dl.write_input(tmp_path, got)
    assert path == tmp_path / "input.bin" and path.read_bytes() == route.body
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        dl.write_input(tmp_path, got)
    path.unlink()
    for error, raised, match in [
        (errno.ENOSPC, InsufficientDiskSpace, "ran out of space for the file from 127.0.0.1"),
        (errno.EIO, DownloadFailed, "could not be written"),
    ]:

        def failing(_fh: Any, _data: bytes, error: int = error) -> None:
            raise OSError(error, os.strerror(error))

        monkeypatch.setattr(downloader_module, "write_all", failing)
        with pytest.raises(raised, match=match):
            dl.write_input(tmp_path, got)
        assert_empty(tmp_path)


def test_a_body_from_memory_keeps_the_disk_reserve(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    route = server.route("/f", Route(body=b"small input"))
    no_room = dataclasses.replace(LIMITS, disk_reserve_bytes=shutil.disk_usage(tmp_path).free)
    with downloader(sleeps, server.origin, limits=no_room) as dl:
        got = dl.download_to_memory(server.url("/f"), **_stated(route))  # nothing on disk yet
        with pytest.raises(InsufficientDiskSpace, match="Not enough disk space"):
            dl.write_input(tmp_path, got)
    assert_empty(tmp_path)


def test_a_body_over_what_memory_keeps_is_refused_before_asking(
    server: HTTPTestServer, dl: Downloader
) -> None:
    with pytest.raises(ValueError, match="at most"):
        dl.download_to_memory(server.url("/f"), expected_size=MEMORY_MAX_BYTES + 1)
    assert server.requests() == []


# --- resume -------------------------------------------------------------------------------------


def test_resume_after_cut_continues_where_the_cut_happened(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path
) -> None:
    body, cut = data(3 * MiB), 1_000_003
    route = server.route("/f", Route(body=body, cut_after=cut, cut_times=1))
    result = dl.download(server.url("/f"), tmp_path, expected_sha256=route.sha256)
    first, second = server.requests("/f")
    assert "range" not in first.headers
    assert second.headers["range"] == f"bytes={cut}-"
    assert second.headers["if-range"] == '"v1"'
    assert (result.resumes, result.attempts, result.sha256) == (1, 2, route.sha256)
    assert result.path.read_bytes() == body
    assert server.body_bytes_sent <= len(body) + LIMITS.chunk_size  # at most one chunk re-read


def test_resume_survives_several_cuts(server: HTTPTestServer, dl: Downloader, tmp_path: Path) -> None:
    body = data(2 * MiB)
    route = server.route("/f", Route(body=body, cut_after=300 * KiB, cut_times=5))
    result = dl.download(server.url("/f"), tmp_path, expected_sha256=route.sha256)
    assert result.resumes == 5
    starts = [r.headers.get("range") for r in server.requests("/f")]
    assert starts == [None] + [f"bytes={n * 300 * KiB}-" for n in range(1, 6)]


def test_short_206_ranges_are_continued_until_the_end(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path
) -> None:
    # No checksum to catch it: the announced total alone must keep us from stopping early.
    body = data(300 * KiB)
    server.route("/f", Route(body=body, cut_after=100 * KiB, cut_times=1, max_range=64 * KiB))
    result = dl.download(server.url("/f"), tmp_path)
    assert result.path.read_bytes() == body
    starts = [r.headers.get("range") for r in server.requests("/f")]
    assert starts == [None] + [f"bytes={n}-" for n in range(100 * KiB, 300 * KiB, 64 * KiB)]


def test_server_ignoring_range_restarts_from_zero(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path
) -> None:
    body = data(1 * MiB)
    route = server.route("/f", Route(body=body, ranges=False, cut_after=400 * KiB, cut_times=1))
    result = dl.download(server.url("/f"), tmp_path, expected_sha256=route.sha256)
    assert server.requests("/f")[1].headers["range"] == f"bytes={400 * KiB}-"
    assert (result.resumes, result.size) == (0, len(body))
    assert result.path.read_bytes() == body


def test_416_with_every_byte_already_held_completes(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path
) -> None:
    # Chunked body cut just before its terminating chunk: we hold it all but cannot know it.
    body = data(300 * KiB)
    route = server.route("/f", Route(body=body, send_length=False, cut_after=len(body), cut_times=1))
    result = dl.download(server.url("/f"), tmp_path, expected_sha256=route.sha256)
    assert server.requests("/f")[1].headers["range"] == f"bytes={len(body)}-"
    assert len(server.requests("/f")) == 2
    assert result.path.read_bytes() == body


def test_416_short_of_the_end_restarts(server: HTTPTestServer, dl: Downloader, tmp_path: Path) -> None:
    body = data(500 * KiB)
    route = server.route("/f", Route(body=body, refuse_ranges=True, cut_after=100 * KiB, cut_times=1))
    result = dl.download(server.url("/f"), tmp_path, expected_sha256=route.sha256)
    assert [r.headers.get("range") for r in server.requests("/f")] == [None, f"bytes={100 * KiB}-", None]
    assert result.path.read_bytes() == body


# --- size caps ----------------------------------------------------------------------------------


def test_content_length_over_the_cap_is_refused_before_reading(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    server.route("/f", Route(body=data(300 * KiB)))
    limits = DownloadLimits(max_bytes=100 * KiB, disk_reserve_bytes=0)
    with (
        downloader(sleeps, server.origin, limits=limits) as dl,
        pytest.raises(TooLarge, match="over the 100 KiB"),
    ):
        dl.download(server.url("/f"), tmp_path)
    assert_empty(tmp_path)


def test_stream_without_length_is_cut_at_the_cap(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    server.route("/f", Route(body=data(2 * MiB), send_length=False))
    limits = DownloadLimits(chunk_size=64 * KiB, max_bytes=300 * KiB, progress_interval_s=0)
    done: list[int] = []
    with downloader(sleeps, server.origin, limits=limits) as dl, pytest.raises(TooLarge):
        dl.download(server.url("/f"), tmp_path, progress=lambda n, _t: done.append(n))
    assert done and max(done) <= 300 * KiB
    assert_empty(tmp_path)


def test_gzip_bomb_is_capped_on_decoded_bytes(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    server.route("/bomb", Route(body=bytes(64 * MiB), gzip=True))  # about 64 KiB on the wire
    limits = DownloadLimits(chunk_size=64 * KiB, max_bytes=1 * MiB, progress_interval_s=0)
    done: list[int] = []
    with downloader(sleeps, server.origin, limits=limits) as dl, pytest.raises(TooLarge, match="1.0 MiB"):
        dl.download(server.url("/bomb"), tmp_path, progress=lambda n, _t: done.append(n))
    assert server.requests("/bomb")[0].headers["accept-encoding"] == "identity"
    assert max(done) <= 1 * MiB
    assert_empty(tmp_path)


def test_gzip_body_is_stored_decoded_and_restarted_not_resumed(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path
) -> None:
    body = data(100 * KiB).hex().encode()  # compresses to about half
    route = server.route("/z", Route(body=body, gzip=True, cut_after=20_000, cut_times=1))
    result = dl.download(server.url("/z"), tmp_path, expected_sha256=route.sha256)
    assert result.path.read_bytes() == body
    assert [r.headers.get("range") for r in server.requests("/z")] == [None, None]


def test_expected_size_over_the_cap_fails_without_a_request(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path
) -> None:
    with pytest.raises(TooLarge):
        dl.download(server.url("/f"), tmp_path, expected_size=LIMITS.max_bytes + 1)
    assert server.requests() == []


def test_a_declared_size_the_disk_cannot_hold_fails_without_a_request(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path
) -> None:
    server.route("/f", Route(body=b"small"))
    free = shutil.disk_usage(tmp_path).free
    dl.limits = dataclasses.replace(LIMITS, max_bytes=free * 2)
    with pytest.raises(InsufficientDiskSpace, match="Not enough disk space"):
        dl.download(server.url("/f"), tmp_path, expected_size=free + 1)
    assert server.requests() == []
    assert_empty(tmp_path)


def test_disk_space_is_checked_before_reading(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.route("/f", Route(body=data(200 * KiB)))
    monkeypatch.setattr(
        shutil, "disk_usage", lambda _p: SimpleNamespace(total=10 * MiB, used=10 * MiB, free=1000)
    )
    with pytest.raises(InsufficientDiskSpace, match="needs 200 KiB") as caught:
        dl.download(server.url("/f"), tmp_path)
    assert "1000 B is free" in str(caught.value)
    assert_empty(tmp_path)


# A write that fails, and the error and words a download reports it with (cached or direct writes).
WRITE_ERRORS = [
    (errno.ENOSPC, InsufficientDiskSpace, "ran out of space"),
    (errno.EIO, DownloadFailed, "could not be written"),
]


@pytest.mark.parametrize(("code", "error", "text"), WRITE_ERRORS)
def test_write_errors_in_the_writer_thread_are_typed(
    server: HTTPTestServer,
    dl: Downloader,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    error: type[Exception],
    text: str,
) -> None:
    server.route("/f", Route(body=data(200 * KiB), send_length=False))

    def failing(_fh: Any, _data: bytes) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(transfer_job, "write_all", failing)
    with pytest.raises(error, match=text):
        dl.download(server.url("/f"), tmp_path)
    assert_empty(tmp_path)
    assert len(server.requests("/f")) == 1  # not retried


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("download-writer")]


def test_no_writer_thread_outlives_a_download(server: HTTPTestServer, dl: Downloader, tmp_path: Path) -> None:
    server.route("/ok", Route(body=data(300 * KiB)))
    server.route("/bad", Route(body=data(300 * KiB), cut_after=10 * KiB, cut_times=99))
    (tmp_path / "ok").mkdir()
    (tmp_path / "bad").mkdir()
    dl.download(server.url("/ok"), tmp_path / "ok")
    with pytest.raises(DownloadFailed, match="connection was cut"):
        dl.download(server.url("/bad"), tmp_path / "bad")
    assert writer_threads() == []


# --- slow servers -------------------------------------------------------------------------------


def test_trickle_fails_the_minimum_rate(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path, copy: str
) -> None:
    server.route("/slow", Route(body=b"x" * 10_000, trickle=(1, 0.01)))
    limits = DownloadLimits(min_rate_bps=1000, min_rate_window_s=0.3, max_attempts=2, read_timeout=10)
    direct_io = copy != "portable"
    with (
        downloader(sleeps, server.origin, limits=limits, direct_io=direct_io) as dl,
        pytest.raises(DownloadFailed) as caught,
    ):
        dl.download(server.url("/slow"), tmp_path)
    assert "too slow" in str(caught.value) and "after 2 attempts" in str(caught.value)
    assert len(server.requests("/slow")) == 2 and len(sleeps) == 1
    assert_empty(tmp_path)


def test_trickle_hits_the_overall_deadline(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path, copy: str
) -> None:
    server.route("/slow", Route(body=b"x" * 10_000, trickle=(1, 0.01)))
    limits = DownloadLimits(min_rate_bps=0, deadline_s=0.5, read_timeout=10)
    with (
        downloader(sleeps, server.origin, limits=limits, direct_io=copy != "portable") as dl,
        pytest.raises(DownloadFailed, match="too slow"),
    ):
        dl.download(server.url("/slow"), tmp_path)
    assert len(server.requests("/slow")) == 1
    assert_empty(tmp_path)


# --- retries and statuses -----------------------------------------------------------------------


def test_retry_after_is_honoured_but_capped_and_reported(
    server: HTTPTestServer, dl: Downloader, sleeps: list[float], tmp_path: Path
) -> None:
    route = server.route(
        "/f",
        Route(
            body=b"done",
            replies=[
                Reply(503, {"Retry-After": "21600"}),
                Reply(429, {"Retry-After": formatdate(time.time() + 7200, usegmt=True)}),
                Reply(503, {"Retry-After": "2"}),
            ],
        ),
    )
    notices: list[str] = []
    result = dl.download(server.url("/f"), tmp_path, notice=notices.append)
    assert sleeps == [5, 5, 2]
    assert result.attempts == 4 and result.path.read_bytes() == route.body
    assert "HTTP 503; retrying in 5 s (the server asked for 21600 s)" in notices[0]
    assert "asked for" not in notices[2]


def test_server_errors_exhaust_the_attempts_with_backoff(
    server: HTTPTestServer, dl: Downloader, sleeps: list[float], tmp_path: Path
) -> None:
    server.route("/f", Route(status=502))
    with pytest.raises(DownloadFailed) as caught:
        dl.download(server.url("/f"), tmp_path)
    host = server.origin.removeprefix("http://")
    assert str(caught.value) == f"Download from {host} failed after 4 attempts: the server answered HTTP 502."
    assert (caught.value.status, caught.value.attempts) == (502, 4)
    assert len(sleeps) == 3 and all(0 <= s <= LIMITS.backoff_max for s in sleeps)
    assert_empty(tmp_path)


@pytest.mark.parametrize(
    ("status", "hub", "text"),
    [
        (404, False, "the file was not found (HTTP 404)"),
        (410, True, "the file was not found (HTTP 410)"),
        (401, True, "the hub rejected the API key (HTTP 401)"),
        (403, True, "the hub rejected the API key (HTTP 403)"),
        (403, False, "the server refused access (HTTP 403)"),
        (400, False, "the server answered HTTP 400"),
    ],
)
def test_client_errors_fail_at_once_with_a_clear_message(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path, status: int, hub: bool, text: str
) -> None:
    server.route("/f", Route(status=status))
    hub_origin = server.origin if hub else None
    with (
        downloader(sleeps, server.origin, hub_origin=hub_origin, api_key=API_KEY) as dl,
        pytest.raises(DownloadFailed) as caught,
    ):
        dl.download(server.url("/f"), tmp_path)
    assert text in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert len(server.requests("/f")) == 1 and sleeps == []


def test_unreachable_server_fails_after_retries(sleeps: list[float], tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    origin = f"http://127.0.0.1:{port}"
    with downloader(sleeps, origin) as dl, pytest.raises(DownloadFailed, match="could not connect"):
        dl.download(origin + "/f", tmp_path)
    assert len(sleeps) == LIMITS.max_attempts - 1
    assert_empty(tmp_path)


# --- the API key, redirects and the URL policy --------------------------------------------------


def test_api_key_goes_to_the_hub_origin_only(
    server: HTTPTestServer, other: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    server.route("/f", Route(body=b"hub file"))
    other.route("/f", Route(body=b"web file"))
    (tmp_path / "hub").mkdir()
    (tmp_path / "web").mkdir()
    with downloader(sleeps, other.origin, hub_origin=server.origin + "/api", api_key=API_KEY) as dl:
        dl.download(server.url("/f"), tmp_path / "hub")
        dl.download(other.url("/f"), tmp_path / "web")
    assert server.requests("/f")[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert "authorization" not in other.requests("/f")[0].headers


def test_api_key_is_not_sent_after_a_redirect_even_to_the_hub(
    server: HTTPTestServer, other: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    server.route("/f", Route(body=b"hub file"))
    other.route("/go", Route(redirect_to=server.url("/f")))
    with downloader(sleeps, other.origin, hub_origin=server.origin, api_key=API_KEY) as dl:
        result = dl.download(other.url("/go"), tmp_path)
    assert result.path.read_bytes() == b"hub file"
    assert "authorization" not in server.requests("/f")[0].headers


def test_hub_redirects_are_refused(
    server: HTTPTestServer, other: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    server.route("/f", Route(redirect_to=other.url("/f"), redirect_status=307))
    other.route("/f", Route(body=b"elsewhere"))
    with (
        downloader(sleeps, other.origin, hub_origin=server.origin, api_key=API_KEY) as dl,
        pytest.raises(DownloadFailed, match=r"hub answered with a redirect \(HTTP 307\)"),
    ):
        dl.download(server.url("/f"), tmp_path)
    assert other.requests() == []
    assert_empty(tmp_path)


def test_redirects_are_followed_by_hand_for_other_servers(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path
) -> None:
    server.route("/a", Route(redirect_to="/b", redirect_status=301))
    server.route("/b", Route(redirect_to=server.url("/c"), redirect_status=303))
    server.route("/c", Route(body=b"final"))
    result = dl.download(server.url("/a"), tmp_path)
    assert result.path.read_bytes() == b"final"
    assert [r.path for r in server.requests()] == ["/a", "/b", "/c"]


def test_redirect_loops_stop(server: HTTPTestServer, dl: Downloader, tmp_path: Path) -> None:
    server.route("/loop", Route(redirect_to="/loop"))
    with pytest.raises(DownloadFailed, match="more than 5 redirects"):
        dl.download(server.url("/loop"), tmp_path)
    assert len(server.requests("/loop")) == 6


@pytest.mark.parametrize(
    "target", ["loopback-listener", "http://169.254.169.254/latest/meta-data/", "http://[::1]/"]
)
def test_redirect_to_an_internal_address_is_refused(
    server: HTTPTestServer, other: HTTPTestServer, dl: Downloader, tmp_path: Path, target: str
) -> None:
    # ``other`` is a loopback listener that is NOT a trusted origin: it must see nothing.
    location = other.url("/admin") if target == "loopback-listener" else target
    server.route("/go", Route(redirect_to=location))
    with pytest.raises(UnsafeURL, match="Refusing to download from"):
        dl.download(server.url("/go"), tmp_path)
    assert other.requests() == []
    assert_empty(tmp_path)


def test_loopback_is_refused_without_an_exemption(
    other: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    other.route("/f", Route(body=b"secret"))
    with downloader(sleeps) as dl, pytest.raises(UnsafeURL, match="loopback"):
        dl.download(other.url("/f"), tmp_path)
    assert other.requests() == []


def test_the_connected_peer_is_checked_before_sending(other: HTTPTestServer, sleeps: list[float]) -> None:
    # Bypass the pre-connect check (as DNS rebinding would): the adapter still refuses the peer.
    other.route("/f", Route(body=b"secret"))
    with downloader(sleeps) as dl, pytest.raises(UnsafeURL, match="connection reached 127.0.0.1"):
        dl.session.get(other.url("/f"), timeout=5)
    assert other.requests() == []


def test_proxy_environment_is_ignored(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://10.255.255.1:3128")
    monkeypatch.setenv("http_proxy", "http://10.255.255.1:3128")
    server.route("/f", Route(body=b"direct"))
    assert dl.download(server.url("/f"), tmp_path).path.read_bytes() == b"direct"
    assert dl.session.trust_env is False


# --- receiving directly, around the page cache (Linux) ------------------------------------------


def direct_bytes(logs: list[dict[str, Any]], field: str = "direct") -> int:
    [done] = [e for e in logs if e["event"] == "download.done"]
    return int(done[field])


@linux_only
def test_a_large_plain_http_body_is_received_directly_and_its_connection_kept(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    body = data(transfer_job.DIRECT_MIN_BYTES + 3 * MiB + 5)
    route = server.route("/f", Route(body=body))
    with downloader(sleeps, server.origin) as dl:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            with structlog.testing.capture_logs() as logs:
                result = dl.download(server.url("/f"), tmp_path / name, expected_sha256=route.sha256)
            assert result.path.read_bytes() == body and result.verified
            # All but the first read, which empties what http.client buffered with the headers.
            assert len(body) - LIMITS.chunk_size <= direct_bytes(logs) < len(body)
    assert server.connections_accepted == 1  # the body received directly left its connection reusable


@linux_only
def test_a_disk_slower_than_the_page_cache_has_the_body_go_through_it(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = transfer_job.RouteChooser
    writes = slow_disk(monkeypatch)
    monkeypatch.setattr(transfer_job, "RouteChooser", shipped)
    body = data(transfer_job.DIRECT_MIN_BYTES + MiB + 5)
    route = server.route("/f", Route(body=body))
    with downloader(sleeps, server.origin) as dl, structlog.testing.capture_logs() as logs:
        result = dl.download(server.url("/f"), tmp_path, expected_sha256=route.sha256)
    assert result.path.read_bytes() == body and result.verified
    # A whole window went around the cache before the cache was tried (the disk thread may still
    # have had the ring's buffers to write when the first write through the cache began).
    assert True not in writes[: cache_route.WINDOW - direct_copy.BUFFERS] and True in writes
    assert any(e["event"] == "download.cache_route" and e["kept"] == "through_cache" for e in logs)
    received = direct_bytes(logs)  # all but the first read
    assert 0 < direct_bytes(logs, "around_cache") < received and len(body) - LIMITS.chunk_size <= received


def test_a_buffer_is_held_by_the_disk_only_once_hashed_and_still_being_written() -> None:
    def future(done: bool) -> Future[None]:
        made: Future[None] = Future()
        if done:
            made.set_result(None)
        return made

    slot = transfer_job._Slot(buffer=mmap.mmap(-1, 4096))
    cases = [  # (hashing done, writing done) -> held by the disk; None: hashed on arrival
        ((False, False), False),
        ((True, False), True),
        ((True, True), False),
        ((None, False), True),
        ((None, True), False),
    ]
    for (hashed, written), held in cases:
        slot.hashing = None if hashed is None else future(hashed)
        slot.writing = future(written)
        assert slot.held_by_the_disk() is held, (hashed, written)
    slot.buffer.close()


@linux_only
def test_small_bodies_and_direct_io_off_are_copied_the_portable_way(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    server.route("/small", Route(body=data(transfer_job.DIRECT_MIN_BYTES // 2)))
    server.route("/large", Route(body=data(transfer_job.DIRECT_MIN_BYTES * 2)))
    for path, direct_io in (("/small", True), ("/large", False)):
        folder = tmp_path / path.strip("/")
        folder.mkdir()
        with (
            downloader(sleeps, server.origin, direct_io=direct_io) as dl,
            structlog.testing.capture_logs() as logs,
        ):
            dl.download(server.url(path), folder)
        assert direct_bytes(logs) == 0, path


@linux_only
def test_a_file_system_without_o_direct_gets_the_portable_copy(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = data(transfer_job.DIRECT_MIN_BYTES * 2)
    route = server.route("/f", Route(body=body))
    monkeypatch.setattr(direct_copy, "open_direct", lambda _fd: None)  # as on tmpfs before 6.6
    with downloader(sleeps, server.origin) as dl, structlog.testing.capture_logs() as logs:
        result = dl.download(server.url("/f"), tmp_path, expected_sha256=route.sha256)
    assert result.path.read_bytes() == body and direct_bytes(logs) == 0


@linux_only
@pytest.mark.parametrize(("code", "error", "text"), WRITE_ERRORS)
def test_direct_write_errors_are_typed(
    server: HTTPTestServer,
    tmp_path: Path,
    sleeps: list[float],
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    error: type[Exception],
    text: str,
) -> None:
    server.route("/f", Route(body=data(transfer_job.DIRECT_MIN_BYTES * 2)))

    def failing(_disk: Any, _data: memoryview, _offset: int, *, cached: bool = False) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(direct_copy.DirectFile, "write", failing)
    with downloader(sleeps, server.origin) as dl, pytest.raises(error, match=text):
        dl.download(server.url("/f"), tmp_path)
    assert_empty(tmp_path)
    assert len(server.requests("/f")) == 1  # not retried
    assert writer_threads() == []


# --- cancel, progress, names --------------------------------------------------------------------


def test_cancel_between_chunks(server: HTTPTestServer, dl: Downloader, tmp_path: Path) -> None:
    server.route("/f", Route(body=data(4 * MiB)))
    cancel = threading.Event()
    with pytest.raises(DownloadCancelled, match="cancelled"):
        dl.download(server.url("/f"), tmp_path, cancel=cancel, progress=lambda _n, _t: cancel.set())
    assert_empty(tmp_path)


def test_cancel_interrupts_a_retry_wait(server: HTTPTestServer, tmp_path: Path) -> None:
    server.route("/f", Route(replies=[Reply(503, {"Retry-After": "3600"})], body=b"never"))
    cancel = threading.Event()
    limits = DownloadLimits(retry_after_max=3600, deadline_s=7200)
    # No injected sleep: the wait is on the cancel event, which the notice sets before waiting.
    with Downloader(limits=limits, trusted_origins=[server.origin]) as dl, pytest.raises(DownloadCancelled):
        dl.download(server.url("/f"), tmp_path, cancel=cancel, notice=lambda _m: cancel.set())
    assert len(server.requests("/f")) == 1


class SteppingClock:
    """A fake monotonic clock that advances 50 ms every time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.05
        return self.now


def test_progress_is_throttled_and_ends_with_the_total(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    body = data(2 * MiB)
    server.route("/f", Route(body=body))
    clock = SteppingClock()
    calls: list[tuple[float, int, int | None]] = []
    limits = dataclasses.replace(LIMITS, chunk_size=16 * KiB, deadline_s=1e6)
    with Downloader(limits=limits, sleep=sleeps.append, clock=clock, trusted_origins=[server.origin]) as dl:
        dl.download(server.url("/f"), tmp_path, progress=lambda n, t: calls.append((clock.now, n, t)))
    assert calls[-1][1:] == (len(body), len(body))
    assert all(total == len(body) for _at, _n, total in calls)
    assert [n for _at, n, _t in calls] == sorted(n for _at, n, _t in calls)
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(calls[:-1])]
    assert len(calls) >= 3 and min(gaps) >= LIMITS.progress_interval_s - 1e-9


@pytest.mark.parametrize(
    ("disposition", "hint"),
    [
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ("attachment; filename*=UTF-8''..%2F..%2Fr%C3%A9sum%C3%A9.pdf", "résumé.pdf"),
        ('attachment; filename="CON"', "_CON"),
        ('attachment; filename="' + "a" * 500 + '.pdf"', "a" * 116 + ".pdf"),
        ('attachment; filename=".."', "f.bin"),
    ],
)
def test_filename_hint_is_a_sanitised_label_never_a_path(
    server: HTTPTestServer, dl: Downloader, tmp_path: Path, disposition: str, hint: str
) -> None:
    server.route("/f.bin", Route(body=b"data", headers={"Content-Disposition": disposition}))
    result = dl.download(server.url("/f.bin"), tmp_path)
    assert result.filename_hint == hint
    assert result.path == tmp_path / "input.bin"
    assert [p.name for p in tmp_path.iterdir()] == ["input.bin"]


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made with the openssl command line tool)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command line tool is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[HTTPTestServer]:
    with HTTPTestServer(tls=certificate) as srv:
        yield srv


def test_https_download_verifies_against_the_given_ca(
    tls_server: HTTPTestServer, certificate: tuple[Path, Path], sleeps: list[float], tmp_path: Path
) -> None:
    route = tls_server.route("/f", Route(body=data(300 * KiB)))
    with downloader(sleeps, hub_origin=tls_server.origin, api_key=API_KEY, ca_bundle=certificate[0]) as dl:
        result = dl.download(tls_server.url("/f"), tmp_path, expected_sha256=route.sha256)
    assert result.verified
    assert tls_server.requests("/f")[0].headers["authorization"] == f"Bearer {API_KEY}"


@linux_only
def test_a_large_https_body_is_received_directly(
    tls_server: HTTPTestServer, certificate: tuple[Path, Path], sleeps: list[float], tmp_path: Path
) -> None:
    body = data(transfer_job.DIRECT_MIN_BYTES + MiB + 3)
    route = tls_server.route("/f", Route(body=body, cut_after=2 * MiB + 1, cut_times=1))
    with (
        downloader(sleeps, hub_origin=tls_server.origin, ca_bundle=certificate[0]) as dl,
        structlog.testing.capture_logs() as logs,
    ):
        result = dl.download(tls_server.url("/f"), tmp_path, expected_sha256=route.sha256)
    assert result.path.read_bytes() == body and result.resumes == 1
    # Up to the cut, after the first read; the rest, under DIRECT_MIN_BYTES, was copied.
    assert 2 * MiB - LIMITS.chunk_size < direct_bytes(logs) <= 2 * MiB + 1


def test_an_untrusted_certificate_is_refused_without_retrying(
    tls_server: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    tls_server.route("/f", Route(body=b"data"))
    with (
        downloader(sleeps, hub_origin=tls_server.origin, api_key=API_KEY) as dl,
        pytest.raises(DownloadFailed, match="TLS certificate could not be verified"),
    ):
        dl.download(tls_server.url("/f"), tmp_path)
    assert tls_server.requests() == [] and sleeps == []
    assert_empty(tmp_path)


def test_a_small_https_hub_file_comes_over_the_hub_line_verified(
    tls_server: HTTPTestServer, certificate: tuple[Path, Path], sleeps: list[float], tmp_path: Path
) -> None:
    route = tls_server.route("/f", Route(body=b"a small input"))
    with downloader(sleeps, hub_origin=tls_server.origin, api_key=API_KEY, ca_bundle=certificate[0]) as dl:
        dl.session.get_adapter = None  # type: ignore[method-assign]  # the full way is not taken
        for n in range(2):
            (folder := tmp_path / str(n)).mkdir()
            got = dl.download(tls_server.url("/f"), folder, **_stated(route))
            assert got.verified and got.path.read_bytes() == route.body
    assert tls_server.connections_accepted == 1
    assert tls_server.requests("/f")[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_a_small_hub_file_behind_an_untrusted_certificate_is_refused_without_retrying(
    tls_server: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    route = tls_server.route("/f", Route(body=b"data"))
    with (
        downloader(sleeps, hub_origin=tls_server.origin, api_key=API_KEY) as dl,
        pytest.raises(DownloadFailed, match="TLS certificate could not be verified"),
    ):
        dl.download(tls_server.url("/f"), tmp_path, **_stated(route))
    assert tls_server.requests() == [] and sleeps == []
    assert_empty(tmp_path)


def _stated(route: Route) -> dict[str, Any]:
    """What a task states of its input: the hub line serves only files of a stated size."""
    return {"expected_sha256": route.sha256, "expected_size": len(route.body)}


def test_the_https_peer_is_checked_before_the_handshake(
    tls_server: HTTPTestServer, certificate: tuple[Path, Path], sleeps: list[float]
) -> None:
    tls_server.route("/f", Route(body=b"secret"))
    with (
        downloader(sleeps, ca_bundle=certificate[0]) as dl,
        pytest.raises(UnsafeURL, match="connection reached 127.0.0.1"),
    ):
        dl.session.get(tls_server.url("/f"), timeout=5)
    assert tls_server.requests() == []


def test_a_tls_handshake_cut_short_is_retried(sleeps: list[float], tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    origin = f"https://127.0.0.1:{listener.getsockname()[1]}"

    def hang_up() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=hang_up, name="hang-up-listener")
    thread.start()
    try:
        with (
            downloader(sleeps, origin) as dl,
            pytest.raises(DownloadFailed, match="after 4 attempts") as caught,
        ):
            dl.download(origin + "/f", tmp_path)
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert "certificate" not in str(caught.value) and len(sleeps) == 3


def test_the_api_key_never_reaches_a_log_event(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path
) -> None:
    server.route("/ok", Route(body=data(100 * KiB), cut_after=10 * KiB, cut_times=1))
    server.route("/busy", Route(replies=[Reply(503, {"Retry-After": "99999"})], body=b"x"))
    server.route("/denied", Route(status=401))
    with (
        structlog.testing.capture_logs() as events,
        downloader(sleeps, hub_origin=server.origin, api_key=API_KEY) as dl,
    ):
        for name in ("ok", "busy", "denied"):
            (tmp_path / name).mkdir()
            with contextlib.suppress(DownloadFailed):
                dl.download(
                    server.url(f"/{name}"), tmp_path / name, notice=lambda m: events.append({"notice": m})
                )
    assert {e.get("event") for e in events} >= {"download.resume", "download.retry", "download.failed"}
    assert API_KEY not in repr(events)
    assert all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in server.requests())


def test_every_piece_is_admitted_against_the_announced_total(tmp_path: Path) -> None:
    """Both copies (read1's pieces and the direct receives) pass through _admit, which refuses
    a piece past the total a 206's Content-Range announced, whatever its Content-Length says."""
    with (tmp_path / "input.bin").open("wb", buffering=0) as fh:
        job = transfer_job.TransferJob(
            host="example.org", is_hub=False, dest_dir=tmp_path, fh=fh, limits=LIMITS,
            clock=time.monotonic, deadline=float("inf"),
        )  # fmt: skip
        try:
            job.total, job.have = 100, 60
            job._admit(40)
            with pytest.raises(IntegrityError, match="sent more than the 100 bytes it announced"):
                job._admit(41)
        finally:
            job.close()


class HelperHashesSlowly:
    """SHA-256 that takes ``seconds`` for each buffer it hashes off the downloading thread."""

    seconds = 0.0

    def __init__(self) -> None:
        self._real = hashlib.sha256()

    def update(self, data: memoryview) -> None:
        if threading.current_thread() is not threading.main_thread():
            time.sleep(self.seconds)  # the helper's speed, not a wait for anything
        self._real.update(data)

    def hexdigest(self) -> str:
        return self._real.hexdigest()


@linux_only
def test_bytes_hashed_on_arrival_wait_for_every_buffer_the_helper_still_hashes(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The helper hashes slower than the slow disk writes: at the switch it still has buffers
    # to hash, and bytes hashed before them would fail the checksum.
    slow_disk(monkeypatch)
    monkeypatch.setattr(HelperHashesSlowly, "seconds", SLOW_DIRECT_WRITE_S * 0.9)
    monkeypatch.setattr(transfer_job, "hashlib", SimpleNamespace(sha256=HelperHashesSlowly))
    body = data(transfer_job.DIRECT_MIN_BYTES + MiB)
    route = server.route("/f", Route(body=body))
    with downloader(sleeps, server.origin) as dl, structlog.testing.capture_logs() as logs:
        result = dl.download(server.url("/f"), tmp_path, expected_sha256=route.sha256)
    assert result.path.read_bytes() == body and result.attempts == 1
    assert direct_bytes(logs, "around_cache") < direct_bytes(logs)  # it did switch


@linux_only
def test_one_stalled_write_is_not_a_slow_disk(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk that takes each buffer at once (it keeps nothing: the SHA-256 is checked, not the
    # file), but for one write that stalls, which the receiving has to wait for. It stalls once
    # a whole window was measured, when a lag would be enough to try the cache.
    writes: list[bool] = []
    choosers: list[cache_route.RouteChooser] = []

    def chooser() -> cache_route.RouteChooser:
        choosers.append(cache_route.RouteChooser())
        return choosers[-1]

    def write(
        _disk: direct_copy.DirectFile, _data: memoryview, _offset: int, *, cached: bool = False
    ) -> None:
        writes.append(cached)
        if len(writes) == cache_route.WINDOW + 2 * direct_copy.BUFFERS:
            time.sleep(20 * SLOW_DIRECT_WRITE_S)  # the stall

    monkeypatch.setattr(direct_copy.DirectFile, "write", write)
    monkeypatch.setattr(transfer_job, "RouteChooser", chooser)
    monkeypatch.setattr(direct_copy, "BUFFER_BYTES", 64 * KiB)
    route = server.route("/f", Route(body=data(transfer_job.DIRECT_MIN_BYTES + MiB)))
    with downloader(sleeps, server.origin) as dl:
        assert dl.download(server.url("/f"), tmp_path, expected_sha256=route.sha256).verified
    assert len(writes) > cache_route.WINDOW + 4 * direct_copy.BUFFERS and not any(writes)
    assert [c.tries for c in choosers] == [0]


@linux_only
def test_a_cache_dearer_than_waiting_for_the_disk_is_tried_and_left(
    server: HTTPTestServer, sleeps: list[float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The disk holds the receiving back, but writing through the cache costs more (as filling
    # the page cache can on a VM whose CPUs are all busy): each try of the cache is measured
    # slower, and the body goes back around it, trying again after ever longer.
    window = 2 * direct_copy.BUFFERS  # longer than the ring: a slow write's cost shows within it
    writes: list[bool] = []
    real = direct_copy.DirectFile.write

    def write(disk: direct_copy.DirectFile, data: memoryview, offset: int, *, cached: bool = False) -> None:
        writes.append(cached)
        time.sleep(SLOW_DIRECT_WRITE_S * (5 if cached else 0.3))  # the disk's and the cache's speeds
        real(disk, data, offset, cached=cached)

    monkeypatch.setattr(direct_copy.DirectFile, "write", write)
    monkeypatch.setattr(direct_copy, "BUFFER_BYTES", 64 * KiB)
    quick = functools.partial(cache_route.RouteChooser, window=window, lags_to_try=1)
    monkeypatch.setattr(transfer_job, "RouteChooser", quick)
    body = data(transfer_job.DIRECT_MIN_BYTES + MiB)  # 80 buffers: room for two tries
    route = server.route("/f", Route(body=body))
    with downloader(sleeps, server.origin) as dl, structlog.testing.capture_logs() as logs:
        result = dl.download(server.url("/f"), tmp_path, expected_sha256=route.sha256)
    assert result.path.read_bytes() == body and result.verified
    tries = [e for e in logs if e["event"] == "download.cache_route"]
    assert len(tries) >= 2 and all(e["kept"] == "around_cache" for e in tries), tries
    # Each try: the ring's turn and a window, at most.
    assert 0 < writes.count(True) <= (direct_copy.BUFFERS + window) * len(tries)
