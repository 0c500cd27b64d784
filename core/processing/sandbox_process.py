"""Starting, killing and reaping converter children: forked (POSIX) or spawned into a Job object (Windows).

Every child is started before its request exists and waits for it on a pipe, under its limits
already, so one can be started ahead of need (issue 14: a small document need not pay the fork).
:func:`fork_child` forks the worker: the child inherits the processors registered so far and their
imports, and runs :func:`.sandbox_child.run_forked`. Each child closes the pipes of the other children
of this process, so a pipe's only writer is its own child and its end means that child ended.
:func:`spawn_child` starts ``python -m morag_worker.core.processing.sandbox_child`` with its limits on
the command line and puts it in a Job object before it has read anything. Either way
:meth:`ConverterChild.send` hands over one JSON request (:func:`request_payload`); the child converts
that one document and exits. :class:`SpareKeeper` keeps one child waiting and reaps the used ones on
its own thread. Otherwise called on the task's thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Protocol

import structlog

from morag_worker.core.config.settings import ConverterLimits
from morag_worker.core.processing.base import Processor
from morag_worker.core.processing.sandbox_child import prepare, run_forked
from morag_worker.core.processing.winjob import JobObject

__all__ = [
    "SPAWN_BASELINE_BYTES",
    "ConversionRequest",
    "ConverterChild",
    "ExitStatus",
    "SpareKeeper",
    "StartMethod",
    "default_start_method",
    "fork_child",
    "request_payload",
    "spawn_child",
]

log = structlog.get_logger(__name__)

SPAWN_BASELINE_BYTES = 256 * 1024 * 1024  # a spawned child's interpreter and imports, on top of the limit


class StartMethod(StrEnum):
    """How a converter child starts."""

    FORK = "fork"
    SPAWN = "spawn"


def default_start_method() -> StartMethod:
    """``fork`` where there is one (cheap, inherits the imports), ``spawn`` on Windows."""
    return StartMethod.FORK if hasattr(os, "fork") else StartMethod.SPAWN


@dataclass(frozen=True)
class ConversionRequest:
    """One file to convert, with what a spawned child needs to resolve its processor again."""

    path: Path
    options: Mapping[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    filename: str | None = None
    name_from_path: bool = True


def request_payload(request: ConversionRequest, processor: int | None = None) -> bytes:
    """What a waiting child reads: the document, and the number of its (inherited) processor if forked.

    Options arrive as JSON, as the task's own did; anything else in them arrives as its ``str``.
    """
    fields = {
        "processor": processor,
        "path": str(request.path),
        "options": dict(request.options),
        "content_type": request.content_type,
        "filename": request.filename,
        "name_from_path": request.name_from_path,
    }
    return json.dumps(fields, default=str).encode()


@dataclass(frozen=True)
class ExitStatus:
    """How a child ended: an exit code, or the signal that killed it (both None: unknown)."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        return cls(signal=-returncode) if returncode < 0 else cls(code=returncode)

    def describe(self) -> str:
        if self.signal is not None:
            try:
                return f"killed by {signal.Signals(self.signal).name}"
            except ValueError:
                return f"killed by signal {self.signal}"
        return f"exit code {self.code}" if self.code is not None else "an unknown exit status"


class ConverterChild(Protocol):
    """A started converter child: its frame stream, how to hand it its request, wait for it and end it.

    ``limits`` are those it applied to itself when it started; ``processors`` the numbers of the
    processors it inherited (None: it resolves the processor itself, from the request).
    """

    stream: IO[bytes]
    limits: ConverterLimits
    processors: frozenset[int] | None

    def send(self, payload: bytes) -> bool:
        """Hand over the request (once); False when the child is gone."""
        ...

    def waiting(self) -> bool:
        """Alive, and not yet handed a request."""
        ...

    def wait(self, timeout: float | None) -> ExitStatus | None: ...

    def kill(self) -> None: ...

    def reached_memory_limit(self) -> bool: ...

    def close(self) -> None: ...


# One fork at a time: a child closes every descriptor but its own two pipe ends (close_inherited),
# so each pipe's only writer (and reader) is its own child and EOF means that end.
_fork_lock = threading.Lock()


def _write_all(write: Callable[[memoryview], int | None], payload: bytes) -> bool:
    data = memoryview(payload)
    try:
        while data:
            chunk = data[: 1 << 16]
            written = write(chunk)
            data = data[len(chunk) if written is None else written :]
    except OSError:  # BrokenPipeError: the child is gone
        return False
    return True


