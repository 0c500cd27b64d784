"""The converter child's side: limit its own memory, run one processor, report everything as frames.

Two ways in, both started before their request exists (perhaps long before: a spare, issue 14): each
limits itself, then blocks reading one JSON request to the end of its request pipe, converts that
one document and exits; a pipe that ends empty (the spare was not used) ends it quietly.
:func:`run_forked` runs in a child just forked from the worker (Linux, macOS) and uses the processor
object it inherited, named by its number in the request, so a start costs a fork and no imports.
:func:`main` (``python -m morag_worker.core.processing.sandbox_child LIMITS``) is the spawned child
(Windows, where the parent puts it in a Job object before sending its request; tests run it on Linux
too): it loads the default registry before its request arrives and resolves the processor from it.

Either way :func:`serve` calls the processor, relays its progress (throttled), and sends exactly one
final message: the result and its text, a ``ProcessingError``'s kind and message, the limit it hit,
or an unexpected exception's type and message. A ``MemoryError`` is reported after a small reserve is
freed, so that saying so does not itself fail. Runs on the child's only thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import json
import logging
import math
import mmap
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from morag_worker.core.processing.base import (
    CorruptInput,
    EmptyContent,
    OutputTooLarge,
    ProcessedContent,
    ProcessingError,
    Processor,
    ProgressFn,
    UnsupportedContent,
    WithOutputLimit,
)
from morag_worker.core.processing.sandbox_wire import (
    Crashed,
    Done,
    Failed,
    FrameWriter,
    Limit,
    LimitReached,
    Progress,
    WireError,
)

__all__ = [
    "ERROR_KINDS",
    "address_space_bytes",
    "limit_memory",
    "main",
    "prepare",
    "read_request",
    "run_forked",
    "serve",
    "stored_size",
]

if TYPE_CHECKING:
    from morag_worker.core.processing.registry import ProcessorRegistry

# The ProcessingError kinds that cross the pipe; a plugin's own subclass arrives as its nearest one.
ERROR_KINDS: dict[str, type[ProcessingError]] = {
    cls.__name__: cls for cls in (UnsupportedContent, CorruptInput, EmptyContent, ProcessingError)
}
PROGRESS_INTERVAL_S = 0.1
MAX_REQUEST_BYTES = 16 * 1024 * 1024
_RESERVE_BYTES = 4 * 1024 * 1024
_PR_SET_PDEATHSIG = 1
EXIT_OK = 0
EXIT_PARENT_GONE = 3
EXIT_UNUSED = 4  # a spare whose request pipe ended without a request
EXIT_BROKEN = 70


def address_space_bytes() -> int:
    """This process's virtual size (Linux ``/proc/self/statm``); 0 where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def limit_memory(extra_bytes: int) -> None:
    """Cap the address space at its present size plus ``extra_bytes`` (``RLIMIT_AS``; POSIX only)."""
    try:
        import resource
    except ImportError:  # Windows: the parent's Job object limits the child instead
        return
    limit = address_space_bytes() + extra_bytes
    with contextlib.suppress(ValueError, OSError):  # a platform without RLIMIT_AS enforcement
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def prepare() -> None:
    """In the worker, before the first fork: load what each child would otherwise load (about 4 ms)."""
    with contextlib.suppress(OSError, ImportError):
        _libc()
        import resource  # noqa: F401


def die_with_parent() -> None:
    """Linux: be killed when the worker process that started us dies (a killed pool child, a hard stop)."""
    with contextlib.suppress(OSError, AttributeError):
        if (libc := _libc()) is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _error_kind(exc: ProcessingError) -> str:
    for cls in type(exc).__mro__:
        if ERROR_KINDS.get(cls.__name__) is cls:
            return cls.__name__
    return ProcessingError.__name__


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class _ProgressRelay:
    """The processor's :data:`ProgressFn` in the child: sends a progress frame at most every 0.1 s."""

    def __init__(self, writer: FrameWriter, clock: Callable[[], float] = time.monotonic) -> None:
        self._writer = writer
        self._clock = clock
        self._last = float("-inf")

    def __call__(self, done: float, total: float | None, message: str) -> None:
        now = self._clock()
        done_f, total_f = _finite(done) or 0.0, _finite(total)
        final = total_f is not None and done_f >= total_f
        if not final and now - self._last < PROGRESS_INTERVAL_S:
            return
        self._last = now
        self._writer.message(Progress(done_f, total_f, str(message)))


