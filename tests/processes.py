"""Helpers to start and stop real processes in tests: redis-server, the hub, worker children.

Every process is started in its own session and killed with its whole group on teardown; waits
poll a condition until a generous deadline, never a fixed sleep.
"""

from __future__ import annotations

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
from typing import Any

import redis

DEADLINE_S = float(os.environ.get("MORAG_TEST_DEADLINE", "60"))
ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE_S, what: str = "condition",
             interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` at the deadline."""
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
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """A child process whose combined output is collected line by line in the background."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, name: str = "proc") -> None:
        self.name = name
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.popen = subprocess.Popen(
            list(argv), env=dict(env) if env is not None else None, cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, text=True, bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def saw(self, text: str) -> bool:
        with self._lock:
            return any(text in line for line in self.lines)

    def wait_output(self, text: str, timeout: float = DEADLINE_S) -> None:
        def seen() -> bool:
            if self.popen.poll() is not None and not self.saw(text):
                self._reader.join(timeout=2)
                if not self.saw(text):
                    raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before "
                                         f"printing {text!r}:\n{self.output()[-4000:]}")
            return self.saw(text)
        try:
            wait_for(seen, timeout, f"{self.name} to print {text!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {self.name} output ---\n{self.output()[-4000:]}") from None

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def wait(self, timeout: float = DEADLINE_S) -> int:
        return self.popen.wait(timeout=timeout)

    def kill_group(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(timeout=2)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL of the whole group after ``timeout``."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()


class RedisServer:
    """A private redis-server on a free loopback port, in its own directory."""

    def __init__(self, workdir: Path, port: int | None = None, extra: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "no",
                     "--loglevel", "warning", *extra]
        self.proc: Proc | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = Proc(self.argv, name="redis-server")
        wait_for(self._ping, what="redis-server to answer PING")

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


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MORAG_", "REDIS_URL", "MAIN_SERVER_URL", "CELERY_"))}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env
