"""Fakes for tests: the one module that holds stand-ins for collaborators passed into core.

Keyring fakes set ``viable = False`` so that ``keyring``'s own backend detection (which registers
every subclass of ``KeyringBackend``) never picks them; tests pass them in explicitly.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from keyring.backend import KeyringBackend
from keyring.backends.chainer import ChainerBackend
from keyring.errors import PasswordDeleteError

from morag_worker.core.execution.progress_channel import encode_message
from morag_worker.core.hub_client import QueueInfo
from morag_worker.core.processing.winjob import (
    JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS,
    JOB_OBJECT_LIMIT_PROCESS_MEMORY,
    ExtendedLimitInformation,
)
from morag_worker.core.results import TaskOutcome, TaskRecord
from morag_worker.core.supervisor.child_process import ChildCallbacks
from morag_worker.core.supervisor.events import (
    StopMode,
    SupervisorListener,
    TaskProgress,
    WorkerState,
    WorkerStatus,
)
from morag_worker.core.supervisor.gpu import GpuInfo
from morag_worker.core.supervisor.worker_command import WorkerCommand

__all__ = [
    "FakeAclHook",
    "FakeAutostart",
    "FakeChild",
    "FakeClock",
    "FakeHub",
    "FakeKernel32",
    "FakeLauncher",
    "RecordingListener",
    "queue_info",
    "FakeChainer",
    "FakeKeySweeper",
    "FakeWatchdog",
    "FakeGpuProbe",
    "FakeRunKey",
    "FakeSupervisor",
    "FakeNvml",
    "FakePlaintextKeyring",
    "InMemoryKeyring",
    "KeyringsAltLookalike",
    "make_gpu",
]


class InMemoryKeyring(KeyringBackend):
    """A recommended-looking backend (priority 1) that keeps passwords in a dict.

    Set ``error`` to make every operation raise it, the way a broken keychain would.
    """

    priority: float = 1
    viable = False

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}
        self.error: Exception | None = None
        self.calls: list[tuple[str, str, str]] = []

    def _maybe_fail(self) -> None:
        if self.error is not None:
            raise self.error

    def get_password(self, service: str, username: str) -> str | None:
        self.calls.append(("get", service, username))
        self._maybe_fail()
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.calls.append(("set", service, username))
        self._maybe_fail()
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.calls.append(("delete", service, username))
        self._maybe_fail()
        try:
            del self.passwords[(service, username)]
        except KeyError:
            raise PasswordDeleteError("No such password!") from None


class FakePlaintextKeyring(InMemoryKeyring):
    """Looks like ``keyrings.alt.file.PlaintextKeyring``: priority 0.5 and a ``file_path``."""

    priority = 0.5
    file_path = "/home/user/.local/share/python_keyring/keyring_pass.cfg"


class KeyringsAltLookalike(InMemoryKeyring):
    """A backend from the ``keyrings.alt`` package, whatever priority it claims."""

    priority = 2


KeyringsAltLookalike.__module__ = "keyrings.alt.Windows"


class FakeChainer(ChainerBackend):
    """A ``ChainerBackend`` over the given backends (the real one discovers them globally)."""

    viable = False

    def __init__(self, *backends: KeyringBackend) -> None:
        super().__init__()
        self._chained = list(backends)

    @property
    def backends(self) -> list[KeyringBackend]:
        return self._chained


def make_gpu(index: int = 0, *, uuid: str | None = None, name: str = "NVIDIA Fake 24GB") -> GpuInfo:
    """A GpuInfo with plausible values."""
    return GpuInfo(
        index=index,
        name=name,
        uuid=uuid if uuid is not None else f"GPU-0000000{index}-1111-2222-3333-444444444444",
        memory_total_mb=24576,
        memory_used_mb=512,
        temperature_c=40,
        utilization_percent=0,
    )


@dataclass
class FakeGpuProbe:
    """A GpuProbe that answers a fixed list."""

    gpus: list[GpuInfo] = field(default_factory=list)
    calls: int = 0

    def list_gpus(self) -> list[GpuInfo]:
        self.calls += 1
        return list(self.gpus)


class FakeNvmlError(Exception):
    """Stands in for ``pynvml.NVMLError``."""


@dataclass
class _Memory:
    total: int
    used: int


@dataclass
class _Utilization:
    gpu: int


@dataclass
class _Process:
    pid: int
    usedGpuMemory: int | None  # noqa: N815 - NVML's own name


@dataclass
class FakeNvml:
    """A stand-in for the ``pynvml`` module with ``devices`` as its GPUs.

    Each device is a dict with ``name`` (bytes or str), ``uuid``, ``total``/``used`` bytes and,
    optionally, ``temperature`` / ``utilization`` (an Exception value makes that call raise),
    ``processes`` (``(pid, used bytes or None)`` pairs of the compute processes on it) or
    ``broken`` (the handle lookup raises).
    """

    devices: list[dict[str, Any]] = field(default_factory=list)
    init_error: Exception | None = None
    initialised: int = 0
    shut_down: int = 0
    NVML_TEMPERATURE_GPU: int = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.shut_down += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        device = self.devices[index]
        if device.get("broken"):
            raise FakeNvmlError("GPU is lost")
        return device

    def nvmlDeviceGetName(self, handle: dict[str, Any]) -> Any:
        return handle["name"]

    def nvmlDeviceGetUUID(self, handle: dict[str, Any]) -> Any:
        return handle["uuid"]

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> _Memory:
        return _Memory(total=handle["total"], used=handle["used"])

    def nvmlDeviceGetTemperature(self, handle: dict[str, Any], sensor: int) -> int:
        return int(self._value(handle, "temperature", 50))

    def nvmlDeviceGetUtilizationRates(self, handle: dict[str, Any]) -> _Utilization:
        return _Utilization(gpu=int(self._value(handle, "utilization", 0)))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: dict[str, Any]) -> list[_Process]:
        return [_Process(pid, used) for pid, used in self._value(handle, "processes", [])]

    @staticmethod
    def _value(handle: dict[str, Any], key: str, default: int) -> Any:
        value = handle.get(key, default)
        if isinstance(value, Exception):
            raise value
        return value


class FakeAclHook:
    """Stands in for ``RedisAclHook`` in hub maintenance tests: counts syncs, can lose its ACLs."""

    def __init__(self) -> None:
        self.present = True
        self.syncs = 0
        self.error: Exception | None = None

    async def acls_present(self) -> bool:
        return self.present

    async def sync_all(self) -> int:
        if self.error is not None:
            raise self.error
        self.syncs += 1
        self.present = True
        return 3


class FakeKeySweeper:
    """Stands in for ``APIKeyService.sweep_expired``."""

    def __init__(self, removed: int = 0, error: Exception | None = None) -> None:
        self.removed = removed
        self.error = error
        self.sweeps = 0

    async def sweep_expired(self) -> list[object]:
        self.sweeps += 1
        if self.error is not None:
            raise self.error
        return [object()] * self.removed


class FakeWatchdog:
    """Stands in for ``Watchdog.run`` (called from a worker thread)."""

    def __init__(self, restored: dict[str, int] | None = None) -> None:
        from morag_worker.core.server.watchdog import RestoreReport

        self.report = RestoreReport(restored=dict(restored or {}))
        self.runs = 0

    def run(self) -> object:
        self.runs += 1
        return self.report


# ---- supervisor fakes -----------------------------------------------------------------------


class FakeClock:
    """Monotonic and wall time that move only when ``advance`` is called."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._mono = start
        self._offset = wall - start
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def time(self) -> float:
        with self._lock:
            return self._mono + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._mono += seconds


