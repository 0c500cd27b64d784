"""HTTP download of a task's input: streamed, capped, resumable, verified, and cleaned up on failure.

:class:`Downloader` fetches one URL into ``<dest_dir>/input.bin`` (created 0600, never a name the
server chose) in chunks of about 1 MiB, hashing SHA-256 on the fly. It bounds everything a hostile
or broken server could stretch: connect and read timeouts, an overall deadline and a minimum rate
(a server trickling a byte a second is cut off), the decoded size (a small gzip body can expand a
thousandfold), retries (capped exponential backoff with jitter, see ``retry.py``; a ``Retry-After``
of hours is capped and reported) and redirects (followed by hand, each hop re-checked by
:mod:`~morag_worker.core.transfer.url_policy`). A dropped connection resumes with ``Range``/``If-Range``.
The API key goes only to the hub's exact origin, which is never redirected away from.

A hub that does not answer (refused, reset, timed out, 502/503/504) is waited out until the
download's deadline, however many attempts that takes, and reported to an ``OutageWatch``; past
the deadline, or once the watch says the worker is stopping, the download raises
:class:`HubUnreachable` (the task goes back to the queue). Other servers, and answers that another
attempt may mend, get ``max_attempts``.

The body is copied the portable way or, on Linux, received into buffers
of ours and written around the page cache with the SHA-256 computed beside it, or through the
cache where the disk holds it back and that is measured faster (``download_state.py``,
``direct_copy.py``, ``cache_route.py``).

A hub file whose size the task states, at most 64 KiB, is asked for over a kept plain HTTP/1.1
connection instead (``hub_line.py``: requests' layers cost a small task a tenth of its CPU); its
answer goes through the same checks, and one that line does not read is asked for again the full way.
:meth:`Downloader.download_to_memory` keeps such a body (from the hub or not) in memory instead of
``input.bin``: the stated size bounds it before the server is asked, and every check, retry and
resume is the file's.

Runs on the calling (task) thread, plus helper threads that live only inside one download (none for
a body kept in memory). A Downloader and its ``requests.Session`` serve one thread at a time;
``cancel`` may be set from any thread. A worker keeps one per process and thread
(``execution/context.py``), so a body read to its end leaves its connection open for the next
download from that host.
"""

from __future__ import annotations

import io
import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

import requests
import structlog
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.util.ssl_ import create_urllib3_context

from morag_worker.core.logging import register_secret
from morag_worker.core.transfer import download_state
from morag_worker.core.transfer.direct_copy import DIRECT_AVAILABLE
from morag_worker.core.transfer.download_state import (
    DownloadLimits,
    ProgressCallback,
    RetryableFailure,
    TransferJob,
    check_disk_space,
    disk_full,
    write_all,
)
from morag_worker.core.transfer.errors import (
    DownloadCancelled,
    DownloadFailed,
    HubUnreachable,
    InsufficientDiskSpace,
    IntegrityError,
    TooLarge,
    TransferError,
    UnsafeURL,
)
from morag_worker.core.transfer.headers import SHA256_HEX
from morag_worker.core.transfer.hub_line import SMALL_BYTES, HubLine, Unexpected
from morag_worker.core.transfer.retry import OutageWatch, RetryKind, backoff_delay, kind_of_status
from morag_worker.core.transfer.url_policy import (
    PeerCheckingAdapter,
    Resolver,
    UrlPolicy,
    check_url,
    normalise_url,
    origin_of,
    system_resolver,
)
from morag_worker.core.transfer.workspace import TaskWorkspace, sweep_stale_workspaces
from morag_worker.core.units import human_bytes

__all__ = [
    "INPUT_NAME",
    "MEMORY_MAX_BYTES",
    "DownloadCancelled",
    "DownloadFailed",
    "Downloaded",
    "DownloadLimits",
    "DownloadedBytes",
    "DownloadedFile",
    "Downloader",
    "HubUnreachable",
    "InsufficientDiskSpace",
    "IntegrityError",
    "OutageWatch",
    "ProgressCallback",
    "TaskWorkspace",
    "TooLarge",
    "TransferError",
    "UnsafeURL",
    "UrlPolicy",
    "check_url",
    "create_input",
    "sweep_stale_workspaces",
]

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
INPUT_NAME = "input.bin"
WAIT_SLICE_S = 0.5  # how often a wait for the hub looks whether the worker is stopping
# Answers in a row the hub line could not read, after which this downloader asks the full way only
# (a proxy before the hub that always chunks, say, would cost every small file a wasted request).
LINE_MISSES_TO_STOP = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})  # with a Location: what requests calls a redirect
NOTABLE_DOWNLOAD_S = 1.0  # a download that took longer is logged at INFO; a quick one at DEBUG
MEMORY_MAX_BYTES = SMALL_BYTES  # the most a body kept in memory may be (the hub line's small file)