def stored_size(text: str, chunk: int = 1 << 20) -> int:
    """Bytes ``text`` takes inside the stored result: JSON with ASCII escapes, as Celery writes it.

    Never less than its UTF-8 size (``ж`` is 2 bytes in UTF-8, 6 as ``\\u0436``); counted a slice at a
    time, so the count costs a megabyte or two, not a copy of the text.
    """
    return sum(len(json.dumps(text[i : i + chunk])) - 2 for i in range(0, len(text), chunk))


def _send_result(writer: FrameWriter, content: ProcessedContent, max_output_bytes: int) -> None:
    markdown = content.markdown
    if len(markdown) > max_output_bytes:  # at least one byte per character: over without counting
        writer.message(LimitReached(Limit.OUTPUT, len(markdown)))
        return
    # The limit is on what Redis stores and the hub serves, so a hub's cap a little above it always
    # passes a result the worker accepted; the UTF-8 sent on the pipe is never larger.
    if (size := stored_size(markdown)) > max_output_bytes:
        writer.message(LimitReached(Limit.OUTPUT, size))
        return
    data = markdown.encode("utf-8", "surrogatepass")
    try:
        writer.message(Done(len(data), dict(content.metadata)))
    except WireError:
        writer.message(LimitReached(Limit.OUTPUT, None))  # metadata over a megabyte
        return
    writer.content(data)


def serve(
    convert: Callable[[ProgressFn], ProcessedContent], writer: FrameWriter, max_output_bytes: int
) -> int:
    """Run ``convert`` with a relaying progress callback and send its one final message; the exit code."""
    # Address space held back, untouched (so free to take), and given up to report a MemoryError.
    reserve: mmap.mmap | None = mmap.mmap(-1, _RESERVE_BYTES)
    out_of_memory = False
    try:
        try:
            _send_result(writer, convert(_ProgressRelay(writer)), max_output_bytes)
        except MemoryError:
            out_of_memory = True  # reported below, once the frames holding the memory are gone
        except BrokenPipeError:
            return EXIT_PARENT_GONE
        except OutputTooLarge as exc:
            writer.message(LimitReached(Limit.OUTPUT, exc.size))
        except ProcessingError as exc:
            writer.message(Failed(_error_kind(exc), exc.message))
        except Exception as exc:  # noqa: BLE001 - any other failure is reported by type and message
            writer.message(Crashed(type(exc).__name__, str(exc)))
        if out_of_memory:
            if reserve is not None:
                reserve.close()
            gc.collect()
            writer.message(LimitReached(Limit.MEMORY))
    except BrokenPipeError:
        return EXIT_PARENT_GONE
    if reserve is not None and not reserve.closed:
        reserve.close()
    return EXIT_OK


def _reset_signals() -> None:
    for name in ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGALRM"):
        if (number := getattr(signal, name, None)) is not None:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(number, signal.SIG_DFL)