class FakeChild:
    """A worker child driven by the test: it sends channel lines, output and its exit on request."""

    def __init__(self, pid: int, command: WorkerCommand, callbacks: ChildCallbacks) -> None:
        self.pid = pid
        self.command = command
        self.callbacks = callbacks
        self.controls: list[StopMode] = []
        self.code: int | None = None
        self.exit_on: dict[StopMode, int] = {StopMode.KILL: -9}
        self.closed = False
        self.ticks = 0

    def control(self, mode: StopMode) -> None:
        self.controls.append(mode)
        if mode in self.exit_on and self.code is None:
            self.exit(self.exit_on[mode])

    def poll(self) -> int | None:
        return self.code

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True

    def send(self, kind: str, **fields: object) -> None:
        self.ticks += 1  # the child's clock: strictly increasing, as a real one is between lines
        line = encode_message(kind, fields, pid=self.pid, ts=1_700_000_000.0 + self.ticks)
        self.callbacks.on_message(line.rstrip(b"\n"))

    def raw(self, line: bytes) -> None:
        self.callbacks.on_message(line)

    def ready(self) -> None:
        queues = ["gpu-tasks-u1", "cpu-tasks-u1"]
        self.send("ready", hostname="fake@test", queues=queues, config={"task_acks_late": True})

    def heartbeat(
        self,
        consumer: str = "connected",
        since_poll_s: float | None = 0.5,
        reserved: int = 0,
        active: tuple[str, ...] = (),
    ) -> None:
        self.send(
            "heartbeat", consumer=consumer, since_poll_s=since_poll_s, reserved=reserved, active=list(active)
        )

    def output(self, line: str) -> None:
        self.callbacks.on_output(line)

    def exit(self, code: int = 0) -> None:
        self.code = code
        self.callbacks.on_exit(code)


