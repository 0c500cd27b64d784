"""``WorkerController``: the GUI's only door to the worker.

It wraps a supervisor (the core ``Supervisor`` in production, a fake in tests: anything with the
``SupervisorLike`` methods), hands it a listener, and re-emits the listener's calls, which arrive
on the supervisor's own threads, as Qt signals on the GUI thread. Its slots (start, finish,
stop_now, snooze, quit) call the supervisor through a serial ``BackgroundRunner``, so a blocking
call never freezes the GUI and calls keep their order; an exception becomes ``failed(str)``.

It also keeps what views need to know about the worker: the last status, the tasks in flight,
and which states the user asked for (so an unrequested change can be notified).

Lives on the GUI thread; the listener it gives the supervisor may be called from any thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import structlog
from PySide6.QtCore import QObject, QTimer, Signal, Slot

from morag_worker.core.diagnosis.selftest import SelfTestSetup, run_self_test
from morag_worker.core.results import TaskOutcome, TaskRecord
from morag_worker.core.supervisor.events import (
    StopMode,
    SupervisorListener,
    TaskProgress,
    WorkerState,
    WorkerStatus,
)
from morag_worker.core.wording import error_words, sentence

from .background import BackgroundRunner
from .qt_emit import emit, emit_steals_true
from .state_presentation import PRESENTATION

__all__ = ["IDLE_STATES", "SupervisorFactory", "SupervisorLike", "WorkerController"]

log = structlog.get_logger(__name__)

#: States in which no worker child runs and none starts on its own: quitting needs no stop first.
IDLE_STATES = frozenset(state for state, shown in PRESENTATION.items() if shown.idle)
#: How long "hand the task back now" may take before the supervisor is told to kill.
HAND_BACK_DEADLINE_MS = 30_000


class SupervisorLike(Protocol):
    """What the controller needs from a supervisor (``morag_worker.core.supervisor.Supervisor``)."""

    def start(self) -> None: ...

    def stop(self, mode: StopMode) -> None: ...

    def snooze(self, until: float | None) -> None: ...

    def close(self) -> None: ...


#: Builds a supervisor that reports to the given listener.
SupervisorFactory = Callable[[SupervisorListener], SupervisorLike]


class _Relay(QObject):
    """The ``SupervisorListener`` handed to the supervisor; emits on whichever thread calls it.

    Its signals are connected to the controller's slots, which live on the GUI thread, so Qt
    queues each call there.
    """

    status = Signal(object)  #: WorkerStatus
    progress = Signal(object)  #: TaskProgress
    finished = Signal(object)  #: TaskRecord
    log = Signal(str)

    def on_status(self, status: WorkerStatus) -> None:
        emit(self.status, status)

    def on_progress(self, progress: TaskProgress) -> None:
        emit(self.progress, progress)

    def on_task_finished(self, record: TaskRecord) -> None:
        emit(self.finished, record)

    def on_log(self, line: str) -> None:
        emit(self.log, line)


class WorkerController(QObject):
    """Wraps a supervisor and speaks Qt signals, on the GUI thread.

    Args:
        factory: Builds the supervisor, given the listener to report to. Called once, here.
        clock: Epoch seconds, for snooze deadlines.
        parent: The owning QObject.
    """

    #: The supervisor's new status (WorkerStatus).
    state_changed = Signal(object)
    #: A task's progress (TaskProgress).
    task_progress = Signal(object)
    #: A task ended (TaskRecord).
    task_finished = Signal(object)
    #: A line of the worker's log.
    log_line = Signal(str)
    #: A request to the supervisor failed; a sentence for a person.
    failed = Signal(str)
    #: After ``quit``: the supervisor is closed; the app may exit.
    closed = Signal()
    #: The report of ``run_self_test`` (``SelfTestReport``).
    self_test_done = Signal(object)
    _self_test_runner: BackgroundRunner | None = None

    def __init__(
        self,
        factory: SupervisorFactory,
        *,
        clock: Callable[[], float] = time.time,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        emit_steals_true()  # measure the binding's emit bug here, on the GUI thread, before any thread emits
        self._clock = clock
        self._runner = BackgroundRunner(self, max_threads=1, name="supervisor")
        self._relay = _Relay(self)
        self._relay.status.connect(self._on_status)
        self._relay.progress.connect(self._on_progress)
        self._relay.finished.connect(self._on_finished)
        self._relay.log.connect(self.log_line)
        self._status = WorkerStatus(WorkerState.STOPPED, "Stopped")
        self._tasks: dict[str, TaskProgress] = {}
        self._expected: frozenset[WorkerState] = frozenset({WorkerState.STOPPED})
        self._quit_mode: StopMode | None = None
        self._quitting = False
        self._closed = False
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._hand_back_too_slow)
        self._supervisor = factory(self._relay)

    def run_self_test(self, setup: SelfTestSetup) -> None:
        """Run the core self-test off the GUI thread, beside the supervisor's calls rather than queued
        behind them (it takes seconds: keychain, HTTP, Redis, a conversion); the report arrives as
        ``self_test_done``, a crash of the test itself as ``failed``."""
        if self._self_test_runner is None:
            self._self_test_runner = BackgroundRunner(self, max_threads=1, name="self-test")
        self._self_test_runner.submit(
            lambda: run_self_test(setup),
            on_success=lambda report: emit(self.self_test_done, report),
            on_failure=lambda exc: self._report_failure("run the self-test", exc),
            label="self_test",
        )

    # -- what views read ---------------------------------------------------------------------

    @property
    def status(self) -> WorkerStatus:
        """The last status the supervisor reported."""
        return self._status

    @property
    def tasks(self) -> dict[str, TaskProgress]:
        """The tasks in flight, by id, with their latest progress."""
        return dict(self._tasks)

    @property
    def busy(self) -> bool:
        """Whether a task is in flight."""
        return bool(self._tasks)

    @property
    def quitting(self) -> bool:
        """Whether ``quit`` was called."""
        return self._quitting

    def expected(self, state: WorkerState) -> bool:
        """Whether the user's last request leads to ``state`` (False for CRASHED and BACKOFF)."""
        return state in self._expected

    # -- requests ----------------------------------------------------------------------------

    @Slot()
    def start(self) -> None:
        """Start working (or resume from a snooze)."""
        self._expect(WorkerState.STARTING, WorkerState.RUNNING)
        self._call("start the worker", self._supervisor.start)

    @Slot()
    def finish(self) -> None:
        """Finish the current task, take no new one, then stop."""
        self._expect(WorkerState.FINISHING, WorkerState.STOPPED)
        self._call("pause after the current task", lambda: self._supervisor.stop(StopMode.FINISH))

    @Slot()
    def stop_now(self) -> None:
        """Stop at once; the current task goes back to the queue."""
        self._expect(WorkerState.STOPPING, WorkerState.STOPPED)
        self._call("stop the worker", lambda: self._supervisor.stop(StopMode.NOW))

    @Slot()
    def restart(self) -> None:
        """Finish the task in flight (none is lost), then start again with the settings saved since."""
        self._expect(WorkerState.FINISHING, WorkerState.STARTING, WorkerState.RUNNING)
        supervisor = self._supervisor

        def restart() -> None:
            supervisor.stop(StopMode.FINISH)
            supervisor.start()  # the supervisor starts again once the child has exited

        self._call("restart the worker", restart)

    @Slot(object)
    def snooze(self, until: float | None) -> None:
        """Pause until ``until`` (epoch seconds), or until the user resumes when None."""
        self._expect(WorkerState.SNOOZED, WorkerState.FINISHING, WorkerState.STOPPING, WorkerState.STOPPED)
        self._call("snooze the worker", lambda: self._supervisor.snooze(until))

    def snooze_for(self, seconds: float) -> None:
        """Pause for ``seconds`` from now."""
        self.snooze(self._clock() + seconds)

    @Slot(object)
    def quit(self, mode: StopMode | None = None) -> None:
        """Stop the worker the way ``mode`` says, close the supervisor, then emit ``closed``.

        With the worker idle (stopped, crashed or snoozed) the supervisor is closed at once.
        Otherwise ``stop(mode)`` (NOW when None) comes first and ``close`` follows when the
        supervisor reports an idle state. Handing back (NOW) escalates to KILL after
        ``HAND_BACK_DEADLINE_MS``; finishing (FINISH) waits as long as the task takes. Calling
        ``quit(StopMode.NOW)`` while finishing hands the task back instead.
        """
        mode = mode or StopMode.NOW
        first = not self._quitting
        self._quitting = True
        self._quit_mode = mode
        log.info("gui.quit_requested", mode=mode.value, state=self._status.state.value, busy=self.busy)
        if self._status.state in IDLE_STATES and not self._tasks:
            self._close()
            return
        if not first and mode is StopMode.FINISH:
            return
        self._expect(WorkerState.FINISHING, WorkerState.STOPPING, WorkerState.STOPPED)
        self._call("stop the worker", lambda: self._supervisor.stop(mode))
        if mode is not StopMode.FINISH:
            self._kill_timer.start(HAND_BACK_DEADLINE_MS)

    # -- internals ---------------------------------------------------------------------------

    def _expect(self, *states: WorkerState) -> None:
        self._expected = frozenset(states)

    def _call(self, doing: str, call: Callable[[], object]) -> None:
        self._runner.submit(
            call,
            on_failure=lambda exc: self._report_failure(doing, exc),
            label=doing,
        )

    def _report_failure(self, doing: str, exc: Exception) -> None:
        message = sentence(f"Could not {doing}: {str(exc) or error_words(exc)}")
        log.error("gui.supervisor_call_failed", doing=doing, error=f"{exc.__class__.__name__}: {exc}")
        emit(self.failed, message)
        if self._quitting and not self._closed:
            self._close()  # a failed stop must not keep the app from quitting

    def _hand_back_too_slow(self) -> None:
        if self._closed:
            return
        log.warning("gui.hand_back_deadline", state=self._status.state.value)
        self._call("stop the worker", lambda: self._supervisor.stop(StopMode.KILL))
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kill_timer.stop()

        def done(_: object = None) -> None:
            log.info("gui.supervisor_closed")
            emit(self.closed)

        def close_failed(exc: Exception) -> None:
            log.error("gui.supervisor_close_failed", error=f"{exc.__class__.__name__}: {exc}")
            emit(self.failed, f"The worker did not shut down cleanly: {exc}")
            done()

        self._runner.submit(
            self._supervisor.close, on_success=done, on_failure=close_failed, label="close the supervisor"
        )

    @Slot(object)
    def _on_status(self, status: WorkerStatus) -> None:
        self._status = status
        if not PRESENTATION[status.state].child_runs:
            # No child runs: whatever was in flight is over (its record may still follow).
            self._tasks.clear()
        emit(self.state_changed, status)
        if self._quitting and status.state in IDLE_STATES:
            self._close()

    @Slot(object)
    def _on_progress(self, progress: TaskProgress) -> None:
        self._tasks[progress.task_id] = progress
        emit(self.task_progress, progress)

    @Slot(object)
    def _on_finished(self, record: TaskRecord) -> None:
        self._tasks.pop(record.task_id, None)
        emit(self.task_finished, record)
        if record.outcome is TaskOutcome.REQUEUED:
            log.info("gui.task_requeued", task_id=record.task_id)
