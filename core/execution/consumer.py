"""The Celery consumers of our workers: one message can never stop them; contributors' share nothing.

:class:`MoragConsumer` (every worker) hands a message whose handling raises something Celery does
not expect (a body its strategy trips over) to Celery's own invalid-message path: logged, rejected
(not restored, so it cannot crash the worker again after a restart) and announced through the
``task_rejected`` signal, where ``worker.py`` marks the task FAILURE for its submitter; a body that
cannot be decoded is announced the same way. Connection errors still propagate, so the consumer
reconnects as before.

:class:`RemoteConsumer` (a contributor's worker) also leaves out gossip, mingle, heartbeat and remote
control. Those steps subscribe to and publish on broker-wide channels (``celery.pidbox``,
``celeryev``) that a contributor's ACL user may not touch; removing them here means the plain
``celery -A morag_worker.core.worker worker -Q gpu-tasks-{user_id}`` command is safe too, not only
the supervisor's (which also passes ``--without-gossip --without-mingle --without-heartbeat``).

:class:`MoragRequest` (every worker; the tasks' ``Request``) is what each task message becomes in the
main process, with two things Celery's own request does not do:

- A message's ``timelimit`` header (``[hard, soft]``, set by whoever published it) overrides the
  worker's own time limits in Celery. A submitter may ask for less time than the contributor's
  worker allows, never more: each limit is capped at the worker's ``task_time_limit`` /
  ``task_soft_time_limit`` (``CELERY_TIME_LIMIT`` / ``CELERY_SOFT_TIME_LIMIT``).
- When the pool process running a task dies (kill -9, the OOM killer), ``finally`` never ran in it:
  the main process, told of the death through ``on_failure`` (and again when the next task
  starts), removes the workspaces of dead owners at once instead of leaving the download on disk
  until the next start.

Runs on the worker's consumer (event loop) thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from celery import signals
from celery.worker.consumer import Consumer
from celery.worker.request import Request

from morag_worker.core.transfer.workspace import sweep_orphaned_workspaces

__all__ = ["MoragConsumer", "MoragRequest", "RemoteConsumer", "capped_time_limits", "first_task_of"]

log = structlog.get_logger(__name__)

_SHARED_CHANNEL_STEPS = ("mingle:Mingle", "gossip:Gossip", "heart:Heart", "control:Control")


class MoragConsumer(Consumer):  # type: ignore[misc]
    """A consumer whose task handler turns any unexpected per-message error into a rejected message."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        on_task_received: Callable[[Any], Any] = super().create_task_handler(*args, **kwargs)
        recoverable = tuple(self.connection_errors) + tuple(self.channel_errors)

        def guarded(message: Any) -> Any:
            try:
                return on_task_received(message)
            except recoverable:
                raise
            except Exception as exc:  # noqa: BLE001 - logged and reported by on_invalid_task
                return self.on_invalid_task(None, message, exc)

        return guarded

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """A body that cannot be decoded: Celery logs and acks it; we also announce it as rejected."""
        super().on_decode_error(message, exc)
        signals.task_rejected.send(sender=self, message=message, exc=exc)


class RemoteConsumer(MoragConsumer):
    """A consumer whose blueprint leaves out every step that talks on shared channels."""

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        default_steps: list[Any] = [
            step for step in Consumer.Blueprint.default_steps if not str(step).endswith(_SHARED_CHANNEL_STEPS)
        ]


def _limit(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def _cap(requested: float | None, own: float | None) -> float | None:
    if requested is None:
        return None  # the worker's own limit applies
    return requested if own is None else min(requested, own)


def capped_time_limits(requested: Any, *, hard: float | None, soft: float | None) -> tuple[Any, Any]:
    """``(hard, soft)`` a message asked for, each at most the worker's own; None where it asked none.

    Anything but a pair of positive numbers counts as no request.
    """
    if not isinstance(requested, list | tuple) or len(requested) != 2:
        return (None, None)
    return (_cap(_limit(requested[0]), _limit(hard)), _cap(_limit(requested[1]), _limit(soft)))


class MoragRequest(Request):  # type: ignore[misc]
    """Celery's request, with the message's time limits capped and dead pool processes cleaned up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        asked = self._request_dict.get("timelimit")
        if asked:
            conf = self._app.conf
            limits = capped_time_limits(asked, hard=conf.task_time_limit, soft=conf.task_soft_time_limit)
            if list(limits) != list(asked):
                log.warning("task.time_limits_capped", task_id=self.id, asked=str(asked)[:80])
            self.time_limits = limits
            self._request_dict["timelimit"] = list(limits)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        global _SWEEP_DUE
        try:
            return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        finally:
            _remove_orphans()  # a pool process lost under its task: its download goes now
            _SWEEP_DUE = True  # and at the next task: one killed on a time limit dies after this

    def on_accepted(self, pid: Any, time_accepted: Any) -> Any:
        global _SWEEP_DUE
        try:
            return super().on_accepted(pid, time_accepted)
        finally:
            # Again at the first task after a failure (a pool process killed on a time limit dies
            # after its failure is handled) and at a new pool process's first task (it replaced
            # one). Not at every task: scanning every workspace cost the main process a read each.
            if first_task_of(pid) or _SWEEP_DUE:
                _SWEEP_DUE = False
                _remove_orphans()


# Pool processes that have taken a task in this worker, and whether a task failed since the last
# sweep (main process only).
_POOL_PIDS_SEEN: set[Any] = set()
_SWEEP_DUE = False


def first_task_of(pid: Any) -> bool:
    """Whether pool process ``pid`` takes its first task now (it is remembered from here on)."""
    if pid in _POOL_PIDS_SEEN:
        return False
    if len(_POOL_PIDS_SEEN) > 4096:  # a worker that outlived thousands of pool processes
        _POOL_PIDS_SEEN.clear()
    _POOL_PIDS_SEEN.add(pid)
    return True


def _remove_orphans() -> None:
    from morag_worker.core.execution.context import get_runtime

    try:
        sweep_orphaned_workspaces(get_runtime().temp_root)
    except OSError as exc:
        log.warning("workspace.sweep_failed", error=str(exc))