class FakeLauncher:
    """Records commands and hands out ``FakeChild``ren; set ``error`` to make a launch fail."""

    def __init__(self) -> None:
        self.children: list[FakeChild] = []
        self.error: OSError | None = None

    def launch(self, command: WorkerCommand, callbacks: ChildCallbacks) -> FakeChild:
        if self.error is not None:
            raise self.error
        child = FakeChild(4000 + len(self.children), command, callbacks)
        self.children.append(child)
        return child

    @property
    def last(self) -> FakeChild:
        return self.children[-1]


def queue_info(user_id: str = "u1", broker_url: str = "redis://127.0.0.1:6379/0") -> QueueInfo:
    return QueueInfo(
        user_id=user_id,
        gpu_queue=f"gpu-tasks-{user_id}",
        cpu_queue=f"cpu-tasks-{user_id}",
        default_queue="celery",
        broker_url=broker_url,
        broker_username=f"worker-{user_id}",
        key_prefix=f"morag:ns:{user_id}:",
    )


class FakeHub:
    """A hub client factory: each ``queue_info`` call takes the next answer (a QueueInfo or an error)."""

    def __init__(self, *answers: QueueInfo | Exception) -> None:
        self.answers = list(answers) or [queue_info()]
        self.calls: list[tuple[str, str]] = []
        self.closed = 0

    def __call__(self, hub_url: str, api_key: str) -> FakeHub:
        self.calls.append((hub_url, api_key))
        return self

    def queue_info(self) -> QueueInfo:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        self.closed += 1


