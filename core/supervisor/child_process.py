"""Running the worker child: the ``Launcher`` seam, and the real one over ``subprocess``.

The supervisor never touches ``subprocess`` or signals itself; it asks a launcher to start a
``WorkerCommand`` and gets a ``ChildProcess`` back whose output lines, channel lines and exit are
delivered to callbacks. Each child runs three daemon threads here: one reads its log output
(stdout and stderr), one the progress channel, one waits for its exit. ``on_exit`` comes last, after
both readers have drained, so no line of a child arrives after its exit.

How a stop reaches the child:

================  =======================================  ===========================================
mode              POSIX, prefork (``celery worker``)       control pipe (``winworker``, threads pool)
================  =======================================  ===========================================
FINISH            SIGTERM to the main process (warm)       ``finish`` on its stdin
NOW               SIGQUIT to the main process (cold:        ``stop-now`` on its stdin (cooperative
                  prefork requeues the task at once)        cancel, the task is rejected with requeue)
KILL              SIGKILL to the whole process group       SIGKILL to the group / TerminateProcess
================  =======================================  ===========================================

A ``solo`` pool is never sent SIGQUIT: its cold shutdown acks the running task as failed (it is
lost). NOW falls back to a warm stop for solo and for threads without a control pipe (threads
cannot be interrupted anyway). Each child gets its own process group (POSIX: a new session;
Windows: ``CREATE_NEW_PROCESS_GROUP``), so prefork pool processes go with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Literal, Protocol

import structlog

from morag_worker.core.execution.progress_channel import CHANNEL_ENV
from morag_worker.core.logging import redact
from morag_worker.core.supervisor.events import StopMode
from morag_worker.core.supervisor.worker_command import WorkerCommand

__all__ = [
    "ChildCallbacks",
    "ChildProcess",
    "Launcher",
    "SubprocessLauncher",
    "posix_signal_for",
]

log = structlog.get_logger(__name__)

ChannelMode = Literal["fd", "stdout"]
_CONTROL_WORDS = {StopMode.FINISH: "finish", StopMode.NOW: "stop-now"}


@dataclass(frozen=True)
class ChildCallbacks:
    """Where a child's events go; each is called from one of the child's reader threads."""

    on_message: Callable[[bytes], None]  # one raw channel line (without the newline)
    on_output: Callable[[str], None]  # one log line of the child (redacted)
    on_exit: Callable[[int], None]  # the exit status, after all lines were delivered


class ChildProcess(Protocol):
    """A started worker child."""

    @property
    def pid(self) -> int: ...

    def control(self, mode: StopMode) -> None:
        """Ask the child to stop in ``mode`` (FINISH, NOW or KILL); never raises."""
        ...

    def poll(self) -> int | None: ...

    def close(self, timeout: float = 5.0) -> None:
        """Join the child's threads (after its exit); kills the group first if it still runs."""
        ...


class Launcher(Protocol):
    """Starts worker children; ``launch`` raises OSError when the program cannot be started."""

    def launch(self, command: WorkerCommand, callbacks: ChildCallbacks) -> ChildProcess: ...


def posix_signal_for(pool: str, mode: StopMode) -> int:
    """The signal that stops a POSIX ``celery worker`` of ``pool`` in ``mode`` (never SIGQUIT to solo)."""
    if mode is StopMode.KILL:
        return int(signal.SIGKILL)
    if mode is StopMode.NOW and pool == "prefork":
        return int(signal.SIGQUIT)
    return int(signal.SIGTERM)


