"""The one helper for blocking work: keychain calls, HTTP, file and process control.

Modelled on Anki's ``QueryOp``: a function runs on a thread pool and its result or exception comes
back on the GUI thread, where the success or failure callback runs. Background functions never
touch widgets; callbacks may. A callback whose ``parent`` object was deleted meanwhile is skipped,
so a closed dialog is never called back. A failure without a handler is logged, never swallowed.

    BackgroundOp(runner, op=lambda: client.queue_info(), success=self._show).failure(self._explain).run()

``BackgroundRunner`` lives on the GUI thread; its pool threads only run ``op`` and post the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import shiboken6
import structlog
from PySide6.QtCore import QObject, Qt, QThreadPool, Signal, Slot

from .qt_emit import emit

__all__ = ["BackgroundOp", "BackgroundRunner"]

T = TypeVar("T")
log = structlog.get_logger(__name__)


class _Emitter(QObject):
    #: A zero-argument callable to run on the GUI thread (the op's outcome, bound to its callback).
    deliver = Signal(object)


class BackgroundRunner(QObject):
    """A thread pool whose results are delivered on the GUI thread.

    Args:
        parent: The owning QObject (the pool and its threads go with it).
        max_threads: Pool size; 1 makes the runner serial (calls run in submission order).
        name: For log events.
    """

    #: Emitted on the GUI thread when the last pending op has delivered its outcome.
    idle = Signal()

    def __init__(
        self, parent: QObject | None = None, *, max_threads: int = 4, name: str = "background"
    ) -> None:
        super().__init__(parent)
        self.name = name
        # Created before the emitter, so it is destroyed (and waits for its threads) first.
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._pool.setExpiryTimeout(15_000)  # idle threads exit; an idle app keeps none
        self._emitter = _Emitter(self)
        self._emitter.deliver.connect(self._run_on_gui_thread, Qt.ConnectionType.QueuedConnection)
        self._pending = 0

    @property
    def pending(self) -> int:
        """Ops submitted whose callbacks have not run yet."""
        return self._pending

    def submit(
        self,
        op: Callable[[], T],
        *,
        on_success: Callable[[T], object] | None = None,
        on_failure: Callable[[Exception], object] | None = None,
        parent: QObject | None = None,
        label: str = "",
    ) -> None:
        """Run ``op`` on the pool; then ``on_success(result)`` or ``on_failure(exc)`` on the GUI thread.

        Args:
            op: The blocking function. It must not touch widgets.
            on_success: Called with the result.
            on_failure: Called with the exception; when None the failure is logged.
            parent: When given and deleted before ``op`` ends, no callback runs.
            label: Names the op in log events.
        """
        label = label or getattr(op, "__name__", "op")
        guard = parent

        def deliver(outcome: Callable[[], object]) -> None:
            emit(self._emitter.deliver, outcome)

        def work() -> None:
            try:
                result = op()
            except Exception as exc:  # handed to on_failure on the GUI thread, or logged there
                error = exc
                deliver(lambda: self._finish(guard, label, lambda: self._fail(label, error, on_failure)))
            else:
                deliver(
                    lambda: self._finish(guard, label, lambda: on_success(result) if on_success else None)
                )

        self._pending += 1
        self._pool.start(work)

    def _finish(self, guard: QObject | None, label: str, callback: Callable[[], object]) -> None:
        try:
            if guard is not None and not shiboken6.isValid(guard):
                log.debug("background.parent_gone", runner=self.name, op=label)
                return
            callback()
        finally:
            self._pending -= 1
            if self._pending == 0:
                emit(self.idle)

    @staticmethod
    def _fail(label: str, error: Exception, on_failure: Callable[[Exception], object] | None) -> None:
        if on_failure is not None:
            on_failure(error)
            return
        log.error(
            "background.op_failed", op=label, error=f"{error.__class__.__name__}: {error}", exc_info=error
        )

    @Slot(object)
    def _run_on_gui_thread(self, closure: Any) -> None:
        closure()

    def wait_for_done(self, timeout_ms: int = 5000) -> bool:
        """Block until every running op has returned (callbacks are still queued); for shutdown."""
        return bool(self._pool.waitForDone(timeout_ms))


class BackgroundOp(Generic[T]):
    """A fluent, typed wrapper over ``BackgroundRunner.submit`` (Anki's ``QueryOp`` shape).

    Args:
        runner: Where to run.
        op: The blocking function; it must not touch widgets.
        success: Called on the GUI thread with ``op``'s result.
        parent: The widget the callbacks belong to; when it is deleted first, they are skipped.
        label: Names the op in log events.
    """

    def __init__(
        self,
        runner: BackgroundRunner,
        op: Callable[[], T],
        success: Callable[[T], object],
        *,
        parent: QObject | None = None,
        label: str = "",
    ) -> None:
        self._runner = runner
        self._op = op
        self._success = success
        self._failure: Callable[[Exception], object] | None = None
        self._parent = parent
        self._label = label

    def failure(self, failure: Callable[[Exception], object]) -> BackgroundOp[T]:
        """Handle an exception from ``op`` on the GUI thread (instead of logging it)."""
        self._failure = failure
        return self

    def run(self) -> None:
        """Start ``op`` on the pool."""
        self._runner.submit(
            self._op,
            on_success=self._success,
            on_failure=self._failure,
            parent=self._parent,
            label=self._label,
        )
