"""Test helpers around a real ``Supervisor``: a worker child under it, against a real hub and Redis.

``LiveSupervisor`` builds a supervisor with the real launcher, a fake GPU (so it serves the GPU
queue the hub submits to), short heartbeats and the test's clean environment; every wait is on a
condition with a deadline. Used by the integration tests and the lifecycle benchmark.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from morag_worker.core.config.settings import Settings
from morag_worker.core.hub_client import HubClient, TaskView
from morag_worker.core.naming import namespace_prefix, queue_name
from morag_worker.core.results import TaskRecord
from morag_worker.core.supervisor.child_process import Launcher
from morag_worker.core.supervisor.events import TaskProgress, WorkerState, WorkerStatus
from morag_worker.core.supervisor.supervisor import Supervisor, SupervisorOptions
from tests.fakes import FakeGpuProbe, RecordingListener, make_gpu
from tests.processes import base_env, wait_for

__all__ = ["LiveSupervisor", "big_text_file", "process_group", "queue_length", "wait_task"]

STARTUP_S = 120.0


def queue_length(redis_client: Any, user_id: str, worker_type: str = "gpu") -> int:
    """Messages waiting in the user's queue (inside the user's namespace)."""
    return int(redis_client.llen(namespace_prefix(user_id) + queue_name(user_id, worker_type)))


def big_text_file(path: Path, mib: float) -> Path:
    """A plain-text file of about ``mib`` MiB (fast to convert, slow to download when throttled)."""
    line = b"MoRAG worker supervision test line, long enough to fill a file quickly.\n"
    with path.open("wb") as handle:
        handle.write(line * int(mib * 1024 * 1024 / len(line)))
    return path


def wait_task(client: HubClient, task_id: str, timeout: float = 120) -> TaskView:
    return wait_for(
        lambda: (view := client.task(task_id)).done and view, timeout, f"task {task_id} to finish"
    )


def process_group(pgid: int) -> list[int]:
    """Pids of the live processes in process group ``pgid`` (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


class LiveSupervisor:
    """A ``Supervisor`` over a real child; use as a context manager (``close`` on exit)."""

    def __init__(
        self,
        hub_url: str,
        api_key: str | Callable[[], str],
        tmp: Path,
        *,
        options: SupervisorOptions | None = None,
        launcher: Launcher | None = None,
        **env: str,
    ) -> None:
        self.listener = RecordingListener()
        self.api_key = api_key
        self.supervisor = Supervisor(
            Settings(hub_url=hub_url, temp_dir=str(tmp / "worker-tmp")),
            key_resolver=api_key if callable(api_key) else (lambda: api_key),
            hub_client_factory=HubClient,
            listener=self.listener,
            launcher=launcher,
            gpu_probe=FakeGpuProbe([make_gpu()]),
            env=base_env(**env),
            options=options or self.options(),
        )

    @staticmethod
    def options(**changes: Any) -> SupervisorOptions:
        """Test defaults (beats every second, short backoff) with ``changes``."""
        base = SupervisorOptions(heartbeat_s=1.0, backoff_base_s=0.5, backoff_cap_s=4.0)
        return dataclasses.replace(base, **changes)

    def __enter__(self) -> LiveSupervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.supervisor.close()

    @property
    def status(self) -> WorkerStatus:
        return self.supervisor.status

    def start(self, timeout: float = STARTUP_S) -> LiveSupervisor:
        self.supervisor.start()
        return self.wait_state(WorkerState.RUNNING, timeout)

    def wait_state(self, state: WorkerState, timeout: float = 60) -> LiveSupervisor:
        def reached() -> bool:
            status = self.status
            if status.state is WorkerState.CRASHED and state is not WorkerState.CRASHED:
                raise AssertionError(
                    f"the supervisor crashed: {status}\n" + "\n".join(self.listener.logs[-30:])
                )
            return status.state is state

        try:
            wait_for(reached, timeout, f"the supervisor to be {state.value}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nstatus: {self.status}\n" + "\n".join(self.listener.logs[-30:])
            ) from None
        return self

    def wait_progress(self, predicate: Callable[[TaskProgress], bool], timeout: float = 60) -> TaskProgress:
        def seen() -> TaskProgress | None:
            with self.listener._lock:
                return next((p for p in self.listener.progress if predicate(p)), None)

        return wait_for(seen, timeout, "a matching progress event")

    def wait_record(self, task_id: str, timeout: float = 60) -> TaskRecord:
        def seen() -> TaskRecord | None:
            with self.listener._lock:
                return next((r for r in self.listener.records if r.task_id == task_id), None)

        return wait_for(seen, timeout, f"the record of task {task_id}")

    def records(self, task_id: str) -> list[TaskRecord]:
        with self.listener._lock:
            return [r for r in self.listener.records if r.task_id == task_id]