class _Child:
    """A ``subprocess.Popen`` child with its reader and waiter threads."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        command: WorkerCommand,
        callbacks: ChildCallbacks,
        output: IO[bytes],
        channel: IO[bytes],
    ) -> None:
        self._popen = popen
        self._command = command
        self._callbacks = callbacks
        self._stdin_lock = threading.Lock()
        name = f"morag-child-{popen.pid}"
        self._readers = [
            threading.Thread(target=self._read_output, args=(output,), name=f"{name}-log", daemon=True),
            threading.Thread(target=self._read_channel, args=(channel,), name=f"{name}-channel", daemon=True),
        ]
        self._waiter = threading.Thread(target=self._wait, name=f"{name}-wait", daemon=True)
        for thread in self._readers:
            thread.start()
        self._waiter.start()

    @property
    def pid(self) -> int:
        return self._popen.pid

    def poll(self) -> int | None:
        return self._popen.poll()

    def _read_output(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line:
                    self._deliver(self._callbacks.on_output, redact(line))

    def _read_channel(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                line = raw.rstrip(b"\r\n")
                if line:
                    self._deliver(self._callbacks.on_message, line)

    @staticmethod
    def _deliver(callback: Callable[..., None], value: object) -> None:
        try:
            callback(value)
        except Exception:  # noqa: BLE001 - a failing callback must not stop the reader
            log.exception("child.callback_failed")

    def _wait(self) -> None:
        code = self._popen.wait()
        self._kill_group()  # leftovers (prefork pool processes whose parent died) hold the pipes
        for thread in self._readers:
            thread.join(timeout=10)
        if self._popen.stdin is not None:
            with contextlib.suppress(OSError):
                self._popen.stdin.close()
        self._deliver(self._callbacks.on_exit, code)

    def _kill_group(self) -> None:
        if os.name == "posix":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signal.SIGKILL)
        elif self._popen.poll() is None:
            with contextlib.suppress(OSError):
                self._popen.kill()  # TerminateProcess

    def control(self, mode: StopMode) -> None:
        if self._popen.poll() is not None:
            return
        try:
            if mode is StopMode.KILL:
                self._kill_group()
            elif self._command.uses_control_pipe:
                self._write_control(_CONTROL_WORDS[mode])
            else:
                self._popen.send_signal(posix_signal_for(self._command.pool, mode))
        except OSError as exc:
            log.warning("child.control_failed", mode=mode.value, error=str(exc))

    def _write_control(self, word: str) -> None:
        stdin = self._popen.stdin
        if stdin is None:
            raise OSError("the child has no control pipe")
        with self._stdin_lock:
            stdin.write(word.encode() + b"\n")
            stdin.flush()

    def close(self, timeout: float = 5.0) -> None:
        if self._popen.poll() is None:
            self._kill_group()
        self._waiter.join(timeout=timeout)


class SubprocessLauncher:
    """Starts children with ``subprocess``, each in its own process group.

    Args:
        channel: ``"fd"`` (POSIX default) passes an inherited pipe descriptor in
            ``MORAG_PROGRESS_FD``; ``"stdout"`` (Windows default; only for the ``winworker``
            wrapper) uses the child's stdout as the channel and its stderr for logs.
    """

    def __init__(self, channel: ChannelMode | None = None) -> None:
        self.channel: ChannelMode = channel or ("stdout" if sys.platform.startswith("win") else "fd")

    def launch(self, command: WorkerCommand, callbacks: ChildCallbacks) -> ChildProcess:
        if self.channel == "stdout" and not command.uses_control_pipe:
            raise ValueError("the stdout channel needs the winworker wrapper (a control-pipe command)")
        env = dict(command.env)
        stdin = subprocess.PIPE if command.uses_control_pipe else subprocess.DEVNULL
        if self.channel == "stdout":
            env[CHANNEL_ENV] = "stdout"
            flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(
                subprocess, "CREATE_NO_WINDOW", 0
            )
            popen = subprocess.Popen(
                command.argv,
                env=env,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=os.name == "posix",
                creationflags=flags,
            )
            assert popen.stdout is not None and popen.stderr is not None
            return _Child(popen, command, callbacks, output=popen.stderr, channel=popen.stdout)
        read_fd, write_fd = os.pipe()
        env[CHANNEL_ENV] = str(write_fd)
        try:
            popen = subprocess.Popen(
                command.argv,
                env=env,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        assert popen.stdout is not None
        return _Child(popen, command, callbacks, output=popen.stdout, channel=os.fdopen(read_fd, "rb"))
