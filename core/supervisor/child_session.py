"""One worker child as the supervisor sees it: its handle, what it said, and how it is being stopped.

A ``ChildSession`` lives from launch to exit. It holds the child's last log lines, its active
tasks (``TaskTracker``), its ready message and latest heartbeat, and the stop requested of it,
and answers the questions the supervisor's decisions need (is it ready, reconnecting, busy; what
does a person read). Owned by the supervisor's loop thread; not thread-safe.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

from morag_worker.core.execution.progress_channel import HeartbeatMessage, ReadyMessage
from morag_worker.core.supervisor.child_process import ChildProcess
from morag_worker.core.supervisor.events import RECONNECTING, Problem, StopMode, WorkerState
from morag_worker.core.supervisor.task_tracker import TaskTracker

__all__ = ["ChildSession", "finishing_message", "held_message", "stop_status"]

_RANK = {StopMode.FINISH: 1, StopMode.NOW: 2, StopMode.KILL: 3}
_INTERRUPTED = {
    StopMode.NOW: "stopped now; the task went back to the queue",
    StopMode.KILL: "the worker was killed; the task returns to the queue after the visibility timeout",
    None: "the worker stopped unexpectedly; the task returns to the queue after the visibility timeout",
}

_KEY_REJECTED = (
    "the hub rejected the API key, so the worker stopped; the task goes back to the queue for another worker"
)

USER = "user"  # stop reasons: asked by the front end (stop, snooze, close) ...
RESTART = "restart"  # ... or by the supervisor itself (start deadline, silence, stall)


@dataclass
class ChildSession:
    child: ChildProcess
    gen: int
    tracker: TaskTracker
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))
    ready_at: float | None = None  # monotonic
    ready_info: ReadyMessage | None = None
    heartbeat: HeartbeatMessage | None = None
    stop_mode: StopMode | None = None
    stop_reason: str | None = None  # USER or RESTART
    connecting_since: float | None = None  # monotonic: first of the beats saying "connecting" in a row
    hub_retry_at: float | None = None  # epoch: the child's next try of a hub that does not answer
    hub_text: str = ""  # what a person reads meanwhile
    rejected: tuple[Problem, str] | None = None  # the hub refused the key while this child ran
    held_reason: str | None = None  # why the child's intake rules take no new task now

    @property
    def ready(self) -> bool:
        return self.ready_at is not None

    @property
    def busy(self) -> bool:
        return len(self.tracker) > 0

    def connecting(self) -> bool:
        """The latest heartbeat says the consumer has no broker connection."""
        return self.heartbeat is not None and self.heartbeat.consumer == "connecting"

    def reconnecting(self) -> bool:
        """The consumer lost its broker connection after it was ready (a beat from before is stale)."""
        ready = self.ready_info
        return self.connecting() and (ready is None or self.heartbeat is None or self.heartbeat.ts > ready.ts)

    def running_message(self) -> str:
        if self.reconnecting():
            return RECONNECTING
        count = len(self.tracker)
        if count:
            return f"Working on {count} task" + ("s" if count > 1 else "")
        return "Waiting for work"

    def hub_unreachable(self, retry_in_s: float | None, now: float) -> None:
        """The child says the hub does not answer and it tries again in ``retry_in_s`` s."""
        wait = max(1, math.ceil(retry_in_s or 0.0))
        self.hub_retry_at = now + wait
        self.hub_text = f"Hub unreachable, retrying in {wait} s."

    def running_status(self) -> tuple[WorkerState, str]:
        """RUNNING with what it is doing, WAITING_FOR_HUB while the hub does not answer, or
        HELD_BACK while the contributor's rules hold new tasks back (a task in hand finishes)."""
        if self.hub_retry_at is not None and not self.reconnecting():
            return WorkerState.WAITING_FOR_HUB, self.hub_text
        if self.held_reason is not None and not self.reconnecting():
            return WorkerState.HELD_BACK, held_message(self.held_reason, len(self.tracker))
        return WorkerState.RUNNING, self.running_message()

    def escalates_to(self, mode: StopMode) -> bool:
        """True when ``mode`` is harsher than the stop already asked (a stop never softens)."""
        return self.stop_mode is None or _RANK[mode] > _RANK[self.stop_mode]

    def interrupted_reason(self) -> str:
        """Why a task that never reported its end is over, given how the child was stopped."""
        if self.rejected is not None:
            return _KEY_REJECTED
        return _INTERRUPTED.get(self.stop_mode, _INTERRUPTED[None])


def held_message(reason: str, tasks: int) -> str:
    """``"Paused: GPU at 86 °C, waiting for 78 °C."``, and that the task in hand finishes first."""
    text = f"Paused: {reason.rstrip('.')}."
    if tasks:
        text += (
            " The task in hand finishes first." if tasks == 1 else f" The {tasks} tasks in hand finish first."
        )
    return text


def finishing_message(tasks: int, then: WorkerState) -> str:
    """``"Finishing 2 tasks, then pausing"``: the sentence shown while a FINISH stop is under way."""
    after = {WorkerState.SNOOZED: "snoozing", WorkerState.STARTING: "restarting"}.get(then, "pausing")
    if not tasks:
        return after.capitalize()
    what = "the current task" if tasks == 1 else f"{tasks} tasks"
    return f"Finishing {what}, then {after}"


def stop_status(mode: StopMode, *, tasks: int, restart: bool, then: WorkerState) -> tuple[WorkerState, str]:
    """The state and sentence shown while a stop in ``mode`` is under way (``then``: what follows)."""
    if mode is StopMode.FINISH:
        return WorkerState.FINISHING, finishing_message(tasks, then)
    if mode is StopMode.NOW:
        text = "Restarting the worker" if restart else "Stopping now"
        return WorkerState.STOPPING, text + ("; the current task goes back to the queue" if tasks else "")
    return WorkerState.STOPPING, "Killing the worker"