class _ForkedChild:
    def __init__(
        self, pid: int, read_fd: int, request_fd: int, limits: ConverterLimits, processors: frozenset[int]
    ) -> None:
        self.pid = pid
        self.limits = limits
        self.processors: frozenset[int] | None = processors
        self._read_fd = read_fd
        self._request_fd: int | None = request_fd
        self.stream: IO[bytes] = os.fdopen(read_fd, "rb")
        self._status: ExitStatus | None = None

    def _reap(self, flags: int) -> ExitStatus | None:
        if self._status is None:
            try:
                pid, raw = os.waitpid(self.pid, flags)
            except ChildProcessError:  # reaped elsewhere: the status is lost
                self._status = ExitStatus()
                return self._status
            if pid == 0:
                return None
            self._status = ExitStatus.from_returncode(os.waitstatus_to_exitcode(raw))
        return self._status

    def _close_request(self) -> None:
        if self._request_fd is not None:
            fd, self._request_fd = self._request_fd, None
            os.close(fd)

    def send(self, payload: bytes) -> bool:
        fd = self._request_fd
        if fd is None:
            return False
        try:
            return _write_all(lambda data: os.write(fd, data), payload)
        finally:
            self._close_request()  # the end of the request

    def waiting(self) -> bool:
        return self._request_fd is not None and self._reap(os.WNOHANG) is None

    def wait(self, timeout: float | None) -> ExitStatus | None:
        if timeout is None:
            return self._reap(0)
        deadline = time.monotonic() + timeout
        while (status := self._reap(os.WNOHANG)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return status

    def kill(self) -> None:
        if self._status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def reached_memory_limit(self) -> bool:
        return False  # RLIMIT_AS makes allocations fail in the child, which then says so itself

    def close(self) -> None:
        self.kill()
        self.wait(None)
        self._close_request()
        self.stream.close()


class _SpawnedChild:
    def __init__(
        self, process: subprocess.Popen[bytes], job: JobObject | None, limits: ConverterLimits
    ) -> None:
        self._process = process
        self._job = job
        self.limits = limits
        self.processors: frozenset[int] | None = None  # it resolves the processor from the request
        assert process.stdout is not None
        self.stream: IO[bytes] = process.stdout

    def send(self, payload: bytes) -> bool:
        stdin = self._process.stdin
        if stdin is None or stdin.closed:
            return False
        try:
            # Flushed here: a dead spare's broken pipe shows now (False: the task starts another
            # child), not in close(), which would hide it.
            return _write_all(stdin.write, payload) and _flushed(stdin)
        finally:
            with contextlib.suppress(OSError):
                stdin.close()  # the end of the request

    def waiting(self) -> bool:
        stdin = self._process.stdin
        return stdin is not None and not stdin.closed and self._process.poll() is None

    def wait(self, timeout: float | None) -> ExitStatus | None:
        try:
            return ExitStatus.from_returncode(self._process.wait(timeout))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self._process.poll() is None:
            if self._job is not None:
                self._job.terminate()
            with contextlib.suppress(OSError):
                self._process.kill()

    def reached_memory_limit(self) -> bool:
        return self._job is not None and self._job.reached_limit()

    def close(self) -> None:
        self.kill()
        self._process.wait()
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        self.stream.close()
        if self._job is not None:
            self._job.close()


def _flushed(stream: IO[bytes]) -> bool:
    try:
        stream.flush()
    except OSError:
        return False
    return True


def fork_child(limits: ConverterLimits, processors: Mapping[int, Processor]) -> ConverterChild:
    """Fork a converter child under ``limits`` that will run one of ``processors`` (inherited, not sent).

    Called on the task's thread (a child started on demand) or the spare keeper's. The child
    inherits only the calling thread, and keeps only its two pipe ends of the descriptors (so
    a waiting spare holds no end of another thread's pipe or socket open); what it runs before
    its request (closing descriptors, signals, ``prctl``, ``setrlimit``, a blocking read) takes
    no lock another thread could hold, and the processors' parsers were imported before
    (``preload``), so it imports nothing.
    """
    prepare()
    known = dict(processors)
    with _fork_lock:
        read_fd, write_fd = os.pipe()
        request_read, request_write = os.pipe()
        try:
            pid = os.fork()
        except BaseException:  # EAGAIN (a pids limit), ENOMEM: no child, and no pipes left open
            for fd in (read_fd, write_fd, request_read, request_write):
                os.close(fd)
            raise
        if pid == 0:  # the child: never returns
            run_forked(request_read, write_fd, known, limits.memory_bytes, limits.max_output_bytes)
        os.close(write_fd)
        os.close(request_read)
    return _ForkedChild(pid, read_fd, request_write, limits, frozenset(known))


def spawn_child(limits: ConverterLimits, job_factory: Callable[[int], JobObject] | None) -> ConverterChild:
    """Start ``python -m ...sandbox_child`` under ``limits``, in a Job object (``job_factory``)."""
    job: JobObject | None = None
    settings = {
        "memory_bytes": limits.memory_bytes,
        "max_output_bytes": limits.max_output_bytes,
        "limit_memory_here": job_factory is None,
    }
    argv = [sys.executable, "-m", "morag_worker.core.processing.sandbox_child", json.dumps(settings)]
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, creationflags=flags)
    try:
        if job_factory is not None:
            job = job_factory(limits.memory_bytes + SPAWN_BASELINE_BYTES)
            job.assign(process.pid)  # before the child reads its request, so before any input
    except BaseException:
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        if job is not None:
            job.close()
        raise
    return _SpawnedChild(process, job, limits)