class RecordingListener:
    """A SupervisorListener that keeps everything it hears (from the supervisor's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.statuses: list[WorkerStatus] = []
        self.progress: list[TaskProgress] = []
        self.records: list[TaskRecord] = []
        self.logs: list[str] = []

    def on_status(self, status: WorkerStatus) -> None:
        with self._lock:
            self.statuses.append(status)

    def on_progress(self, progress: TaskProgress) -> None:
        with self._lock:
            self.progress.append(progress)

    def on_task_finished(self, record: TaskRecord) -> None:
        with self._lock:
            self.records.append(record)

    def on_log(self, line: str) -> None:
        with self._lock:
            self.logs.append(line)

    def states(self) -> list[WorkerState]:
        with self._lock:
            return [s.state for s in self.statuses]

    def last(self) -> WorkerStatus | None:
        with self._lock:
            return self.statuses[-1] if self.statuses else None

    def find(self, predicate: Callable[[WorkerStatus], bool]) -> WorkerStatus | None:
        with self._lock:
            return next((s for s in reversed(self.statuses) if predicate(s)), None)


@dataclass
class FakeRunKey:
    """The Windows per-user Run key as a dict; ``error`` makes every call raise it."""

    values: dict[str, str] = field(default_factory=dict)
    error: OSError | None = None

    def _maybe_fail(self) -> None:
        if self.error is not None:
            raise self.error

    def get(self, name: str) -> str | None:
        self._maybe_fail()
        return self.values.get(name)

    def set(self, name: str, value: str) -> None:
        self._maybe_fail()
        self.values[name] = value

    def delete(self, name: str) -> None:
        self._maybe_fail()
        self.values.pop(name, None)


@dataclass
class FakeAutostart:
    """An Autostart that remembers the command it was given."""

    command: list[str] | None = None
    location: str = "~/.config/autostart/morag-worker.desktop (fake)"
    error: Exception | None = None

    def is_enabled(self) -> bool:
        return self.command is not None

    def enable(self, command: Sequence[str]) -> None:
        if self.error is not None:
            raise self.error
        self.command = list(command)

    def disable(self) -> None:
        if self.error is not None:
            raise self.error
        self.command = None


class FakeSupervisor:
    """A Supervisor stand-in: records what it is asked and reports to its listener from other threads.

    With ``auto`` (the default) it behaves like a quick, healthy supervisor: ``start`` goes through
    STARTING to RUNNING; ``stop(NOW)`` hands the running tasks back and stops; ``stop(FINISH)``
    stops at once when idle, else stays FINISHING until ``complete_tasks()``; ``snooze`` snoozes;
    ``close`` stops. Without ``auto`` it only records, and tests drive it with ``emit_*``.

    Every listener call runs on a fresh thread (joined before returning), as the real
    supervisor calls from its own threads. ``errors`` maps a method name to an exception it raises.
    """

    def __init__(
        self,
        listener: SupervisorListener,
        *,
        auto: bool = True,
        user_id: str = "alice",
        queues: tuple[str, ...] = ("gpu-tasks-alice", "cpu-tasks-alice"),
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.listener = listener
        self.auto = auto
        self.user_id = user_id
        self.queues = queues
        self.clock = clock or (lambda: 1_700_000_000.0)
        self.calls: list[tuple[str, Any]] = []
        self.errors: dict[str, Exception] = {}
        self.state = WorkerState.STOPPED
        self.active: dict[str, TaskProgress] = {}
        self.closed = False
        self._lock = threading.Lock()

    # -- the Supervisor interface ------------------------------------------------------------

    def start(self) -> None:
        self._record("start", None)
        if self.auto:
            self.emit_status(WorkerState.STARTING, "Connecting to the hub")
            self.emit_status(WorkerState.RUNNING, "Waiting for work")

    def stop(self, mode: StopMode) -> None:
        self._record("stop", mode)
        if not self.auto:
            return
        if mode is StopMode.FINISH and self.active:
            self.emit_status(WorkerState.FINISHING, "Finishing the current task")
            return
        if mode is not StopMode.FINISH and self.active:
            self.emit_status(WorkerState.STOPPING, "Handing the task back")
            self.complete_tasks(TaskOutcome.REQUEUED)
        self.emit_status(WorkerState.STOPPED, "Stopped")

    def snooze(self, until: float | None) -> None:
        self._record("snooze", until)
        if self.auto:
            self.emit_status(WorkerState.SNOOZED, "Snoozed", snoozed_until=until)

    def close(self) -> None:
        self._record("close", None)
        self.closed = True
        if self.auto and self.state is not WorkerState.STOPPED:
            self.emit_status(WorkerState.STOPPED, "Stopped")

    # -- test drivers ------------------------------------------------------------------------

    def calls_named(self, name: str) -> list[Any]:
        with self._lock:
            return [arg for call, arg in self.calls if call == name]

    def emit_status(self, state: WorkerState, message: str = "", **extra: Any) -> WorkerStatus:
        status = WorkerStatus(state, message, user_id=self.user_id, queues=self.queues, **extra)
        self.state = state
        self._from_thread(lambda: self.listener.on_status(status))
        return status

    def emit_progress(
        self,
        task_id: str = "task-1",
        *,
        stage: str = "DOWNLOADING",
        done: float = 0,
        total: float | None = None,
        percent: float | None = None,
        filename: str | None = "report.pdf",
        **extra: Any,
    ) -> TaskProgress:
        progress = TaskProgress(
            task_id, stage, done, total, percent, filename=filename, timestamp=self.clock(), **extra
        )
        self.active[task_id] = progress
        self._from_thread(lambda: self.listener.on_progress(progress))
        return progress

    def emit_finished(
        self,
        task_id: str = "task-1",
        outcome: TaskOutcome = TaskOutcome.SUCCEEDED,
        *,
        error: str | None = None,
        duration: float = 12.5,
        **extra: Any,
    ) -> TaskRecord:
        started = self.active.pop(task_id, None)
        now = self.clock()
        record = TaskRecord(
            task_id,
            outcome,
            started_at=now - duration,
            finished_at=now,
            filename=extra.pop("filename", started.filename if started else None),
            error=error,
            **extra,
        )
        self._from_thread(lambda: self.listener.on_task_finished(record))
        return record

    def emit_log(self, line: str) -> None:
        self._from_thread(lambda: self.listener.on_log(line))

    def complete_tasks(self, outcome: TaskOutcome = TaskOutcome.SUCCEEDED) -> None:
        """Finish every active task; a FINISHING supervisor then stops."""
        for task_id in list(self.active):
            self.emit_finished(task_id, outcome)
        if self.state is WorkerState.FINISHING:
            self.emit_status(WorkerState.STOPPED, "Stopped")

    def _record(self, name: str, arg: Any) -> None:
        with self._lock:
            self.calls.append((name, arg))
        error = self.errors.get(name)
        if error is not None:
            raise error

    @staticmethod
    def _from_thread(call: Callable[[], None]) -> None:
        thread = threading.Thread(target=call, name="fake-supervisor")
        thread.start()
        thread.join()


class RecordingOutageWatch:
    """An ``OutageWatch`` (transfer/retry.py) that records what downloads tell it.

    ``stop_after`` makes ``give_up_waiting`` say True from that many calls on (the worker stopping).
    """

    def __init__(self, stop_after: int | None = None) -> None:
        self.unreachable_calls: list[tuple[str, float]] = []
        self.answers = 0
        self.asked = 0
        self.stop_after = stop_after

    def unreachable(self, reason: str, retry_in: float) -> None:
        self.unreachable_calls.append((reason, retry_in))

    def answered(self) -> None:
        self.answers += 1

    def give_up_waiting(self) -> bool:
        self.asked += 1
        return self.stop_after is not None and self.asked >= self.stop_after

    def seen_back(self) -> bool:
        return False


ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6
ERROR_INVALID_PARAMETER = 87


class FakeKernel32:
    """The Job object calls of kernel32, keeping Windows' state: handles, jobs, their limits and members.

    ``fail`` names calls that fail (return 0, with ``ERROR_ACCESS_DENIED`` as the last error).
    ``commit(pid, n)`` plays a process committing memory: refused past its job's limit, as Windows does.
    """

    def __init__(self, *, fail: Sequence[str] = ()) -> None:
        self.fail = set(fail)
        self.calls: list[str] = []
        self._next = 100
        self._error = 0
        self.jobs: dict[int, dict[str, Any]] = {}  # job handle -> {"flags", "limit", "pids", "peak", "alive"}
        self.processes: dict[int, int] = {}  # open process handle -> pid
        self.open_handles: set[int] = set()
        self.terminated: list[int] = []

    def _handle(self) -> int:
        self._next += 4
        self.open_handles.add(self._next)
        return self._next

    def _failing(self, call: str, error: int = ERROR_ACCESS_DENIED) -> bool:
        self.calls.append(call)
        if call in self.fail:
            self._error = error
            return True
        return False

    def last_error(self) -> int:
        return self._error

    def CreateJobObjectW(self, attributes: Any, name: Any) -> int:  # noqa: N802
        if self._failing("CreateJobObjectW"):
            return 0
        handle = self._handle()
        self.jobs[handle] = {"flags": 0, "limit": 0, "pids": set(), "peak": 0}
        return handle

    def SetInformationJobObject(  # noqa: N802
        self, job: int, info_class: int, info: ExtendedLimitInformation, size: int
    ) -> int:
        if self._failing("SetInformationJobObject"):
            return 0
        if job not in self.jobs or info_class != JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS:
            self._error = ERROR_INVALID_PARAMETER
            return 0
        if size != ctypes.sizeof(ExtendedLimitInformation):
            self._error = ERROR_INVALID_PARAMETER  # Windows checks the structure's size
            return 0
        self.jobs[job]["flags"] = info.BasicLimitInformation.LimitFlags
        self.jobs[job]["limit"] = info.ProcessMemoryLimit
        return 1

    def QueryInformationJobObject(  # noqa: N802
        self, job: int, info_class: int, info: ExtendedLimitInformation, size: int, returned: Any
    ) -> int:
        if self._failing("QueryInformationJobObject") or job not in self.jobs:
            return 0
        info.BasicLimitInformation.LimitFlags = self.jobs[job]["flags"]
        info.ProcessMemoryLimit = self.jobs[job]["limit"]
        info.PeakProcessMemoryUsed = self.jobs[job]["peak"]
        return 1

    def OpenProcess(self, access: int, inherit: bool, pid: int) -> int:  # noqa: N802
        if self._failing("OpenProcess"):
            return 0
        handle = self._handle()
        self.processes[handle] = pid
        self.last_access = access
        return handle

    def AssignProcessToJobObject(self, job: int, process: int) -> int:  # noqa: N802
        if self._failing("AssignProcessToJobObject"):
            return 0
        if job not in self.jobs or process not in self.processes:
            self._error = ERROR_INVALID_HANDLE
            return 0
        self.jobs[job]["pids"].add(self.processes[process])
        return 1

    def TerminateJobObject(self, job: int, exit_code: int) -> int:  # noqa: N802
        if self._failing("TerminateJobObject") or job not in self.jobs:
            return 0
        self.terminated.extend(sorted(self.jobs[job]["pids"]))
        self.jobs[job]["pids"].clear()
        return 1

    def CloseHandle(self, handle: int) -> int:  # noqa: N802
        self.calls.append("CloseHandle")
        if handle not in self.open_handles:
            self._error = ERROR_INVALID_HANDLE
            return 0
        self.open_handles.discard(handle)
        self.processes.pop(handle, None)
        job = self.jobs.pop(handle, None)
        if job is not None and job["flags"] & 0x2000:  # KILL_ON_JOB_CLOSE
            self.terminated.extend(sorted(job["pids"]))
        return 1

    def commit(self, pid: int, nbytes: int) -> bool:
        """A process in a job asks for ``nbytes`` in all; False (the allocation fails) past its limit."""
        for job in self.jobs.values():
            if pid in job["pids"]:
                limited = job["flags"] & JOB_OBJECT_LIMIT_PROCESS_MEMORY
                if limited and nbytes > job["limit"]:
                    job["peak"] = max(job["peak"], job["limit"])
                    return False
                job["peak"] = max(job["peak"], nbytes)
        return True
