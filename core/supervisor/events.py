"""The typed vocabulary shared by the supervisor and its front ends (terminal and tray).

States, stop modes and events are plain enums and frozen dataclasses so that the headless
front end, the Qt controller and tests all speak the same language without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from morag_worker.core.results import TaskRecord

__all__ = [
    "PAUSED",
    "RECONNECTING",
    "Problem",
    "StopMode",
    "SupervisorListener",
    "TaskProgress",
    "WorkerState",
    "WorkerStatus",
]


#: STOPPED's message after "finish and pause": the front ends say "Paused", not "Stopped".
PAUSED = "Paused"
#: RUNNING's message while the consumer has lost the broker (a blip, or a revoked key): not "working".
RECONNECTING = "Reconnecting to the broker"


class WorkerState(Enum):
    STOPPED = "stopped"
    STARTING = "starting"  # child launched, not yet ready (connecting to hub and broker)
    RUNNING = "running"  # ready and waiting for work, or working
    WAITING_FOR_HUB = "waiting_for_hub"  # the hub does not answer: no new task; retry at ``retry_at``
    HELD_BACK = "held_back"  # the contributor's rules hold new tasks back; ``held_reason`` says why
    FINISHING = "finishing"  # finishing the current task, taking no new one
    STOPPING = "stopping"  # stop now: the current task goes back to the queue
    BACKOFF = "backoff"  # crashed or unreachable; will retry at ``WorkerStatus.retry_at``
    CRASHED = "crashed"  # gave up, or an error that retrying cannot fix (key rejected...)
    SNOOZED = "snoozed"  # stopped on purpose until ``WorkerStatus.snoozed_until``


class StopMode(Enum):
    FINISH = "finish"  # SIGTERM / worker.stop(): finish the current task, then exit
    NOW = "now"  # SIGQUIT / cooperative cancel: requeue the current task at once
    KILL = "kill"  # last resort: the task returns after the visibility timeout


class Problem(Enum):
    """Why the supervisor is in BACKOFF or CRASHED; front ends pick their words and exit codes by it."""

    NO_API_KEY = "no_api_key"  # no key, an unusable key file or keychain: the user must act
    CONFIG = "config"  # invalid settings or a hub answer the worker cannot use
    KEY_REJECTED = "key_rejected"  # the hub refused the key (unknown, revoked, expired): no retry
    HUB_UNREACHABLE = "hub_unreachable"  # retried with backoff
    HUB_ERROR = "hub_error"  # the hub answered with an error; retried with backoff
    BROKER_UNREACHABLE = "broker_unreachable"  # the child never got a broker connection
    LAUNCH_FAILED = "launch_failed"  # the child process could not be started
    START_TIMEOUT = "start_timeout"  # the child said nothing that proved it ready in time
    CRASHED = "crashed"  # the child exited without being asked to
    STALLED = "stalled"  # the child stopped proving liveness, or its consumer stopped polling


@dataclass(frozen=True)
class WorkerStatus:
    """A snapshot of the supervisor, sent with every state change."""

    state: WorkerState
    message: str = ""  # a sentence for a person: "Waiting for work", "Hub unreachable: ..."
    user_id: str | None = None
    queues: tuple[str, ...] = ()  # the queues the worker consumes, most specific first
    notice: str | None = None  # e.g. no GPU: transcription runs on the CPU
    retry_at: float | None = None  # epoch seconds of the next restart (BACKOFF) or hub try (WAITING_FOR_HUB)
    snoozed_until: float | None = None  # epoch seconds, or None for "until I resume" (SNOOZED)
    last_output: tuple[str, ...] = ()  # the child's last lines, for a CRASHED state
    problem: Problem | None = None  # set in BACKOFF, CRASHED and WAITING_FOR_HUB
    attempt: int = 0  # consecutive failed attempts so far (BACKOFF shows "retry n")
    active_tasks: int = 0  # tasks the child is working on (RUNNING, FINISHING, STOPPING)
    #: FINISHING: what follows once the tasks are done: STOPPED (pause), SNOOZED (``snoozed_until``)
    #: or STARTING (a restart, or Start/Resume pressed while finishing). None in other states.
    then: WorkerState | None = None
    #: HELD_BACK: why no new task is taken ("GPU at 86 °C, waiting for 78 °C"). None in other states.
    held_reason: str | None = None


@dataclass(frozen=True)
class TaskProgress:
    """Progress of one task, as the worker child reported it over the local channel."""

    task_id: str
    stage: str  # DOWNLOADING, PROCESSING
    done: float
    total: float | None
    percent: float | None
    message: str = ""
    filename: str | None = None
    speed: float | None = None  # units (bytes while downloading) per second
    eta_s: float | None = None
    timestamp: float = 0.0


class SupervisorListener(Protocol):
    """What a front end implements to hear from the supervisor (called from its threads)."""

    def on_status(self, status: WorkerStatus) -> None: ...

    def on_progress(self, progress: TaskProgress) -> None: ...

    def on_task_finished(self, record: TaskRecord) -> None: ...

    def on_log(self, line: str) -> None: ...
