"""One download's state across its attempts, and what it does with each response.

:class:`TransferJob` owns the open ``input.bin`` (or, for a small body kept in memory, an
``io.BytesIO``), the running SHA-256 and the byte count. For each response the downloader hands it,
it decides (:meth:`TransferJob.accept`) whether the status and headers let it store a body (206
resumes at our offset, 200 restarts, 416 may mean complete), then copies the body
(:meth:`TransferJob.stream`) under the size cap, the deadline and the minimum rate, and finally
checks the bytes (:meth:`TransferJob.verified`). Failures worth another attempt raise
:class:`RetryableFailure`; the downloader (``downloader.py``) owns the retry loop.

Two copies: the portable one reads the body into memory, hashes it on the downloading thread and
has the helper thread write it; on Linux a large body of known length is received into
a ring of our own buffers instead, hashed from them by the helper thread and written around the
page cache by a writer thread (``direct_copy.py``), so that hashing, the dearest part, runs beside
the receiving and no page of cache is filled. Where the disk holds the receiving back, the body
may go the other way for a while, or to its end, as measured speeds decide (``cache_route.py``):
hashed on the downloading thread as it arrives, and each buffer that finds the disk still busy
written through the page cache by the helper thread instead of waiting for it.

Runs on the downloading thread, which hands file writes (or, receiving directly, hashing, and
writes through the cache) to one helper thread of its own and direct writes to another (joined
by :meth:`TransferJob.close`); ``cancel`` may be set from any thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import io
import mmap
import shutil
import socket
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import structlog
import urllib3
from urllib3.response import HTTPResponse

from morag_worker.core.transfer import direct_copy
from morag_worker.core.transfer import headers as hh
from morag_worker.core.transfer.cache_route import Route, RouteChooser
from morag_worker.core.transfer.errors import (
    DownloadCancelled,
    DownloadFailed,
    InsufficientDiskSpace,
    IntegrityError,
    TooLarge,
)
from morag_worker.core.transfer.limits import LIMIT_ENV, DownloadLimits, MiB
from morag_worker.core.transfer.retry import RetryKind, kind_of_status
from morag_worker.core.units import human_bytes

__all__ = [
    "LIMIT_ENV",
    "DownloadLimits",
    "ProgressCallback",
    "RetryableFailure",
    "TransferJob",
    "check_disk_space",
    "disk_full",
]

log = structlog.get_logger(__name__)

_WRITE_AHEAD = 2
_INLINE_WRITE_BYTES = 64 * 1024  # a last (or only) write of at most this is made on the downloading thread
DIRECT_MIN_BYTES = 4 * MiB  # a body with less left to read is copied the portable way
ProgressCallback = Callable[[int, int | None], None]


def check_disk_space(dest_dir: Path, need: int, reserve: int, host: str) -> None:
    """Raise InsufficientDiskSpace unless ``dest_dir``'s disk has ``need`` bytes plus ``reserve`` free."""
    free = shutil.disk_usage(dest_dir).free
    if free < need + reserve:
        raise InsufficientDiskSpace(
            f"Not enough disk space for the file from {host}: it needs {human_bytes(need)} "
            f"plus a {human_bytes(reserve)} reserve, and {human_bytes(free)} is free."
        )


def disk_full(exc: OSError) -> bool:
    """Whether a failed write found the disk (or the user's quota) full."""
    return exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class RetryableFailure(Exception):
    """A failure worth another attempt: connection trouble, 408/429/5xx, too slow, a bad resume.

    ``kind`` says whether the server did not answer (``UNREACHABLE``: waited out for the hub) or
    answered badly (``TRANSIENT``: a few attempts); see ``retry.py``.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        kind: RetryKind = RetryKind.TRANSIENT,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.kind = kind


@dataclass
class _Throttle:
    callback: ProgressCallback | None
    clock: Callable[[], float]
    interval: float
    last: float = float("-inf")

    def __call__(self, done: int, total: int | None, *, final: bool = False) -> None:
        if self.callback is not None:
            now = self.clock()
            if final or now - self.last >= self.interval:
                self.last = now
                self.callback(done, total)


@dataclass
class _RateWindow:
    """Where the current minimum-rate window began: its time and the bytes held then."""

    start: float
    done: int


@dataclass
class _Slot:
    """One receive buffer and the hashing and writing of its bytes, while they run."""

    buffer: mmap.mmap
    hashing: Future[None] | None = None  # None once settled, or where the bytes were hashed on arrival
    writing: Future[None] | None = None

    def held_by_the_disk(self) -> bool:
        """True while its bytes are hashed but still being written: by the disk, or through the
        cache by the helper thread, so that a first lag after going back around the cache may be
        the helper's (``cache_route.py`` tries the cache again only after a pause)."""
        hashed = self.hashing is None or self.hashing.done()
        return hashed and self.writing is not None and not self.writing.done()


