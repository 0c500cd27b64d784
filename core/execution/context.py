"""Per-process state of a worker: its role, its pipeline and the sinks of task progress.

Built lazily on first use inside the worker (after ``celeryd_init`` chose the role), so importing
the Celery app stays free of side effects. Prefork children inherit it when they fork.

The pipeline and the HTTP stack (requests: about 60 ms of CPU here, with the downloader and the
converters' plumbing 80 ms of a 400 ms start) are not needed to get ready, so they are imported
when the pipeline is first built: in each prefork pool process, on a warm-up thread that waits for
the main process's ``worker.ready`` (``warm_up``), so the first task finds them loaded and the
start does not pay for them.
"""

from __future__ import annotations

import importlib
import mmap
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from morag_worker.core.config.settings import ConverterLimits
from morag_worker.core.execution.celery_config import time_limits_from_env
from morag_worker.core.execution.health.hub_outage import ConsumerSwitch, OutageBoard
from morag_worker.core.execution.health.intake_gate import IntakeHold
from morag_worker.core.execution.progress_channel import ChannelWriter, summarize_metadata
from morag_worker.core.execution.progress_reporter import ProgressReporter, ProgressSink, SettledStates
from morag_worker.core.fork_guard import import_guard
from morag_worker.core.logging import register_secret
from morag_worker.core.processing import ProcessorRegistry, TaskCancelled
from morag_worker.core.processing.sandbox import ConverterSandbox, StartMethod, default_start_method
from morag_worker.core.results import ProgressMeta, TaskOutcome, TaskResult
from morag_worker.core.transfer.limits import DownloadLimits

if TYPE_CHECKING:
    import requests

    from morag_worker.core.execution.pipeline import Pipeline
    from morag_worker.core.transfer.downloader import Downloader

__all__ = ["NOT_STORED", "FinishedTask", "WorkerRuntime", "get_runtime"]

log = structlog.get_logger(__name__)

NOT_STORED = "The result could not be stored: {reason}"


@dataclass(frozen=True)
class FinishedTask:
    """A task that returned its result object, which Celery has yet to store."""

    outcome: TaskOutcome
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    processing_time: float | None = None


CONVERTER_START_ENV = "MORAG_CONVERTER_START"  # fork or spawn; tests run the spawn path on Linux
# A pool process warms up once the main process is ready, or after this long without hearing so.
WARM_UP_AFTER_S = 30.0


def _start_method(raw: str) -> StartMethod:
    if not raw:
        return default_start_method()
    try:
        return StartMethod(raw.lower())
    except ValueError:
        choices = " or ".join(m.value for m in StartMethod)
        raise ValueError(f"{CONVERTER_START_ENV} must be {choices}, not {raw[:40]!r}") from None


