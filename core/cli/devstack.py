"""Run the whole stack on one machine: a private redis-server, the hub, worker children.

Used by ``morag-worker demo`` and by the test suite. Every process starts in its own session and
is stopped with its whole process group; waits poll a condition until a deadline, never a fixed
sleep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import redis

__all__ = ["Proc", "RedisServer", "RedisServerMissing", "free_port", "python_argv", "wait_for"]

T = TypeVar("T")


class RedisServerMissing(RuntimeError):
    """``redis-server`` is not on PATH."""


def wait_for(
    predicate: Callable[[], T], timeout: float, what: str = "condition", interval: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns something truthy; raise TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]


class Proc:
    """A child process in its own session whose output is collected line by line."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str = "process",
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.lines: list[str] = []
        self._on_line = on_line
        self._lock = threading.Lock()
        self.popen = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.rstrip("\n")
            with self._lock:
                self.lines.append(line)
            if self._on_line is not None:
                self._on_line(line)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def saw(self, text: str) -> bool:
        with self._lock:
            return any(text in line for line in self.lines)

    def wait_output(self, text: str, timeout: float) -> None:
        """Wait until a line containing ``text`` appears; fail early if the process exits."""

        def seen() -> bool:
            if self.popen.poll() is not None and not self.saw(text):
                self._reader.join(timeout=2)
                if not self.saw(text):
                    raise ChildExited(self)
            return self.saw(text)

        try:
            wait_for(seen, timeout, f"{self.name} to print {text!r}", interval=0.05)
        except ChildExited:
            raise RuntimeError(
                f"{self.name} exited ({self.popen.returncode}) before it was ready:\n" + self.output()[-3000:]
            ) from None
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- {self.name} output ---\n{self.output()[-3000:]}") from None

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._reader.join(timeout=2)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM to the group, then SIGKILL after ``timeout``; returns the exit status."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        code = self.popen.poll()
        self.kill_group()
        return code


class ChildExited(Exception):
    def __init__(self, proc: Proc) -> None:
        super().__init__(proc.name)


class RedisServer:
    """A private redis-server on a free loopback port, keeping its data in ``workdir``."""

    def __init__(
        self, workdir: Path, port: int | None = None, extra: Sequence[str] = (), start: bool = True
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerMissing(
                "redis-server is not installed; install it (Debian/Ubuntu: apt-get install "
                "redis-server) or put it on PATH"
            )
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.argv = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "no",
            "--loglevel", "warning", *extra,
        ]  # fmt: skip
        self.proc: Proc | None = None
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        self.proc = Proc(self.argv, name="redis-server")
        wait_for(self._ping, timeout, "redis-server to answer PING")

    def _ping(self) -> bool:
        with redis.Redis(port=self.port, socket_timeout=1) as client:
            return bool(client.ping())

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
