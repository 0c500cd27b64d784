"""Test-side process helpers: the core's local-stack helpers with test-friendly failures.

``wait_for`` raises AssertionError (a test failure) instead of TimeoutError, and ``base_env``
gives children a clean environment that imports this checkout.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from morag_worker.core.cli.devstack import Proc, RedisServer, free_port, python_argv
from morag_worker.core.cli.devstack import wait_for as _wait_for

__all__ = [
    "DEADLINE_S",
    "ROOT",
    "MemoryWatch",
    "Proc",
    "RedisServer",
    "base_env",
    "free_port",
    "process_tree",
    "python_argv",
    "wait_for",
]

DEADLINE_S = float(os.environ.get("MORAG_TEST_DEADLINE", "60"))
ROOT = Path(__file__).resolve().parent.parent


def wait_for(
    predicate: Callable[[], Any], timeout: float = DEADLINE_S, what: str = "condition", interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until truthy; a timeout is a test failure naming ``what``."""
    try:
        return _wait_for(predicate, timeout, what, interval)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """Terminate ``processes``, last started first, and reap each; one deaf to SIGTERM for 10 s is killed."""
    for proc in reversed(processes):
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def base_env(**extra: str) -> dict[str, str]:
    """The test process's environment without MoRAG/Celery settings, importing this checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MORAG_", "REDIS_URL", "MAIN_SERVER_URL", "CELERY_"))
    }
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def _status_kib(pid: int, field: str) -> int:
    """``field`` (VmRSS, VmHWM) of ``pid`` in KiB from /proc; 0 when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (Linux /proc), parents first."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop(0)
        tree.append(pid)
        pending.extend(parents.get(pid, []))
    return tree


class MemoryWatch:
    """The resident memory of a process tree during a ``with`` block, in MiB.

    ``baseline`` is the tree's RSS at entry, ``peak`` the highest total seen: the kernel's per-process
    high-water marks (VmHWM, reset at entry through ``/proc/PID/clear_refs``) where that works, and
    otherwise samples taken every 10 ms. ``after`` is the RSS at exit.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.baseline = self.peak = self.after = 0.0
        self._stop = threading.Event()
        self._sampled = 0.0
        self._last = float("inf")
        self._thread = threading.Thread(target=self._sample, name="memory-watch", daemon=True)

    def _rss(self) -> float:
        return sum(_status_kib(pid, "VmRSS") for pid in process_tree(self.root)) / 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._sampled = max(self._sampled, self._rss())

    def __enter__(self) -> MemoryWatch:
        self._hwm = True
        for pid in process_tree(self.root):
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            except OSError:
                self._hwm = False
        self.baseline = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.after = self._rss()
        peak = self._sampled
        if self._hwm:
            peak = max(peak, sum(_status_kib(pid, "VmHWM") for pid in process_tree(self.root)) / 1024)
        self.peak = peak

    def settled(self, step_mib: float = 16) -> float:
        """Poll with ``wait_for``: the tree's RSS once it moved less than ``step_mib`` since the
        previous call (0 until then)."""
        previous, self._last = self._last, self._rss()
        return self._last if abs(self._last - previous) < step_mib else 0.0

    def __repr__(self) -> str:
        return (
            f"MemoryWatch(baseline={self.baseline:.0f} MiB, peak={self.peak:.0f} MiB, "
            f"after={self.after:.0f} MiB)"
        )