@dataclass
class TransferJob:
    """One download's mutable state across its attempts (see the module docstring)."""

    host: str
    is_hub: bool
    dest_dir: Path | None  # where the file is written; None for a small body kept in memory
    fh: BinaryIO  # the open input.bin (unbuffered), or an io.BytesIO for a body kept in memory
    limits: DownloadLimits
    clock: Callable[[], float]
    deadline: float
    want_sha: str | None = None
    expected_size: int | None = None
    progress_callback: ProgressCallback | None = None
    cancel: threading.Event | None = None
    direct_min: int | None = None  # receive directly bodies with this much left at least; None: never
    have: int = 0
    hasher: Any = field(init=False)
    total: int | None = None
    encoded: bool = False
    validator: str | None = None
    server_sha: str | None = None
    content_type: str | None = None
    filename_hint: str | None = None
    attempts: int = 0
    failures: int = 0  # in a row, for the backoff
    capped_failures: int = 0  # in a row, of those that count against ``max_attempts``
    resumes: int = 0
    direct: int = 0  # bytes received into our own buffers (direct_copy.py)
    around_cache: int = 0  # of those, bytes written around the page cache
    redownloaded: bool = False
    progress: _Throttle = field(init=False)
    _writer: ThreadPoolExecutor = field(init=False, repr=False)
    _pending: deque[Future[None]] = field(init=False, repr=False)
    _batch: list[bytes] = field(init=False, repr=False)
    _batch_bytes: int = field(init=False, repr=False)
    _disk: ThreadPoolExecutor | None = field(init=False, repr=False, default=None)
    _ring: list[_Slot] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.dest_dir is None and self.direct_min is not None:
            raise ValueError("only a file is received directly (it is written around the page cache)")
        self.hasher = hashlib.sha256()
        self.progress = _Throttle(self.progress_callback, self.clock, self.limits.progress_interval_s)
        # One helper thread, so hashing a chunk overlaps writing the previous one (both release
        # the GIL); it keeps the order of writes and at most _WRITE_AHEAD chunks in flight. When
        # receiving directly, it hashes the buffers in order while the disk thread writes them;
        # while they go through the cache (cache_route.py), it writes those the disk is too busy for.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="download-writer")
        self._pending = deque()
        self._batch = []
        self._batch_bytes = 0

    def close(self) -> None:
        """Wait for writes in flight (their errors no longer matter), stop the threads, free the
        receive buffers."""
        self._pending.clear()
        self._batch.clear()
        self._writer.shutdown(wait=True)
        if self._disk is not None:
            self._disk.shutdown(wait=True)
        for slot in self._ring:
            with contextlib.suppress(BufferError):  # a view kept by a traceback: freed with it
                slot.buffer.close()
        self._ring.clear()

    @property
    def can_resume(self) -> bool:
        """True when a next request should ask for the rest with ``Range``."""
        return self.have > 0 and not self.encoded

    def restart(self) -> None:
        """Forget every byte: truncate the file (or the memory) and start a fresh hash."""
        self.flush()
        self.fh.seek(0)
        self.fh.truncate()
        self.hasher = hashlib.sha256()
        self.have = self.direct = self.around_cache = 0
        self.total = None
        self.encoded = False

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled(f"The download from {self.host} was cancelled.")

    def failed(self, what: str, *, status: int | None = None) -> DownloadFailed:
        return DownloadFailed(
            f"Download from {self.host} failed: {what}.", status=status, attempts=self.attempts
        )

    def too_slow(self) -> DownloadFailed:
        return self.failed(f"it was too slow to finish within its {self.limits.deadline_s:g} s limit")

    def accept(self, status: int, headers: Mapping[str, str], url: str, ranged: bool) -> bool:
        """Check a response's status and headers; True when a body to store follows."""
        if status == 416 and ranged:
            return self._unsatisfiable(hh.unsatisfied_range_total(headers.get("Content-Range")))
        if (kind := kind_of_status(status)) is not None:
            after = hh.retry_after(headers.get("Retry-After"))
            raise RetryableFailure(
                f"the server answered HTTP {status}", status=status, retry_after=after, kind=kind
            )
        if status not in (200, 206):
            raise self.failed(_status_text(status, self.is_hub), status=status)
        codings = hh.content_codings(headers)
        if hh.unsupported_codings(codings):
            raise self.failed("the server sent an unsupported content encoding", status=status)
        length = hh.content_length(headers)
        if status == 206:
            self._resume(hh.content_range(headers.get("Content-Range")), ranged and not codings)
        else:
            if self.have:
                log.info("download.restart", host=self.host, discarded=self.have)
                self.restart()
            self.encoded = bool(codings)
            self.total = None if codings else length
            self.validator = hh.range_validator(headers)
            self.server_sha = hh.checksum_header(headers)
            self.content_type = headers.get("Content-Type")
            self.filename_hint = hh.filename_hint(headers, url)
            if self.want_sha and self.server_sha and self.server_sha != self.want_sha:
                raise IntegrityError(
                    f"The server at {self.host} announces a different SHA-256 ({self.server_sha[:12]}…) "
                    f"than the task expects ({self.want_sha[:12]}…)."
                )
        self._check_size(length if codings else None)
        return True

    def _resume(self, content_range: hh.ContentRange | None, ranged: bool) -> None:
        if not ranged or content_range is None or content_range.start != self.have:
            self.restart()
            raise RetryableFailure("the server resumed at the wrong offset", status=206)
        total = content_range.total
        if self.total is not None and total is not None and total != self.total:
            self.restart()
            raise RetryableFailure("the file changed on the server during the download", status=206)
        self.total = total if total is not None else self.total
        self.resumes += 1
        log.info("download.resume", host=self.host, offset=self.have, total=self.total)

    def _unsatisfiable(self, server_total: int | None) -> bool:
        """HTTP 416 to our Range: complete if we already hold the whole file, else start over."""
        known = next((n for n in (self.expected_size, self.total, server_total) if n is not None), None)
        if known is not None and self.have == known:
            log.info("download.already_complete", host=self.host, bytes=self.have)
            return False
        self.restart()
        raise RetryableFailure("the server refused to resume (HTTP 416)", status=416)

    def _check_size(self, encoded_length: int | None) -> None:
        cap = self.limits.max_bytes
        if encoded_length is not None and encoded_length > cap:
            raise TooLarge(f"The file at {self.host} is over the {human_bytes(cap)} limit even compressed.")
        if self.total is not None:
            if self.total > cap:
                size = human_bytes(self.total)
                raise TooLarge(f"The file at {self.host} is {size}, over the {human_bytes(cap)} limit.")
            if self.expected_size is not None and self.total != self.expected_size:
                raise IntegrityError(
                    f"The file at {self.host} is {self.total} bytes; the task expects {self.expected_size}."
                )
        known = self.total if self.total is not None else self.expected_size
        if known is not None and self.dest_dir is not None:
            check_disk_space(self.dest_dir, known - self.have, self.limits.disk_reserve_bytes, self.host)

    def take(self, body: bytes) -> None:
        """A whole body read at once (a small hub file, hub_line.py): counted, checked and written
        as a streamed one is."""
        try:
            if body:
                self._admit(len(body))
                self._write(body)
                self.progress(self.have, self.total if self.total is not None else self.expected_size)
        finally:
            self.flush()

    def stream(self, raw: HTTPResponse) -> None:
        """Copy the body to the file, hashing, counting decoded bytes, watching deadline and rate."""
        try:
            self._copy(raw)
        finally:
            self.flush()

    def _copy(self, raw: HTTPResponse) -> None:
        limits = self.limits
        rate = _RateWindow(self.clock(), self.have)
        sock = self._direct_socket(raw)
        while True:
            self.check_cancel()
            try:
                # read1 returns after one socket read, so a trickle cannot keep us inside a read for
                # longer than read_timeout: the deadline and rate checks below keep running. An
                # identity body skips urllib3's decoded-bytes queue, which copies every byte again.
                piece = raw.read1(limits.chunk_size, decode_content=self.encoded)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                kind = (
                    RetryKind.TRANSIENT
                    if isinstance(exc, urllib3.exceptions.DecodeError)
                    else RetryKind.UNREACHABLE  # cut or silent mid-body: the server went away
                )
                raise RetryableFailure(_read_failure(exc), kind=kind) from exc
            if not piece:
                if self.total is not None and self.have < self.total:
                    # A legal short 206 (the server may send less than the range we asked for).
                    raise RetryableFailure("the server ended the response before the end of the file")
                return
            self._admit(len(piece))
            self._write(piece)
            self._tick(rate)
            left = raw.length_remaining
            if sock is not None and self.direct_min is not None and left and left >= self.direct_min:
                # The one read above emptied http.client's buffer: the rest is all in the socket.
                if self._receive_direct(sock, left, rate):
                    return
                sock = None

    def _direct_socket(self, raw: HTTPResponse) -> socket.socket | None:
        """The socket to receive the body from after a first read, or None to copy it all."""
        if self.direct_min is None or self.encoded or self.limits.chunk_size < io.DEFAULT_BUFFER_SIZE:
            return None
        return direct_copy.body_socket(raw)

    def _admit(self, count: int) -> None:
        """Refuse ``count`` more bytes that would pass the announced size, the cap or the expected size."""
        limits = self.limits
        if self.total is not None and self.have + count > self.total:
            raise IntegrityError(
                f"The server at {self.host} sent more than the {self.total} bytes it announced."
            )
        if self.have + count > limits.max_bytes:
            raise TooLarge(f"The file at {self.host} is over the {human_bytes(limits.max_bytes)} limit.")
        if self.expected_size is not None and self.have + count > self.expected_size:
            raise IntegrityError(
                f"The file at {self.host} is larger than the {self.expected_size} bytes expected."
            )

    def _tick(self, rate: _RateWindow) -> None:
        """After each piece: the deadline, the minimum rate over its window, and progress."""
        limits = self.limits
        now = self.clock()
        if now > self.deadline:
            raise self.too_slow()
        if now - rate.start >= limits.min_rate_window_s:
            bps = (self.have - rate.done) / (now - rate.start)
            if bps < limits.min_rate_bps:
                minimum = f"{limits.min_rate_bps:g} B/s over {limits.min_rate_window_s:g} s"
                raise RetryableFailure(f"the transfer was too slow ({bps:.0f} B/s, under {minimum})")
            rate.start, rate.done = now, self.have
        self.progress(self.have, self.total if self.total is not None else self.expected_size)

    def _receive_direct(self, sock: socket.socket, left: int, rate: _RateWindow) -> bool:
        """Receive the body's last ``left`` bytes into the ring of buffers; each full buffer is
        hashed by the helper thread and written around the cache by the disk thread while the next
        one fills, or, while ``RouteChooser`` sends them through the cache, hashed here as they
        arrive and written by whichever of the two is free (see the module docstring). False,
        having received nothing, where the file cannot be written around the cache."""
        self.flush()  # every byte counted so far is in the file
        if self._disk is None:
            self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="download-writer-disk")
        if not self._ring:
            self._ring = [_Slot(direct_copy.new_buffer()) for _ in range(direct_copy.BUFFERS)]
        direct_fd = direct_copy.open_direct(self.fh.fileno())
        if direct_fd is None:
            return False
        disk = direct_copy.DirectFile(self.fh.fileno(), direct_fd)
        turn, slot, filled, room, start = 0, None, 0, 0, self.have
        chooser, on_arrival, last_direct = RouteChooser(), False, None
        try:
            while left:
                if slot is None:
                    next_slot = self._ring[turn % len(self._ring)]
                    route = chooser.next_buffer(next_slot.held_by_the_disk(), self.have)
                    if route is Route.THROUGH_CACHE and not on_arrival:
                        # Hashed here from now on, after every byte the helper hashes.
                        wait([s.hashing for s in self._ring if s.hashing is not None])
                    on_arrival = route is Route.THROUGH_CACHE
                    self._settle_slot(next_slot)  # before it is ours: a failure leaves nothing to hand on
                    slot, turn = next_slot, turn + 1
                    # A first piece up to a block boundary, so that the buffers after it start on one.
                    room = (-self.have) % direct_copy.BLOCK or len(slot.buffer)
                    filled, start = 0, self.have
                view = memoryview(slot.buffer)[filled : filled + min(room - filled, left)]
                count = self._receive_piece(sock, view)
                self._admit(count)
                if on_arrival:  # while the bytes are still in this core's cache
                    self.hasher.update(view[:count])
                filled += count
                self.have += count
                self.direct += count
                left -= count
                if filled == room or not left:
                    direct = self._hand_slot(
                        slot, start, filled, disk, hashed=on_arrival, last_direct=last_direct
                    )
                    last_direct = direct or last_direct
                    slot = None
                self._tick(rate)
        finally:
            # Also the bytes before a cut: a resume carries on after them.
            if slot is not None and filled:
                self._hand_slot(slot, start, filled, disk, hashed=on_arrival, last_direct=last_direct)
            try:
                self._settle_ring()
            finally:
                # On the disk thread, after every write queued there (never while one still uses it).
                self._disk.submit(disk.close).result()
                self.around_cache += disk.around_cache
                self.fh.seek(self.have)  # direct writes leave the file's offset where it was
        if self.total is not None and self.have < self.total:
            # A legal short 206 (the server may send less than the range we asked for).
            raise RetryableFailure("the server ended the response before the end of the file")
        return True

    def _receive_piece(self, sock: socket.socket, view: memoryview) -> int:
        """One receive into ``view`` (as the portable copy's read1 makes one); its size."""
        self.check_cancel()
        try:
            count = sock.recv_into(view)
        except TimeoutError:
            if self.clock() >= self.deadline:
                raise self.too_slow() from None
            raise RetryableFailure(
                "the server stopped sending (read timed out)", kind=RetryKind.UNREACHABLE
            ) from None
        except OSError as exc:
            raise RetryableFailure("the connection was cut", kind=RetryKind.UNREACHABLE) from exc
        if not count:  # closed short of its Content-Length: urllib3 calls that a cut too
            raise RetryableFailure("the connection was cut", kind=RetryKind.UNREACHABLE)
        return count

    def _hand_slot(
        self,
        slot: _Slot,
        start: int,
        size: int,
        disk: direct_copy.DirectFile,
        *,
        hashed: bool,
        last_direct: Future[None] | None,
    ) -> Future[None] | None:
        """Have the slot's ``size`` bytes hashed (in order, on the helper thread) unless they are
        ``hashed`` already, and written at ``start``: around the page cache on the disk thread,
        or, ``hashed`` ones that find the disk still busy with ``last_direct``, through the cache
        on the helper thread (no longer hashing). The slot is refilled once both are done.
        The direct write, if it is one."""
        assert self._disk is not None
        data = memoryview(slot.buffer)[:size]
        if not hashed:
            slot.hashing = self._writer.submit(self.hasher.update, data)
        elif last_direct is not None and not last_direct.done():
            slot.writing = self._writer.submit(disk.write, data, start, cached=True)
            return None
        slot.writing = self._disk.submit(disk.write, data, start)
        return slot.writing

    def _settle_ring(self) -> None:
        """Wait for every slot's hashing and writing; then raise the first failure, if any."""
        first: BaseException | None = None
        for slot in self._ring:
            try:
                self._settle_slot(slot)
            except BaseException as exc:  # noqa: BLE001 - re-raised once all are settled
                first = first or exc
        if first is not None:
            raise first

    def _settle_slot(self, slot: _Slot) -> None:
        busy = [done for done in (slot.hashing, slot.writing) if done is not None]
        slot.hashing = slot.writing = None
        failure: BaseException | None = None
        for done in busy:  # both, even after a failure: the buffer must be free to reuse
            error = done.exception()
            failure = failure or error
        if isinstance(failure, OSError):
            raise self._write_failed(failure)
        if failure is not None:
            raise failure

    def _write(self, data: bytes) -> None:
        # Pieces are as small as the server's writes (64 KiB from Python's http.server): they are
        # hashed at once (while the writer thread writes earlier ones) but handed to the writer a
        # chunk at a time, so the hand-off costs once per chunk, not once per piece.
        self.hasher.update(data)
        self.have += len(data)
        self._batch.append(data)
        self._batch_bytes += len(data)
        if self._batch_bytes >= self.limits.chunk_size:
            self._hand_off()

    def _hand_off(self) -> None:
        if not self._batch:
            return
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        if len(self._pending) >= _WRITE_AHEAD:
            self._settle(self._pending.popleft())
        if size <= _INLINE_WRITE_BYTES and not self._pending:
            # A small file's only write (a body kept in memory is one): starting the writer thread
            # would cost more.
            self._pending.append(_run_now(write_pieces, self.fh, batch))
        else:
            self._pending.append(self._writer.submit(write_pieces, self.fh, batch))

    def flush(self) -> None:
        """Wait until every byte counted in ``have`` is written; raise the first write error."""
        self._hand_off()
        while self._pending:
            self._settle(self._pending.popleft())

    def _settle(self, write: Future[None]) -> None:
        try:
            write.result()
        except OSError as exc:
            for later in self._pending:  # let them finish; after a failed write they prove nothing
                later.exception()
            self._pending.clear()
            raise self._write_failed(exc) from None

    def _write_failed(self, exc: OSError) -> InsufficientDiskSpace | DownloadFailed:
        if disk_full(exc):
            done = human_bytes(self.have)
            return InsufficientDiskSpace(
                f"The disk ran out of space after {done} of the file from {self.host}."
            )
        return self.failed(f"the file could not be written ({exc.strerror})")

    def verified(self) -> bool:
        """True if the bytes are right; on the first mismatch, restart for one fresh download."""
        if self.expected_size is not None and self.have != self.expected_size:
            problem = f"it is {self.have} bytes, not the {self.expected_size} expected"
        else:
            want = self.want_sha or self.server_sha
            digest = self.hasher.hexdigest()
            if want is None or hmac.compare_digest(digest, want):
                return True
            problem = f"its SHA-256 is {digest[:12]}…, not the expected {want[:12]}…"
        if self.redownloaded:
            raise IntegrityError(
                f"The file from {self.host} is corrupt even after a fresh download: {problem}."
            )
        self.redownloaded = True
        log.warning("download.integrity_retry", host=self.host, problem=problem)
        self.restart()
        return False


