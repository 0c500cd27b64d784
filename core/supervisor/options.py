"""The supervisor's deadlines and policies, its clock, and the backoff between restart attempts (pure)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Clock", "SupervisorOptions", "SystemClock"]


@dataclass(frozen=True)
class SupervisorOptions:
    """Deadlines and policies of the supervisor (seconds)."""

    start_timeout_s: float = 120.0  # launch -> ready, or the child is killed and retried
    connect_timeout_s: float = 45.0  # before ready: reporting "connecting" this long = broker unreachable
    heartbeat_s: float = 5.0  # how often the child beats
    heartbeat_timeout_s: float = 30.0  # silence after ready -> restart
    stall_after_s: float = 90.0  # idle, connected consumer not polling -> restart
    finish_timeout_s: float | None = None  # FINISH while a task runs: escalate after this (None: never)
    idle_finish_timeout_s: float = 30.0  # FINISH with no task running: escalate to NOW after this
    now_timeout_s: float = 30.0  # NOW -> KILL after this
    restart_kill_after_s: float = 10.0  # a restart of a stalled child: NOW -> KILL after this
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 120.0
    backoff_jitter: float = 0.2  # up to 20 % off each delay (transfer.retry.backoff_delay)
    healthy_after_s: float = 60.0  # ready this long -> the failure count starts again
    max_attempts: int | None = None  # consecutive failed attempts before CRASHED (None: retry forever)
    last_output_lines: int = 40
    log_level: str = "INFO"
    platform: str = sys.platform  # "win32" runs the winworker wrapper (tests use it on Linux)


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()