def _reap(child: ConverterChild, reader: threading.Thread | None) -> None:
    child.kill()
    if reader is not None:
        reader.join(timeout=_REAP_S)  # it ends at the pipe's end, once the child is gone
    child.close()


_REAP_S = 5.0


class SpareKeeper:
    """Keeps one converter child started ahead of need, and reaps used children, on one thread.

    ``start`` makes a child (:func:`fork_child` or :func:`spawn_child` with the sandbox's limits); it
    runs on the keeper's thread, which lives until :meth:`close`: Linux kills a child whose starting
    *thread* ends (``PR_SET_PDEATHSIG``), so only a long-lived thread may start one. A failed start
    is logged and leaves no spare (the task then starts its own child). Used from any thread.
    """

    def __init__(self, start: Callable[[], ConverterChild], *, name: str = "morag-converter-spare") -> None:
        self.pid = os.getpid()  # a keeper is this process's only: a forked process makes its own
        self._start = start
        self._cond = threading.Condition()
        self._spare: ConverterChild | None = None
        self._wanted = False
        self._starting = False
        self._closed = False
        self._retired: list[tuple[ConverterChild, threading.Thread | None]] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def refill(self) -> None:
        """Start a spare (on the keeper's thread) unless one is waiting or starting."""
        with self._cond:
            self._wanted = True
            self._cond.notify_all()

    def take(self, usable: Callable[[ConverterChild], bool], wait_s: float) -> ConverterChild | None:
        """The waiting spare if ``usable`` accepts it (waiting up to ``wait_s`` for one being started).

        A spare that died or that ``usable`` refuses is reaped; None then, as when there is none.
        """
        with self._cond:
            if self._starting:
                self._cond.wait_for(lambda: not self._starting, timeout=wait_s)
            spare, self._spare = self._spare, None
        if spare is None:
            return None
        if spare.waiting() and usable(spare):
            return spare
        self.retire(spare)
        return None

    def ready(self, timeout: float) -> bool:
        """Whether a spare is waiting, or comes within ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: self._spare is not None, timeout)

    def retire(self, child: ConverterChild, reader: threading.Thread | None = None) -> None:
        """Kill ``child`` now; reap it (after ``reader``, which reads its pipe) on the keeper's thread."""
        child.kill()
        with self._cond:
            if not self._closed:
                self._retired.append((child, reader))
                self._cond.notify_all()
                return
        _reap(child, reader)

    def close(self) -> None:
        """Stop the keeper: the spare and every retired child are killed and reaped; idempotent.

        A no-op in a process forked from the keeper's: those children are its parent's to reap.
        """
        if self.pid != os.getpid():
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.ident != threading.get_ident():
            self._thread.join(timeout=_REAP_S)
        with self._cond:
            spare, self._spare = self._spare, None
            retired, self._retired = self._retired, []
        if spare is not None:
            retired.append((spare, None))
        for child, reader in retired:
            _reap(child, reader)

    def _work(self) -> bool:
        return self._closed or bool(self._retired) or (self._wanted and self._spare is None)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(self._work)
                if self._closed:
                    return
                make = self._wanted and self._spare is None
                self._wanted = False
                self._starting = make
                retired, self._retired = self._retired, []
            if make:
                self._make()
            for child, reader in retired:
                _reap(child, reader)

    def _make(self) -> None:
        child: ConverterChild | None = None
        try:
            child = self._start()
        except Exception as exc:  # noqa: BLE001 - no spare: the next task starts its own child
            log.warning("converter.spare_failed", error=repr(exc))
        with self._cond:
            self._starting = False
            if child is not None and self._closed:
                self._retired.append((child, None))  # close() reaps it
            else:
                self._spare = child
            self._cond.notify_all()
