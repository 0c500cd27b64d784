"""The Windows worker wrapper: ``python -m morag_worker.core.execution.windows_wrapper -Q ... -P threads``.

Windows has no prefork pool and no SIGQUIT, ``terminate()`` is a hard kill and Celery ignores
SIGBREAK (DESIGN §5), so the supervisor cannot stop a Windows worker with signals. This wrapper
runs the Celery worker in-process (``threads`` pool; the arguments are ``celery worker``'s) and
takes commands on stdin, one per line, on a control thread:

- ``finish``: warm stop, exactly what Celery's SIGTERM handler does (``state.should_stop``): take
  no new task, finish the running one, exit;
- ``stop-now``: set the runtime's ``cancel_event`` (the running task's next checkpoint or download
  read raises ``TaskCancelled``, which the task turns into ``Reject(requeue=True)``), then the
  same warm stop, so the task is back in the queue at once;
- end of input (the supervisor went away): ``finish``.

The progress channel: with ``MORAG_PROGRESS_FD=stdout`` (the Windows launcher's choice, since
descriptors are not inherited by number there) the real stdout becomes the channel and descriptor
1 is pointed at stderr before anything can print. Runs on POSIX too (tests drive it on Linux).
Threads: the main thread runs the worker; ``morag-control`` reads stdin.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, MutableMapping
from typing import IO

import structlog

from morag_worker.core.execution.progress_channel import CHANNEL_ENV

__all__ = ["ControlReader", "main", "take_channel_from_stdout"]

log = structlog.get_logger(__name__)


def take_channel_from_stdout(env: MutableMapping[str, str]) -> None:
    """Keep the real stdout as the progress channel and send everything else printed to stderr."""
    if env.get(CHANNEL_ENV) != "stdout":
        return
    sys.stdout.flush()
    channel_fd = os.dup(1)
    os.dup2(2, 1)
    env[CHANNEL_ENV] = str(channel_fd)


class ControlReader:
    """Reads ``finish`` / ``stop-now`` lines and acts on them; EOF counts as ``finish``."""

    def __init__(
        self,
        stream: IO[bytes],
        *,
        cancel: threading.Event,
        request_stop: Callable[[], None],
    ) -> None:
        self._stream = stream
        self._cancel = cancel
        self._request_stop = request_stop
        self.thread = threading.Thread(target=self.run, name="morag-control", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        for raw in self._stream:
            word = raw.decode("ascii", "replace").strip().lower()
            if word == "finish":
                log.info("worker.finish_requested")
                self._request_stop()
            elif word == "stop-now":
                log.info("worker.stop_now_requested")
                self._cancel.set()
                self._request_stop()
            elif word:
                log.warning("worker.unknown_control", command=word[:40])
        log.info("worker.control_closed")
        self._request_stop()


def warm_stop() -> None:
    """Ask the running worker for a warm shutdown, as Celery's own SIGTERM handler does."""
    from celery.platforms import EX_OK
    from celery.worker import state

    state.should_stop = EX_OK


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    take_channel_from_stdout(os.environ)
    from morag_worker.core.execution.context import get_runtime
    from morag_worker.core.execution.worker_main import run_worker

    # Unbuffered: a daemon thread blocked in a BufferedReader holds its lock, and the interpreter
    # aborts at exit when it cannot take that lock ("could not acquire lock for <stdin>").
    stdin = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115 - lives as long as the process
    runtime = get_runtime()
    control = ControlReader(stdin, cancel=runtime.cancel_event, request_stop=warm_stop)
    control.start()
    runtime.warm_up()  # the threads pool runs tasks in this process: load the pipeline once ready
    return run_worker(args)


if __name__ == "__main__":
    sys.exit(main())