class WorkerRuntime:
    """The worker's role and collaborators, configured once from the environment."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env if env is not None else os.environ
        self.own_user_id: str | None = None
        self.hub_url = self._env.get("MAIN_SERVER_URL") or None
        self.api_key = self._env.get("MORAG_API_KEY") or None
        register_secret(self.api_key)
        # Read once, so a bad value stops the worker at start-up rather than failing every task.
        self.download_limits = download_limits(self._env)
        self.converter_limits = ConverterLimits.from_env(self._env)
        self.converter_start = _start_method(self._env.get(CONVERTER_START_ENV, "").strip())
        self.cancel_event = threading.Event()
        # Shared with the pool processes forked later: downloads mark hub outages, the main
        # process pauses its consumer meanwhile (hub_outage.py).
        self.hub_board = OutageBoard()
        self.intake = IntakeHold()  # main process: why no new task is taken (intake_gate.py)
        self.consumer_switch = ConsumerSwitch()  # the consumer's thread: the queues the gates paused
        self.extra_sinks: list[ProgressSink] = []
        # The supervisor's progress channel (MORAG_PROGRESS_FD), when one was handed down.
        self.channel: ChannelWriter | None = ChannelWriter.from_env(self._env)
        if self.channel is not None:
            self.extra_sinks.append(self.channel.progress_sink)
        self._pipeline: Pipeline | None = None
        self._sandbox: ConverterSandbox | None = None
        self._sandbox_pid = 0
        self._downloaders = threading.local()
        self._states: SettledStates | None = None
        self._lock = threading.Lock()
        # Set by the main process once it is ready (``announce_ready``); shared memory,
        # so that prefork pool processes, forked before, see it too (``warm_up``).
        self._ready = _SharedFlag()
        self._warming_in: int | None = None  # the process id whose warm-up thread was started
        # Tasks that returned, until their result is stored (pool process; one per running task).
        self._unstored: dict[str, FinishedTask] = {}

    def configure(self, *, own_user_id: str | None) -> None:
        self.own_user_id = own_user_id
        self._pipeline = None

    @property
    def temp_root(self) -> Path:
        configured = self._env.get("TEMP_DIR")
        return Path(configured) if configured else Path(tempfile.gettempdir()) / "morag-worker"

    def pipeline(self) -> Pipeline:
        with self._lock:
            sandbox = self._converters()
            if self._pipeline is None:
                from morag_worker.core.execution.pipeline import Pipeline

                self._pipeline = Pipeline(
                    downloader_factory=self._downloader,
                    registry=ProcessorRegistry.default(),
                    temp_root=self.temp_root,
                    own_user_id=self.own_user_id,
                    cancel_event=self.cancel_event,
                    sandbox=sandbox,
                )
            return self._pipeline

    def warm_up(self) -> threading.Thread | None:
        """Build the pipeline on a thread once the worker is ready, before its first task here.

        For the process that runs tasks: a prefork pool process (``worker_process_init``), the solo
        pool's or the Windows wrapper's main process. Waiting for ready keeps the work off the way
        there (the main process and the pool process share the cores). A task that comes first
        builds the pipeline itself, or waits on the lock for this thread to finish it. Once per
        process; returns the thread, or None when one was already started here.
        """
        with self._lock:
            if self._warming_in == os.getpid():
                return None
            self._warming_in = os.getpid()

        def run() -> None:
            self._ready.wait(WARM_UP_AFTER_S)
            try:
                # Only the imports under the guard (a fork meanwhile waits for them): building the
                # pipeline loads plugins, whose code may itself fork, or take this runtime's lock.
                with import_guard():
                    importlib.import_module("morag_worker.core.execution.pipeline")
                    importlib.import_module("morag_worker.core.transfer.downloader")
                self.pipeline()
            except Exception as exc:  # noqa: BLE001 - the first task builds it again and reports
                log.warning("worker.warm_up_failed", error=repr(exc))

        thread = threading.Thread(target=run, name="morag-warm-up", daemon=True)
        thread.start()
        return thread

    def _converters(self) -> ConverterSandbox:
        """This process's converter sandbox (a pool process forked from this one makes its own)."""
        if self._sandbox is None or self._sandbox_pid != os.getpid():
            self._sandbox = ConverterSandbox(self.converter_limits, self.converter_start, spare=True)
            self._sandbox_pid = os.getpid()
            self._pipeline = None
        return self._sandbox

    def warm_converters(self) -> None:
        """Start the spare converter child (on its keeper's thread) where this process runs tasks.

        Called when a pool process starts, or once the worker is ready where tasks run in the main
        process, so a task does not wait for a converter child and the worker's readiness does not
        wait for the spare.
        """
        with self._lock:
            sandbox = self._converters()
        sandbox.start_spare()

    def close_converters(self) -> None:
        """Kill and reap the spare converter child (the worker or pool process is stopping)."""
        with self._lock:
            sandbox = self._sandbox if self._sandbox_pid == os.getpid() else None
        if sandbox is not None:
            sandbox.close()

    def _downloader(self) -> Downloader:
        """This process's and thread's downloader, whose connections to the hub stay open between tasks.

        A new connection per task cost 5.9 ms against 1.3 ms on a kept one (issue 14). The session
        is never shared across a fork (keyed by the process id: a pool process forked from the
        main one makes its own) nor between threads (the threads pool runs tasks side by side).
        Its ``close`` leaves the session open; a connection the hub closed meanwhile is found
        dropped when it is taken from the pool and replaced (urllib3), so outages are seen as before.
        """
        local = self._downloaders
        if getattr(local, "pid", None) != os.getpid():
            from morag_worker.core.transfer.downloader import Downloader

            local.pid = os.getpid()
            local.downloader = Downloader(
                session=hub_session(),
                limits=self.download_limits,
                hub_origin=self.hub_url,
                api_key=self.api_key,
                outage=self.hub_board,
            )
        downloader: Downloader = local.downloader
        return downloader

    def reporter(self, task: Any) -> ProgressReporter:
        """A progress reporter that updates the task's state in the result backend once it has
        lasted long enough for a person to see it (:class:`SettledStates`), and the local channel
        at once."""
        task_id = str(task.request.id)
        with self._lock:
            if self._states is None:
                backend = task.backend

                def write(tid: str, meta: ProgressMeta) -> None:
                    backend.store_result(tid, meta.to_dict(), meta.stage)

                self._states = SettledStates(write)
            states = self._states
        return ProgressReporter(task_id, self.extra_sinks, checkpoint=self.checkpoint, latest=[states])

    def task_states_settled(self, task_id: str | None) -> None:
        """The task is over: no progress state of it is written after this (its result comes next)."""
        if self._states is not None and task_id:
            self._states.discard(task_id)

    def checkpoint(self) -> None:
        """Raise the cancellation error when the contributor asked to stop now."""
        if self.cancel_event.is_set():
            raise TaskCancelled("stopped by the contributor")

    def task_started(self, task_id: str | None, *, name: str, filename: str | None = None) -> None:
        """Hook for the local progress channel when a task starts (runs in the pool process)."""
        if self.channel is not None and task_id:
            self.channel.send("task_start", task_id=task_id, name=name, filename=filename)

    def task_finished(
        self,
        task_id: str | None,
        outcome: TaskOutcome | None = None,
        *,
        error: str | None = None,
        metadata: dict[str, Any] | None = None,
        processing_time: float | None = None,
    ) -> None:
        """Hook for the local progress channel when a task ends (runs in the pool process)."""
        if self.channel is not None and task_id and outcome is not None:
            self.channel.send(
                "task_end",
                task_id=task_id,
                outcome=outcome.value,
                error=error,
                metadata=summarize_metadata(metadata),
                processing_time=processing_time,
            )

    def result_returned(self, task_id: str | None, finished: FinishedTask) -> None:
        """A task returned its result: nothing is reported until Celery has stored it."""
        if task_id:
            with self._lock:
                self._unstored[task_id] = finished

    def result_stored(self, task_id: str | None) -> None:
        """Celery stored the result: now the task is done, as its result says."""
        with self._lock:
            finished = self._unstored.pop(task_id, None) if task_id else None
        if finished is None:
            return
        log.info(
            "task.done",
            task_id=task_id,
            success=finished.outcome is TaskOutcome.SUCCEEDED,
            seconds=finished.processing_time,
        )
        self.task_finished(
            task_id,
            finished.outcome,
            error=finished.error,
            metadata=finished.metadata,
            processing_time=finished.processing_time,
        )

    def result_not_stored(self, task_id: str | None, exc: BaseException | None) -> None:
        """Storing the result failed (the backend raised after its retries): the task failed.

        A no-op for a task with no result waiting to be stored (it raised, and said so itself).
        """
        with self._lock:
            finished = self._unstored.pop(task_id, None) if task_id else None
        if finished is None:
            return
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
        error = NOT_STORED.format(reason=reason[:500])
        log.error("task.result_not_stored", task_id=task_id, error=error)
        self.task_finished(
            task_id,
            TaskOutcome.FAILED,
            error=error,
            metadata=finished.metadata,
            processing_time=finished.processing_time,
        )

    def announce_ready(self, *, hostname: str | None, queues: list[str], config: dict[str, Any]) -> None:
        """Tell the supervisor that the consumer is ready (runs in the worker's main process)."""
        self._ready.set()  # the pool processes' warm-up may start
        if self.channel is not None:
            self.channel.send("ready", hostname=hostname or "", queues=queues, config=config)

    def refuse_local(self, task_id: str | None, task_name: str) -> dict[str, Any]:
        log.warning("task.refused_local", task_id=task_id, task=task_name)
        return TaskResult.failure(
            f"{task_name} reads files on the worker's own machine and is not accepted by a "
            "contributor's worker; send the _remote task instead",
            user_id=self.own_user_id,
        ).to_dict()


class _SharedFlag:
    """One byte of memory shared with the pool processes forked after it was made: set by the
    main process, polled by theirs. Not a ``multiprocessing.Event``, whose ``set`` waits until
    every waiter has woken, and so for ever once a pool process died while waiting."""

    POLL_S = 0.05

    def __init__(self) -> None:
        self._byte = mmap.mmap(-1, 1)

    def set(self) -> None:
        self._byte[0] = 1

    def is_set(self) -> bool:
        return self._byte[0] == 1

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_set() and time.monotonic() < deadline:
            time.sleep(self.POLL_S)
        return self.is_set()


def hub_session() -> requests.Session:
    """A session kept for the life of a worker process: one pooled connection per host it talks to."""
    import requests

    return requests.Session()


def download_limits(env: Mapping[str, str]) -> DownloadLimits:
    """The download limits of ``env``, the deadline within the task's soft time limit.

    A download that waits for a hub outage must end (its task requeued) before Celery's soft
    time limit would fail the task instead.
    """
    limits = DownloadLimits.from_env(env)
    budget = 0.9 * time_limits_from_env(env).soft
    return replace(limits, deadline_s=budget) if limits.deadline_s > budget else limits


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> WorkerRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = WorkerRuntime()
        return _runtime
