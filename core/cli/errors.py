"""Exit codes, and the one error type a verb raises to end with a clear line on stderr (made a
sentence by ``morag_worker.core.wording.sentence`` where it is printed)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CliError", "ExitCode"]


class ExitCode(IntEnum):
    OK = 0
    TASK_FAILED = 1
    USAGE = 2
    CONFIG = 3
    KEY_REJECTED = 4
    HUB_UNREACHABLE = 5
    BROKER_UNREACHABLE = 6
    WORKER_CRASHED = 7  # --no-gui: the worker child kept failing and the retries ran out
    NO_WORKER = 8  # submit --wait: no online worker consumes the task's queue (the task stays queued)
    CHECK_FAILED = 9  # self-test: at least one check failed (its advice says what to do)
    INTERRUPTED = 130


class CliError(Exception):
    """Ends a verb with ``message`` on stderr and ``code`` as the exit status."""

    def __init__(self, message: str, code: ExitCode = ExitCode.CONFIG) -> None:
        super().__init__(message)
        self.code = code