@dataclass(frozen=True)
class Downloaded:
    """What every completed download tells. ``filename_hint`` is a sanitised display name, never a path.

    ``verified`` is True when the SHA-256 was checked against the task's or the server's value;
    ``host`` names the server in messages.
    """

    host: str
    size: int
    sha256: str
    content_type: str | None
    filename_hint: str | None
    resumes: int
    attempts: int
    verified: bool


@dataclass(frozen=True)
class DownloadedFile(Downloaded):
    """A completed download into a file (``input.bin``)."""

    path: Path


@dataclass(frozen=True)
class DownloadedBytes(Downloaded):
    """A completed download of a small body kept in memory (:meth:`Downloader.download_to_memory`)."""

    content: bytes


@dataclass(frozen=True)
class _Asked:
    """A download's checked arguments."""

    url: str
    host: str
    is_hub: bool
    want_sha: str | None
    expected_size: int | None


def create_input(dest_dir: Path) -> tuple[Path, io.FileIO]:
    """``dest_dir/input.bin``, created 0600 and opened unbuffered for writing; FileExistsError if it
    exists (a link there is never followed)."""
    path = dest_dir / INPUT_NAME
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    return path, io.FileIO(os.open(path, flags, 0o600), "wb", closefd=True)


def _what_was_fetched(job: TransferJob) -> dict[str, Any]:
    """The :class:`Downloaded` fields of a finished job."""
    return {
        "host": job.host,
        "size": job.have,
        "sha256": job.hasher.hexdigest(),
        "content_type": job.content_type,
        "filename_hint": job.filename_hint,
        "resumes": job.resumes,
        "attempts": job.attempts,
        "verified": (job.want_sha or job.server_sha) is not None,
    }


