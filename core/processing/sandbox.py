"""Converters run in a child process with limits, so a hostile file cannot exhaust the worker (issue 10).

:meth:`ConverterSandbox.convert` starts one converter child per conversion and follows it:

- **memory**: the child caps itself with ``RLIMIT_AS`` at its starting size plus the limit (Linux;
  :mod:`.sandbox_child`); on Windows the parent puts it in a Job object first (:mod:`.winjob`);
- **wall time**: the parent kills the child when the deadline passes;
- **output**: the child refuses to send text over the limit, and the parent refuses to read more;
- **progress** from the child goes to the caller's :data:`ProgressFn`; when that raises (the
  contributor pressed "Stop now"), the child is killed and the exception propagates;
- **errors**: a ``ProcessingError`` arrives as the same kind with the same message, anything else as
  :class:`ConverterCrashed`. Only small typed messages cross (:mod:`.sandbox_wire`): nothing is unpickled.

Starting (:mod:`.sandbox_process`): ``fork`` on POSIX (a few milliseconds: the child inherits the
worker's imports; :meth:`convert` imports the processor's parser in the worker first, once, so no
child pays for it), ``spawn`` on Windows (``python -m morag_worker.core.processing.sandbox_child``,
in a Job object). With ``spare=True`` (the worker's sandbox) a **spare** child is started ahead of
need (issue 14): when :meth:`start_spare` is called, and again after each conversion, the keeper's
thread starts a child that limits itself and waits for a request. A conversion hands its request to
the spare when it is alive, has this sandbox's present limits and knows the processor (a forked spare
knows those registered before it was forked); otherwise it starts its own child as before. The
deadline runs from the request's sending. Each child still converts one document and exits; used
children are killed and reaped on the keeper's thread, off the task's path; :meth:`close` (or the
sandbox's collection) ends the spare. The parent never holds more than the capped text. Processors
that must keep state between tasks (the Whisper model on a GPU) declare ``isolated = False`` and run
in-process as before. Runs on the calling task's thread, plus one reader thread per conversion and
the spare keeper's thread.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import structlog

from morag_worker.core.config.settings import ConverterLimits
from morag_worker.core.fork_guard import import_guard
from morag_worker.core.processing.base import (
    ProcessedContent,
    ProcessingError,
    Processor,
    ProgressFn,
    TaskCancelled,
)
from morag_worker.core.processing.sandbox_child import ERROR_KINDS
from morag_worker.core.processing.sandbox_process import (
    SPAWN_BASELINE_BYTES,
    ConversionRequest,
    ConverterChild,
    ExitStatus,
    SpareKeeper,
    StartMethod,
    default_start_method,
    fork_child,
    request_payload,
    spawn_child,
)
from morag_worker.core.processing.sandbox_wire import (
    ChildMessage,
    Content,
    Crashed,
    Done,
    Failed,
    Limit,
    LimitReached,
    Progress,
    WireError,
    read_frame,
)
from morag_worker.core.processing.winjob import JobObject, windows_kernel32

__all__ = [
    "SPAWN_BASELINE_BYTES",
    "ConversionRequest",
    "ConverterCrashed",
    "ConverterLimitReached",
    "ConverterSandbox",
    "ExitStatus",
    "StartMethod",
    "default_start_method",
]

log = structlog.get_logger(__name__)

_POLL_S = 0.25
_REAP_S = 5.0
_SPARE_WAIT_S = 5.0  # for a spare being started (a fork, a Popen): sooner than starting another
_QUEUE_FRAMES = 16


class ConverterLimitReached(ProcessingError):
    """The conversion hit one of the converter's limits; ``message`` names it."""

    def __init__(self, limit: Limit, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class ConverterCrashed(ProcessingError):
    """The converter child failed in a way that is not the input's ``ProcessingError``."""


_EOF = object()


def _read_frames(stream: IO[bytes], max_content: int, out: queue.Queue[Any], stop: threading.Event) -> None:
    """The reader thread: frames (or the WireError, or _EOF) into ``out`` until the stream ends."""

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    try:
        while (frame := read_frame(stream, max_content)) is not None:
            if not put(frame):
                return
    except WireError as exc:
        put(exc)
        return
    except (OSError, ValueError):  # the stream was closed under us
        pass
    put(_EOF)


def _mb(n: float) -> str:
    return f"{n / (1024 * 1024):,.0f}" if n >= 1024 * 1024 else f"{n / (1024 * 1024):,.2g}"


@dataclass
class ConverterSandbox:
    """Converts files in converter children under ``limits`` (see the module docstring).

    Args:
        limits: Memory, wall time and output size of one conversion.
        start: ``fork`` (POSIX) or ``spawn`` (Windows; any platform in tests).
        job_factory: Windows: makes the Job object of a spawned child from its memory limit in bytes.
        clock: Monotonic seconds (tests pass a fake).
        spare: Keep a child started ahead of need, until :meth:`close` (the worker's sandbox does);
            False: each conversion starts its own child and nothing outlives it.
    """

    limits: ConverterLimits = field(default_factory=ConverterLimits)
    start: StartMethod = field(default_factory=default_start_method)
    job_factory: Callable[[int], JobObject] | None = None
    clock: Callable[[], float] = time.monotonic
    spare: bool = False
    _processors: dict[int, Processor] = field(default_factory=dict, repr=False)  # number -> processor
    _numbers: dict[int, int] = field(default_factory=dict, repr=False)  # id(processor) -> number
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _keeper: SpareKeeper | None = field(default=None, repr=False)
    _keeper_start: StartMethod | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.job_factory is None and sys.platform == "win32":
            self.job_factory = lambda limit: JobObject(windows_kernel32(), limit)

    def start_spare(self) -> None:
        """Start the spare child now, on the keeper's thread (the task's thread does not wait).

        A forked spare knows only the processors converted before it was forked, so none is
        forked before the first conversion: it would only be thrown away.
        """
        if (keeper := self._spare_keeper()) is None:
            return
        with self._lock:
            useful = self.start is StartMethod.SPAWN or bool(self._processors)
        if useful:
            keeper.refill()

    def spare_ready(self, timeout: float) -> bool:
        """Whether a spare child is waiting, or comes within ``timeout`` seconds (benches, tests)."""
        keeper = self._spare_keeper()
        return keeper is not None and keeper.ready(timeout)

    def close(self) -> None:
        """Kill and reap the spare and the used children not yet reaped (the worker is stopping)."""
        with self._lock:
            keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.close()

    def convert(
        self,
        processor: Processor,
        request: ConversionRequest,
        progress: ProgressFn,
        cancel: threading.Event | None = None,
    ) -> ProcessedContent:
        """Run ``processor`` on ``request.path`` in a converter child (in-process if not ``isolated``).

        ``cancel``, when set, stops the conversion within a quarter of a second even while the child
        reports nothing (a long page): the child is killed and :class:`TaskCancelled` raised.

        Raises:
            ProcessingError: The input's fault, as the processor raised it (same kind, same message).
            ConverterLimitReached: A limit was hit; the message names it.
            ConverterCrashed: The child failed otherwise, or sent something it should not.
            Exception: Whatever ``progress`` raised (``TaskCancelled``); the child is killed first.
        """
        if not getattr(processor, "isolated", True):
            return processor.process(request.path, request.options, progress)
        number = self._register(processor)
        payload = request_payload(request, number)
        keeper = self._spare_keeper()
        child = self._take_spare(keeper, number)
        started = self.clock()
        if child is not None and not child.send(payload):
            if keeper is not None:
                keeper.retire(child)
            child = None
        if child is None:
            child = self._start_child()
            started = self.clock()
            child.send(payload)  # a child that died at once is reported when its pipe ends
        try:
            return self._follow(child, progress, started, cancel, keeper)
        except ConverterLimitReached as exc:
            log.warning("converter.limit_reached", limit=exc.limit.value, processor=processor.name)
            raise
        finally:
            if keeper is None:
                child.close()
            else:
                keeper.refill()

    def _register(self, processor: Processor) -> int:
        """The processor's number, which a forked child finds it by; its parser imported here first.

        Importing the parser once here means that no forked child imports it again.
        """
        with self._lock:
            number = self._numbers.get(id(processor))
            if number is not None and self._processors[number] is processor:
                return number
        preload = getattr(processor, "preload", None)
        if self.start is StartMethod.FORK and callable(preload):
            try:
                with import_guard():  # the keeper's thread may fork a spare meanwhile: it waits
                    preload()
            except Exception as exc:  # noqa: BLE001 - the child will meet (and report) the same error
                log.info("converter.preload_failed", processor=processor.name, error=repr(exc))
        with self._lock:
            number = len(self._processors) + 1
            self._processors[number] = processor  # kept: its id is never another processor's
            self._numbers[id(processor)] = number
        return number

    def _start_child(self) -> ConverterChild:
        if self.start is StartMethod.FORK:
            with self._lock:
                processors = dict(self._processors)
            return fork_child(self.limits, processors)
        return spawn_child(self.limits, self.job_factory)

    def _spare_keeper(self) -> SpareKeeper | None:
        """This process's keeper for the present start method (a forked worker makes its own)."""
        if not self.spare:
            return None
        with self._lock:
            keeper = self._keeper
            if keeper is not None and keeper.pid == os.getpid() and self._keeper_start is self.start:
                return keeper
            self._keeper = SpareKeeper(self._spare_starter())
            self._keeper_start = self.start
            weakref.finalize(self, self._keeper.close)  # a sandbox dropped unclosed leaves no spare
        if keeper is not None:
            keeper.close()  # the start method changed (a keeper inherited from a parent does nothing)
        return self._keeper

    def _spare_starter(self) -> Callable[[], ConverterChild]:
        """What the keeper's thread calls to start a spare: it holds the sandbox only weakly."""
        sandbox = weakref.ref(self)

        def start() -> ConverterChild:
            if (alive := sandbox()) is None:
                raise RuntimeError("the converter sandbox is gone")
            return alive._start_child()

        return start

    def _take_spare(self, keeper: SpareKeeper | None, number: int) -> ConverterChild | None:
        if keeper is None:
            return None

        def usable(child: ConverterChild) -> bool:
            known = child.processors is None or number in child.processors
            return known and child.limits == self.limits

        return keeper.take(usable, _SPARE_WAIT_S)

    def _follow(
        self,
        child: ConverterChild,
        progress: ProgressFn,
        started: float,
        cancel: threading.Event | None = None,
        keeper: SpareKeeper | None = None,
    ) -> ProcessedContent:
        """Read the child's frames until its result, a limit or its end; ``keeper`` then reaps it."""
        frames: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_FRAMES)
        stop = threading.Event()
        reader = threading.Thread(
            target=_read_frames,
            args=(child.stream, self.limits.max_output_bytes, frames, stop),
            name="morag-converter-reader",
            daemon=True,
        )
        reader.start()
        deadline = started + self.limits.deadline_s
        announced: Done | None = None
        try:
            while True:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    child.kill()
                    raise self._time_limit()
                if cancel is not None and cancel.is_set():
                    child.kill()
                    raise TaskCancelled("stopped by the contributor")
                try:
                    item = frames.get(timeout=min(remaining, _POLL_S))
                except queue.Empty:
                    continue
                if item is _EOF:
                    break
                if isinstance(item, WireError):
                    raise ConverterCrashed(
                        f"The converter sent something this worker does not accept ({item})."
                    )
                if isinstance(item, Content):
                    return self._content(announced, item)
                if announced is not None:
                    raise ConverterCrashed("The converter sent a message where its text was expected.")
                if isinstance(item, Progress):
                    progress(item.done, item.total, item.message)  # may raise: "Stop now"
                elif isinstance(item, Done):
                    announced = item
                else:
                    raise self._final_error(item)
            raise self._died(child, deadline)
        finally:
            stop.set()
            if keeper is not None:
                keeper.retire(child, reader)  # killed now, reaped off this thread
            else:
                child.kill()
                reader.join(timeout=_REAP_S)

    def _content(self, announced: Done | None, item: Content) -> ProcessedContent:
        if announced is None or len(item.data) != announced.content_bytes:
            raise ConverterCrashed("The converter sent text it had not announced.")
        try:
            markdown = item.data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise ConverterCrashed("The converter sent text that is not UTF-8.") from None
        return ProcessedContent(markdown=markdown, metadata=announced.metadata)

    def _final_error(self, message: ChildMessage) -> ProcessingError:
        if isinstance(message, Failed):
            return ERROR_KINDS.get(message.error, ProcessingError)(message.message)
        if isinstance(message, LimitReached):
            if message.limit is Limit.MEMORY:
                return self._memory_limit()
            return self._output_limit(message.size)
        assert isinstance(message, Crashed)
        detail = f"{message.error_type}: {message.message}" if message.message else message.error_type
        return ConverterCrashed(f"The converter failed unexpectedly ({detail}).")

    def _died(self, child: ConverterChild, deadline: float) -> ProcessingError:
        status = child.wait(max(0.0, min(deadline - self.clock(), _REAP_S)))
        if status is None:  # it closed its pipe but lives on
            child.kill()
            status = child.wait(None) or ExitStatus()
        log.warning("converter.died", status=status.describe())
        if child.reached_memory_limit():
            return self._memory_limit()
        if status.signal is not None and status.signal == getattr(signal, "SIGKILL", None):
            return ConverterCrashed(
                "The converter was killed by the system before it finished (SIGKILL), most likely because "
                "the machine ran out of memory."
            )
        return ConverterCrashed(
            f"The converter stopped unexpectedly ({status.describe()}); the file may be damaged in a way "
            "that crashes its parser."
        )

    def _memory_limit(self) -> ConverterLimitReached:
        return ConverterLimitReached(
            Limit.MEMORY,
            f"The conversion needed more than {self.limits.memory_mb:,} MB of memory, this worker's limit "
            "for one document (MORAG_CONVERTER_MEMORY_MB).",
        )

    def _time_limit(self) -> ConverterLimitReached:
        return ConverterLimitReached(
            Limit.TIME,
            f"The conversion took longer than {self.limits.deadline_s:,g} s, this worker's limit for one "
            "document (MORAG_CONVERTER_DEADLINE_S).",
        )

    def _output_limit(self, size: int | None) -> ConverterLimitReached:
        produced = f" ({_mb(size)} MB)" if size and _mb(size) != _mb(self.limits.max_output_bytes) else ""
        return ConverterLimitReached(
            Limit.OUTPUT,
            f"The conversion produced output larger than {_mb(self.limits.max_output_bytes)} MB{produced}, "
            "this worker's limit for one document (MORAG_MAX_OUTPUT_MB).",
        )