def read_request(read: Callable[[int], bytes]) -> dict[str, Any] | None:
    """The one JSON request, read to the end of its pipe; None when the pipe ended empty."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_REQUEST_BYTES and (chunk := read(1 << 16)):
        chunks.append(chunk)
        size += len(chunk)
    if not chunks:
        return None
    request = json.loads(b"".join(chunks)[:MAX_REQUEST_BYTES])
    if not isinstance(request, dict):
        raise ValueError("the request is not a JSON object")
    return request


def close_inherited(keep: Iterable[int]) -> None:
    """Close every descriptor from 3 up but ``keep``: a child may wait long for its request, and
    must not hold the ends of pipes and sockets that threads of the worker opened meanwhile
    (another child's, a ``Popen``'s), whose readers would then wait for it."""
    kept = set(keep)
    try:
        # The descriptors that are open: a container's limit may be a million, and closerange
        # falls back to one close(2) per number where close_range(2) is missing.
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        low = 3
        for fd in sorted(kept):
            if fd >= low:
                os.closerange(low, fd)
                low = fd + 1
        os.closerange(low, _max_fd())
        return
    for fd in open_fds:
        if fd >= 3 and fd not in kept:
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed already
                os.close(fd)


def fresh_std_streams() -> None:
    """New ``sys.stdout``/``sys.stderr`` (and logging's handlers on them) over fds 1 and 2.

    The spare is forked by the keeper's thread, often while the task's thread is writing a log
    line: the old stream's buffer lock is then held by a thread this child does not have, and
    the child's first warning would wait on it for ever.
    """
    out = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    err = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    replaced = {id(sys.stdout): out, id(sys.stderr): err, id(sys.__stdout__): out, id(sys.__stderr__): err}
    sys.stdout, sys.stderr = out, err
    for handler in [*logging.getLogger().handlers, *_all_logger_handlers()]:
        if isinstance(handler, logging.StreamHandler) and id(handler.stream) in replaced:
            handler.stream = replaced[id(handler.stream)]  # not setStream: it flushes the old one


def _all_logger_handlers() -> list[logging.Handler]:
    loggers = [
        value for value in logging.Logger.manager.loggerDict.values() if isinstance(value, logging.Logger)
    ]
    return [handler for logger in loggers for handler in logger.handlers]


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 65536


def run_forked(
    request_fd: int,
    write_fd: int,
    processors: Mapping[int, Processor],
    memory_bytes: int,
    max_output_bytes: int,
) -> None:
    """The body of a forked converter child; never returns (``os._exit``)."""
    code = EXIT_BROKEN
    try:
        gc.freeze()  # the parent's objects are never collected (nor finalised) here
        close_inherited((request_fd, write_fd))
        fresh_std_streams()
        _reset_signals()
        die_with_parent()
        limit_memory(memory_bytes)
        request = read_request(lambda n: os.read(request_fd, n))
        os.close(request_fd)
        if request is None:
            code = EXIT_UNUSED
            return
        processor = processors[int(request["processor"])]
        path = Path(str(request["path"]))
        limited = WithOutputLimit(request.get("options") or {}, max_output_bytes)
        writer = FrameWriter(lambda data: os.write(write_fd, data))
        code = serve(lambda progress: processor.process(path, limited, progress), writer, max_output_bytes)
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child
        code = EXIT_BROKEN
    finally:
        os._exit(code)


def _spawned_convert(
    registry: ProcessorRegistry, request: Mapping[str, Any], max_output_bytes: int
) -> Callable[[ProgressFn], ProcessedContent]:
    path = Path(str(request["path"]))
    options = WithOutputLimit(request.get("options") or {}, max_output_bytes)

    def convert(progress: ProgressFn) -> ProcessedContent:
        processor = registry.resolve(
            request.get("content_type"),
            request.get("filename"),
            path,
            name_from_path=bool(request.get("name_from_path", True)),
        )
        return processor.process(path, options, progress)

    return convert


def main(argv: list[str] | None = None) -> int:
    """The spawned converter child: its limits in ``argv``, one JSON request on stdin, frames on stdout."""
    settings = json.loads((sys.argv[1:] if argv is None else argv)[0])
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    try:
        errors = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no console (a windowed parent): print into nothing
        errors = os.open(os.devnull, os.O_WRONLY)
    os.dup2(errors, 1)  # whatever a parser prints cannot corrupt a frame
    die_with_parent()
    from morag_worker.core.processing.registry import ProcessorRegistry

    registry = ProcessorRegistry.default()  # while no request waits: a spare's imports cost no task
    max_output_bytes = int(settings["max_output_bytes"])
    if settings.get("limit_memory_here"):
        limit_memory(int(settings["memory_bytes"]))
    request = read_request(sys.stdin.buffer.read)
    if request is None:
        return EXIT_UNUSED
    writer = FrameWriter(channel.write)
    return serve(_spawned_convert(registry, request, max_output_bytes), writer, max_output_bytes)


if __name__ == "__main__":
    sys.exit(main())