def _run_now(fn: Callable[..., None], *args: Any) -> Future[None]:
    """``fn(*args)`` on this thread, as a settled future (its error kept, as an executor would)."""
    done: Future[None] = Future()
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - raised where the future is settled
        done.set_exception(exc)
    else:
        done.set_result(None)
    return done


def write_pieces(fh: BinaryIO, pieces: list[bytes]) -> None:
    """Write every piece, in order."""
    for piece in pieces:
        write_all(fh, piece)


def write_all(fh: BinaryIO, data: bytes) -> None:
    """Write every byte of ``data`` to an unbuffered file (raw writes may be short)."""
    view = memoryview(data)
    while view:
        written = fh.write(view)
        view = view[written or 0 :]


def _read_failure(exc: BaseException) -> str:
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "the server stopped sending (read timed out)"
    if isinstance(exc, urllib3.exceptions.DecodeError):
        return "the compressed body could not be decoded"
    return "the connection was cut"


def _status_text(status: int, is_hub: bool) -> str:
    if status in (401, 403):
        return (
            f"the hub rejected the API key (HTTP {status})"
            if is_hub
            else f"the server refused access (HTTP {status})"
        )
    if status in (404, 410):
        return f"the file was not found (HTTP {status})"
    if 300 <= status < 400:
        return f"the server answered with a redirect without a location (HTTP {status})"
    return f"the server answered HTTP {status}"
