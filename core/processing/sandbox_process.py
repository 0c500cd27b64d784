"""Starting, killing and reaping converter children: forked (POSIX) or spawned into a Job object (Windows).

:func:`fork_child` forks the worker: the child inherits the processor and its imports and runs
:func:`.sandbox_child.run_forked`. Each child closes the pipes of the other conversions running in this
process, so a pipe's only writer is its own child and its end means that child ended.
:func:`spawn_child` starts ``python -m morag_worker.core.processing.sandbox_child``, puts it in a Job
object before it has read anything, then sends its request as JSON on stdin. Both return a
:class:`ConverterChild` that :mod:`.sandbox` follows. Called on the task's thread.
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

from morag_worker.core.config.settings import ConverterLimits
from morag_worker.core.processing.base import Processor
from morag_worker.core.processing.sandbox_child import prepare, run_forked
from morag_worker.core.processing.winjob import JobObject

__all__ = [
    "SPAWN_BASELINE_BYTES",
    "ConversionRequest",
    "ConverterChild",
    "ExitStatus",
    "StartMethod",
    "default_start_method",
    "fork_child",
    "spawn_child",
]

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
    """A started converter child: its frame stream, and how to wait for it and to end it."""

    stream: IO[bytes]

    def wait(self, timeout: float | None) -> ExitStatus | None: ...

    def kill(self) -> None: ...

    def reached_memory_limit(self) -> bool: ...

    def close(self) -> None: ...


# Read ends of the pipes of conversions running in this process: a child forked by another thread
# closes them, so that each pipe's only writer is its own child and EOF means that child ended.
_fork_lock = threading.Lock()
_open_read_fds: set[int] = set()


class _ForkedChild:
    def __init__(self, pid: int, read_fd: int) -> None:
        self.pid = pid
        self._read_fd = read_fd
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
        with _fork_lock:
            _open_read_fds.discard(self._read_fd)
        self.stream.close()


class _SpawnedChild:
    def __init__(self, process: subprocess.Popen[bytes], job: JobObject | None) -> None:
        self._process = process
        self._job = job
        assert process.stdout is not None
        self.stream: IO[bytes] = process.stdout

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
        self.stream.close()
        if self._job is not None:
            self._job.close()


def fork_child(processor: Processor, request: ConversionRequest, limits: ConverterLimits) -> ConverterChild:
    """Fork a converter child that runs ``processor`` (inherited, not sent) under ``limits``."""
    prepare()
    with _fork_lock:
        read_fd, write_fd = os.pipe()
        others = sorted(_open_read_fds)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            run_forked(
                write_fd,
                others,
                processor,
                request.path,
                request.options,
                limits.memory_bytes,
                limits.max_output_bytes,
            )
        os.close(write_fd)
        _open_read_fds.add(read_fd)
    return _ForkedChild(pid, read_fd)


def spawn_child(
    request: ConversionRequest, limits: ConverterLimits, job_factory: Callable[[int], JobObject] | None
) -> ConverterChild:
    """Start ``python -m ...sandbox_child``, put it in a Job object (``job_factory``), send the request."""
    argv = [sys.executable, "-m", "morag_worker.core.processing.sandbox_child"]
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, creationflags=flags)
    job: JobObject | None = None
    try:
        if job_factory is not None:
            job = job_factory(limits.memory_bytes + SPAWN_BASELINE_BYTES)
            job.assign(process.pid)  # before the child reads its request, so before any input
        payload = {
            "path": str(request.path),
            "options": dict(request.options),
            "content_type": request.content_type,
            "filename": request.filename,
            "name_from_path": request.name_from_path,
            "memory_bytes": limits.memory_bytes,
            "max_output_bytes": limits.max_output_bytes,
            "limit_memory_here": job is None,
        }
        stdin: IO[bytes] | None = process.stdin
        assert stdin is not None
        stdin.write(json.dumps(payload, default=str).encode())
        stdin.close()
    except BaseException:
        process.kill()
        process.wait()
        if job is not None:
            job.close()
        raise
    return _SpawnedChild(process, job)