class Downloader:
    """Downloads task inputs under :class:`DownloadLimits` and the URL policy.

    Args:
        session: A requests session to use (its ``trust_env`` is turned off, its proxies cleared
            and a peer-checking adapter mounted); one is created and owned when None.
        limits: The bounds; ``DownloadLimits()`` when None.
        hub_origin: The hub's URL. Only requests to exactly this origin carry the API key, and they
            follow no redirects. Also the one origin exempt from the address rules.
        api_key: Sent as ``Authorization: Bearer`` to the hub only; registered for log redaction.
        sleep: Waits between attempts. None waits on ``cancel`` (so cancelling interrupts a wait),
            or with ``time.sleep`` when there is no cancel event. Tests inject a recorder.
        clock: Monotonic seconds, for the deadline, the rate check and progress throttling.
        resolver: Resolves host names for the URL policy.
        trusted_origins: Origins exempt from the address rules like the hub, but never given the
            key. Tests only (loopback servers); production leaves it empty.
        ca_bundle: A CA bundle to verify TLS against instead of the default one (a hub with a
            private CA). Certificates are always verified; there is no way to turn that off.
        outage: Told when the hub does not answer and when it answers again; asked, while a
            download waits for the hub, whether the worker is stopping.
        rng: Random numbers in [0, 1) for the backoff's jitter.
        direct_io: Receive large bodies into buffers of ours and write them around the
            page cache where the system can (Linux); False copies every body the portable way
            (tests of that path).
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        limits: DownloadLimits | None = None,
        hub_origin: str | None = None,
        api_key: str | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        resolver: Resolver = system_resolver,
        trusted_origins: Iterable[str] = (),
        ca_bundle: str | os.PathLike[str] | None = None,
        outage: OutageWatch | None = None,
        rng: Callable[[], float] = random.random,
        direct_io: bool = True,
    ) -> None:
        self.limits = limits if limits is not None else DownloadLimits()
        self._outage = outage
        self._rng = rng
        self._direct_io = direct_io and DIRECT_AVAILABLE
        self.policy = UrlPolicy(
            hub_origin=hub_origin, resolver=resolver, trusted_origins=frozenset(trusted_origins)
        )
        self._api_key = api_key
        self._verify: str | bool = os.fspath(ca_bundle) if ca_bundle is not None else True
        register_secret(api_key)
        self._sleep = sleep
        self._clock = clock
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        self.session.trust_env = False  # no proxy variables, no .netrc credentials
        self.session.proxies.clear()  # a proxy would hide the peer address we check
        self._session_headers = {
            name: value if isinstance(value, str) else value.decode("latin-1")
            for name, value in self.session.headers.items()
        }
        adapter = PeerCheckingAdapter(self.policy)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._hub_line: HubLine | None = None  # made at the first small hub file
        self._line_misses = 0  # answers in a row the hub line could not read

    def close(self) -> None:
        """Close the session if this downloader created it. The hub line stays open for the next
        download unless the session is closed too: a worker's kept downloader keeps both."""
        if self._owns_session:
            self.session.close()
            if self._hub_line is not None:
                self._hub_line.close()

    def __enter__(self) -> Downloader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def download(
        self,
        url: str,
        dest_dir: Path,
        *,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> DownloadedFile:
        """Download ``url`` into ``dest_dir/input.bin`` and return what was fetched.

        Args:
            url: An http(s) URL; checked against the URL policy, as is every redirect hop.
            dest_dir: An existing private directory (see TaskWorkspace) without an ``input.bin``.
            expected_sha256: Hex SHA-256 the file must have; otherwise the server's
                ``X-Checksum-SHA256`` is checked when it sends one.
            expected_size: Exact size in bytes the file must have.
            progress: Called with ``(done_bytes, total_or_None)`` at most every
                ``progress_interval_s`` and once at the end.
            cancel: Checked between reads and while waiting to retry.
            notice: Called with one line a person can read whenever the download waits to retry
                (server busy, a capped ``Retry-After``, a cut connection).

        Raises:
            UnsafeURL, TooLarge, IntegrityError, InsufficientDiskSpace, DownloadCancelled,
            DownloadFailed, HubUnreachable (all TransferError); ValueError for a malformed
            ``expected_sha256`` or a negative ``expected_size``; FileExistsError if ``input.bin``
            already exists.
        """
        asked = self._asked(url, expected_sha256, expected_size)
        if expected_size is not None:  # refuse before connecting; checked again once the server answers
            check_disk_space(Path(dest_dir), expected_size, self.limits.disk_reserve_bytes, asked.host)
        path, file = create_input(Path(dest_dir))
        complete = False
        try:
            with file:
                job = self._transfer(asked, file, Path(dest_dir), progress, cancel, notice)
            complete = True
        finally:
            if not complete:
                path.unlink(missing_ok=True)
        return DownloadedFile(path=path, **_what_was_fetched(job))

    def download_to_memory(
        self,
        url: str,
        *,
        expected_size: int,
        expected_sha256: str | None = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> DownloadedBytes:
        """:meth:`download` of a body of at most ``MEMORY_MAX_BYTES`` into memory: no file, no folder.

        The task states the size, and no more bytes than that are ever kept (``TransferJob`` refuses
        them as it would for a file), so what stays in memory is bounded before the server is asked;
        while it is read, one read's worth more (a chunk) is held, as for a file. Every other check,
        retry and resume is the file's. Raises as :meth:`download` does, and ValueError for an
        ``expected_size`` over ``MEMORY_MAX_BYTES``.
        """
        if expected_size > MEMORY_MAX_BYTES:
            raise ValueError(f"a body kept in memory is at most {MEMORY_MAX_BYTES} bytes")
        asked = self._asked(url, expected_sha256, expected_size)
        body = io.BytesIO()
        job = self._transfer(asked, body, None, progress, cancel, notice)
        return DownloadedBytes(content=body.getvalue(), **_what_was_fetched(job))

    def write_input(self, dest_dir: Path, downloaded: DownloadedBytes) -> Path:
        """A body kept in memory written as ``dest_dir/input.bin``, for a converter that reads files.

        The disk's free space is checked first, as before a download into a file, and a write that
        fails is told as a download's would be (InsufficientDiskSpace, DownloadFailed).
        """
        host, content = downloaded.host, downloaded.content
        check_disk_space(dest_dir, len(content), self.limits.disk_reserve_bytes, host)
        path, file = create_input(dest_dir)
        try:
            with file:
                write_all(file, content)
        except OSError as exc:
            path.unlink(missing_ok=True)
            if disk_full(exc):
                size = human_bytes(len(content))
                raise InsufficientDiskSpace(
                    f"The disk ran out of space for the file from {host} ({size})."
                ) from None
            raise DownloadFailed(f"The file from {host} could not be written ({exc.strerror}).") from None
        return path

    def _asked(self, url: str, expected_sha256: str | None, expected_size: int | None) -> _Asked:
        """The request's checked arguments; TooLarge for a stated size over the cap, before connecting."""
        want_sha = None
        if expected_sha256 is not None:
            want_sha = expected_sha256.strip().lower()
            if not SHA256_HEX.fullmatch(want_sha):
                raise ValueError("expected_sha256 must be 64 hexadecimal digits")
        if expected_size is not None and expected_size < 0:
            raise ValueError("expected_size must not be negative")
        url = normalise_url(url)
        host, cap = origin_of(url).display, self.limits.max_bytes
        if expected_size is not None and expected_size > cap:
            size = human_bytes(expected_size)
            raise TooLarge(f"The file at {host} is {size}, over the {human_bytes(cap)} limit.")
        return _Asked(url, host, self.policy.is_hub(url), want_sha, expected_size)

    def _transfer(
        self,
        asked: _Asked,
        fh: BinaryIO,
        dest_dir: Path | None,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
        notice: Callable[[str], None] | None,
    ) -> TransferJob:
        """Fetch the body into ``fh`` (attempts, retries, checks); the finished job says what came."""
        host = asked.host
        started = self._clock()
        log.debug("download.start", host=host, hub=asked.is_hub, expected_size=asked.expected_size)
        job = TransferJob(
            host=host,
            is_hub=asked.is_hub,
            dest_dir=dest_dir,
            fh=fh,
            limits=self.limits,
            clock=self._clock,
            deadline=started + self.limits.deadline_s,
            want_sha=asked.want_sha,
            expected_size=asked.expected_size,
            progress_callback=progress,
            cancel=cancel,
            # Only a file can be written around the page cache; a body in memory is small anyway.
            direct_min=download_state.DIRECT_MIN_BYTES if self._direct_io and dest_dir is not None else None,
        )
        try:
            self._run(job, asked.url, notice)
        except TransferError as exc:
            log.warning("download.failed", host=host, error=type(exc).__name__, message=str(exc))
            raise
        finally:
            job.close()
        elapsed = max(self._clock() - started, 1e-9)
        # A task's one line at INFO is its task.done; a download a person waited for says so too.
        (log.info if elapsed >= NOTABLE_DOWNLOAD_S else log.debug)(
            "download.done",
            host=host,
            bytes=job.have,
            seconds=round(elapsed, 3),
            mib_per_s=round(job.have / MiB / elapsed, 1),
            attempts=job.attempts,
            resumes=job.resumes,
            direct=job.direct,
            around_cache=job.around_cache,
        )
        return job

    def _run(self, job: TransferJob, url: str, notice: Callable[[str], None] | None) -> None:
        while True:
            job.check_cancel()
            have_before = job.have
            job.attempts += 1
            try:
                self._attempt(job, url)
            except RetryableFailure as exc:
                # A cut after real progress starts the count again; a server that cannot deliver
                # even a chunk per attempt runs out of attempts (and the deadline bounds the rest).
                progressed = job.have - have_before >= self.limits.chunk_size
                job.failures = 1 if progressed else job.failures + 1
                if not self._waits_out(job, exc):
                    job.capped_failures = 1 if progressed else job.capped_failures + 1
                self._wait_before_retry(job, exc, notice)
                continue
            if job.verified():
                job.progress(job.have, job.have, final=True)
                return

    @staticmethod
    def _waits_out(job: TransferJob, exc: RetryableFailure) -> bool:
        """True for a hub that does not answer: retried until the deadline, not ``max_attempts``."""
        return job.is_hub and exc.kind is RetryKind.UNREACHABLE

    def _wait_before_retry(
        self, job: TransferJob, exc: RetryableFailure, notice: Callable[[str], None] | None
    ) -> None:
        limits = self.limits
        waits_out = self._waits_out(job, exc)
        if not waits_out and job.capped_failures >= limits.max_attempts:
            raise DownloadFailed(
                f"Download from {job.host} failed after {job.attempts} attempts: {exc.reason}.",
                status=exc.status,
                attempts=job.attempts,
            )
        if exc.retry_after is not None:
            wait = min(exc.retry_after, limits.retry_after_max)
        else:
            wait = backoff_delay(
                job.failures, base=limits.backoff_base, cap=limits.backoff_max, rng=self._rng
            )
        if self._clock() + wait >= job.deadline:  # an attempt needs some time left to be made
            if waits_out:
                waited = self._clock() - (job.deadline - limits.deadline_s)
                raise HubUnreachable(
                    f"The hub at {job.host} could not be reached for {waited:.0f} s "
                    f"({exc.reason}); the task goes back to the queue.",
                    attempts=job.attempts,
                )
            raise job.failed(
                f"{exc.reason}, and waiting to retry would pass its {limits.deadline_s:g} s time limit"
            )
        if waits_out and self._outage is not None:
            self._outage.unreachable(exc.reason, wait)
        capped = exc.retry_after is not None and exc.retry_after > limits.retry_after_max
        log.warning(
            "download.retry",
            host=job.host,
            reason=exc.reason,
            attempt=job.attempts,
            wait_s=round(wait, 2),
            retry_after_s=exc.retry_after,
            retry_after_capped=capped,
        )
        if notice is not None:
            asked = f" (the server asked for {exc.retry_after:.0f} s)" if capped else ""
            notice(f"Download from {job.host}: {exc.reason}; retrying in {wait:.0f} s{asked}.")
        self._pause(job, wait, watch=self._outage if waits_out else None)

    def _pause(self, job: TransferJob, wait: float, watch: OutageWatch | None) -> None:
        """Wait ``wait`` s (cancel ends it early); waiting for the hub, also when it is seen back
        (the worker's probe got an answer) or the worker is stopping."""
        if self._sleep is not None:
            self._sleep(wait)
        else:
            end = self._clock() + wait
            while (left := end - self._clock()) > 0:
                step = min(left, WAIT_SLICE_S) if watch is not None else left
                if job.cancel is not None:
                    if job.cancel.wait(step):
                        return
                else:
                    time.sleep(step)
                if watch is not None and (watch.give_up_waiting() or watch.seen_back()):
                    break
        if watch is not None and watch.give_up_waiting():
            raise HubUnreachable(
                f"The hub at {job.host} cannot be reached and the worker is stopping; "
                "the task goes back to the queue.",
                attempts=job.attempts,
                stopping=True,
            )

    def _attempt(self, job: TransferJob, url: str) -> None:
        ranged = job.can_resume
        if job.have and not ranged:
            job.restart()  # a content-encoded body cannot be resumed by byte offset
        headers = {"Accept-Encoding": "identity"}
        if job.is_hub and self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        if ranged:
            headers["Range"] = f"bytes={job.have}-"
            if job.validator:
                headers["If-Range"] = job.validator
        if not ranged and self._fetched_small(job, url, headers):
            return
        response = self._open(job, url, headers)
        if job.is_hub and self._outage is not None and kind_of_status(response.status_code) is None:
            self._outage.answered()
        try:
            if job.accept(response.status_code, response.headers, response.url, ranged):
                job.stream(response.raw)
                # Read to its end: the connection goes back to the session's pool for the next
                # task (closing the response would close it). Any other way out closes it.
                response.raw.release_conn()
        finally:
            response.close()

    def _fetched_small(self, job: TransferJob, url: str, headers: dict[str, str]) -> bool:
        """A small hub file whose size the task states, over the kept hub line (hub_line.py).

        True when its answer was taken (``job.accept`` checked it as any answer); False to fetch
        the full way (not such a file, or an answer the line does not read). Failures to reach the
        hub are the same ``RetryableFailure`` the full way raises.
        """
        if not job.is_hub or job.expected_size is None or job.expected_size > SMALL_BYTES:
            return False
        if self._line_misses >= LINE_MISSES_TO_STOP:
            return False
        self.policy.check(url)  # the hub's origin is exempt from the address rules, not the rest
        remaining = job.deadline - self._clock()
        if remaining <= 0:
            raise job.too_slow()
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        limits = self.limits
        line = self._hub_line
        if line is None:
            hub = origin_of(url)  # the hub's (``job.is_hub``)
            tls = self._tls_context(job) if hub.scheme == "https" else None
            line = self._hub_line = HubLine(hub.scheme, hub.host, hub.port, tls)
        try:
            answer = line.get(
                target,
                {**self._session_headers, **headers},
                connect_timeout=limits.connect_timeout,
                timeout=min(limits.read_timeout, remaining),
                max_body=SMALL_BYTES,
            )
        except Unexpected:
            self._line_misses += 1
            return False
        except ssl.SSLCertVerificationError:
            raise job.failed("the server's TLS certificate could not be verified") from None
        except ssl.SSLError as exc:
            raise RetryableFailure("the TLS connection failed") from exc
        except TimeoutError as exc:
            raise RetryableFailure("the server did not answer in time", kind=RetryKind.UNREACHABLE) from exc
        except OSError as exc:
            raise RetryableFailure("could not connect", kind=RetryKind.UNREACHABLE) from exc
        self._line_misses = 0
        if self._outage is not None and kind_of_status(answer.status) is None:
            self._outage.answered()
        if answer.status in _REDIRECTS and "location" in answer.headers:
            raise _hub_redirect(job, answer.status)
        if job.accept(answer.status, answer.headers, url, False):
            job.check_cancel()
            job.take(answer.body)
        return True

    def _tls_context(self, job: TransferJob) -> ssl.SSLContext:
        """What the hub line verifies TLS against: urllib3's context (hostname checked against the
        certificate's names, never its common name) and the CA file or folder requests would use."""
        context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
        where = self._verify if isinstance(self._verify, str) else DEFAULT_CA_BUNDLE_PATH
        try:
            if os.path.isdir(where):
                context.load_verify_locations(capath=where)
            else:
                context.load_verify_locations(cafile=where)
        except (OSError, ssl.SSLError) as exc:
            raise job.failed(f"the CA certificates in {where} could not be read ({exc})") from None
        return context

    def _open(self, job: TransferJob, url: str, headers: dict[str, str]) -> requests.Response:
        """GET ``url``, following redirects by hand (none for the hub), each hop re-checked."""
        limits = self.limits
        for _hop in range(limits.max_redirects + 1):
            try:
                self.policy.check(url)
            except OSError as exc:
                raise RetryableFailure(
                    f"the name {origin_of(url).host} could not be resolved", kind=RetryKind.UNREACHABLE
                ) from exc
            remaining = job.deadline - self._clock()
            if remaining <= 0:
                raise job.too_slow()
            try:
                response = self.session.get_adapter(url).send(
                    self._prepared_get(url, headers),
                    stream=True,
                    verify=self._verify,
                    proxies={},
                    timeout=(limits.connect_timeout, min(limits.read_timeout, remaining)),
                )
            except requests.exceptions.SSLError as exc:
                if _certificate_error(exc):
                    raise job.failed("the server's TLS certificate could not be verified") from None
                raise RetryableFailure("the TLS connection failed") from exc
            except requests.exceptions.ConnectTimeout as exc:
                raise RetryableFailure("connecting timed out", kind=RetryKind.UNREACHABLE) from exc
            except requests.exceptions.Timeout as exc:
                raise RetryableFailure(
                    "the server did not answer in time", kind=RetryKind.UNREACHABLE
                ) from exc
            except requests.exceptions.ConnectionError as exc:
                raise RetryableFailure("could not connect", kind=RetryKind.UNREACHABLE) from exc
            except requests.exceptions.RequestException as exc:
                raise job.failed(f"the request could not be made ({type(exc).__name__})") from None
            if not response.is_redirect:
                return response
            status, location = response.status_code, response.headers["Location"]
            response.close()
            if job.is_hub:
                raise _hub_redirect(job, status)
            url = normalise_url(urljoin(url, location))
            log.info("download.redirect", host=job.host, to_host=origin_of(url).display, status=status)
        raise job.failed(f"more than {limits.max_redirects} redirects")

    def _prepared_get(self, url: str, headers: dict[str, str]) -> requests.PreparedRequest:
        """A GET for the session's adapter, built by hand: skipping ``Session.request`` saves 0.2 ms a
        request, a tenth of a small task's download (issue 14). ``url`` is already normalised as
        requests would prepare it, and the session adds nothing a download wants (no cookies,
        proxies or redirects) but its default headers, merged here as they were at ``__init__``."""
        request = requests.PreparedRequest()
        request.method = "GET"
        request.url = url
        request.headers = requests.structures.CaseInsensitiveDict({**self._session_headers, **headers})
        request.body = None
        return request


def _hub_redirect(job: TransferJob, status: int) -> DownloadFailed:
    return job.failed(
        f"the hub answered with a redirect (HTTP {status}), and hub downloads follow none", status=status
    )


def _certificate_error(exc: BaseException) -> bool:
    """True when a TLS failure is about the certificate (retrying cannot help), not the connection."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        seen.add(id(current))
        pending.extend(
            [*current.args, getattr(current, "reason", None), current.__cause__, current.__context__]
        )
    return False
