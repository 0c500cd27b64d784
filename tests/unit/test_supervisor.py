"""The supervisor's state machine with a fake launcher, hub and clock: no process is started.

Most tests drive ``SupervisorMachine`` synchronously on the test's own thread (``Rig``): no loop
thread, no waits. ``post`` queues an event and, unless the rig is already delivering, delivers
the queue at once (``handle`` then ``fire_timers``, as ``Supervisor``'s loop does), so every
stimulus (a command, a child's line or exit, ``advance``) has been fully handled when it returns.
A start attempt's prepare work is held by ``spawn`` and run by the rig once the queue is empty
(``hold_prepare`` keeps it held, to test what happens while a start attempt prepares).

The last section drives the real threaded ``Supervisor`` end to end: what only it does (its
loop, listener isolation, ``close`` joining, ``supervisor_for`` wiring), with cross-thread waits.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from morag_worker.core.config.credentials import NoApiKey
from morag_worker.core.config.settings import Settings
from morag_worker.core.hub_client import HubError, HubUnreachable, KeyRejected
from morag_worker.core.naming import WorkerType
from morag_worker.core.results import TaskOutcome
from morag_worker.core.supervisor.events import Problem, StopMode, TaskProgress, WorkerState, WorkerStatus
from morag_worker.core.supervisor.gpu import GpuInfo
from morag_worker.core.supervisor.machine import Event, SupervisorMachine
from morag_worker.core.supervisor.supervisor import Supervisor, SupervisorOptions
from tests.fakes import (
    FakeChild,
    FakeClock,
    FakeGpuProbe,
    FakeHub,
    FakeLauncher,
    RecordingListener,
    make_gpu,
    queue_info,
)
from tests.processes import wait_for

pytestmark = pytest.mark.unit

KEY = "Kx9" + "a" * 20 + "7" * 20


class Rig:
    """A ``SupervisorMachine`` on the test's thread: queued events, held prepare work, a fake clock."""

    def __init__(
        self,
        hub: FakeHub | None = None,
        options: SupervisorOptions | None = None,
        gpus: list[GpuInfo] | None = None,
        key_error: Exception | None = None,
        settings: Settings | None = None,
        rng: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.clock = FakeClock()
        self.launcher = FakeLauncher()
        self.hub = hub or FakeHub()
        self.listener = RecordingListener()
        self.key_error = key_error
        self.events: collections.deque[tuple[Event, int, Any]] = collections.deque()
        self.prepares: collections.deque[Callable[[], None]] = collections.deque()
        self.hold_prepare = False
        self.loop_ended = False
        self._delivering = False
        self.options = options or SupervisorOptions(backoff_jitter=0.0)
        self.machine = SupervisorMachine(
            settings or Settings(hub_url="http://hub.test:8700"),
            key_resolver=self.resolve_key,
            hub_client_factory=self.hub,
            launcher=self.launcher,
            clock=self.clock,
            gpu_probe=FakeGpuProbe([make_gpu()] if gpus is None else gpus),
            env={"PATH": "/usr/bin", "MORAG_API_KEY": "stale"},
            options=self.options,
            rng=rng,
            post=self.post,
            notify=self.notify,
            spawn=self.prepares.append,
        )

    def resolve_key(self) -> str:
        if self.key_error is not None:
            raise self.key_error
        return KEY

    # ---- the machine's collaborators -----------------------------------------------------
    def post(self, event: Event, payload: Any = None, gen: int = 0) -> None:
        self.events.append((event, gen, payload))
        self.pump()

    def notify(self, method: str, value: Any) -> None:
        getattr(self.listener, method)(value)  # no shield: a listener error fails the test

    def pump(self) -> None:
        """Deliver queued events, then held prepare work, until there is nothing left to do."""
        if self._delivering:
            return  # posted from within handle (a control that makes the child exit): queued
        self._delivering = True
        try:
            while not self.loop_ended:
                if self.events:
                    event, gen, payload = self.events.popleft()
                    self.machine.handle(event, gen, payload)
                    self.machine.fire_timers()
                    if self.machine.finished:  # as Supervisor's loop ends
                        self.machine.closed()
                        self.loop_ended = True
                elif self.prepares and not self.hold_prepare:
                    self.prepares.popleft()()
                else:
                    return
        finally:
            self._delivering = False

    def release_prepare(self) -> None:
        self.hold_prepare = False
        self.pump()

    # ---- the front end's commands ----------------------------------------------------------
    def start(self) -> None:
        self.post(Event.START)

    def stop(self, mode: StopMode = StopMode.FINISH) -> None:
        self.post(Event.STOP, mode)

    def snooze(self, until: float | None) -> None:
        self.post(Event.SNOOZE, until)

    def close(self) -> None:
        self.post(Event.CLOSE)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.post(Event.TICK)  # as Supervisor.tick

    # ---- what the test looks at ------------------------------------------------------------
    @property
    def status(self) -> WorkerStatus:
        return self.machine.status

    def state(self) -> WorkerState | None:
        last = self.listener.last()
        return last.state if last else None

    def expect(self, state: WorkerState) -> WorkerStatus:
        """The listener's latest status, which must be ``state`` (and the machine's own)."""
        status = self.listener.last()
        assert status is not None and status.state is state, f"expected {state.value}, got {status}"
        assert self.machine.status == status
        return status

    def child(self, count: int = 1) -> FakeChild:
        """The ``count``-th child, which must be the last one launched."""
        assert len(self.launcher.children) == count, f"{len(self.launcher.children)} children"
        return self.launcher.children[-1]

    def active_tasks(self) -> list[TaskProgress]:
        return list(self.machine.active)

    def running(self) -> FakeChild:
        count = len(self.launcher.children) + 1
        self.start()
        child = self.child(count)
        child.ready()
        self.expect(WorkerState.RUNNING)
        return child


@pytest.fixture
def rig() -> Rig:
    return Rig()


@pytest.fixture(autouse=True)
def no_threads_unless_threaded(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The synchronous tests start no thread at all (the threaded ones say so in their name)."""
    if request.node.name.startswith("test_threaded_"):
        return

    def refuse(thread: threading.Thread) -> None:
        raise AssertionError(f"a synchronous test started a thread ({thread.name})")

    monkeypatch.setattr(threading.Thread, "start", refuse)


# ---- the machine, synchronously --------------------------------------------------------------


def test_running_only_after_the_child_says_ready(rig: Rig) -> None:
    rig.start()
    child = rig.child()
    rig.expect(WorkerState.STARTING)
    child.heartbeat(consumer="starting")
    child.output("celery banner")
    assert WorkerState.RUNNING not in rig.listener.states()
    child.ready()
    status = rig.expect(WorkerState.RUNNING)
    assert status.message == "Waiting for work"
    assert status.user_id == "u1" and status.queues == ("gpu-tasks-u1", "cpu-tasks-u1")
    assert rig.hub.calls == [("http://hub.test:8700", KEY)]


def test_the_key_reaches_the_child_only_through_its_environment(rig: Rig) -> None:
    rig.start()
    command = rig.child().command
    assert KEY not in " ".join(command.argv)
    assert command.env["MORAG_API_KEY"] == KEY  # the resolved key, not the stale one in env
    assert command.env["MORAG_HEARTBEAT_S"] == "5"
    assert command.env["CUDA_VISIBLE_DEVICES"].startswith("GPU-")
    assert command.env["MORAG_WORKER_GPU"] == "NVIDIA Fake 24GB"
    assert command.pool == "prefork"
    assert command.argv[command.argv.index("-Q") + 1] == "gpu-tasks-u1,cpu-tasks-u1"
    assert KEY not in repr(command)


def test_no_gpu_still_serves_the_gpu_queue_and_says_transcription_runs_on_the_cpu() -> None:
    """The seed sends every remote task to gpu-tasks-{uid}: a machine without a GPU serves it too."""
    r = Rig(gpus=[])
    r.start()
    command = r.child().command
    assert command.argv[command.argv.index("-Q") + 1] == "gpu-tasks-u1,cpu-tasks-u1"
    assert "CUDA_VISIBLE_DEVICES" not in command.env and "MORAG_WORKER_GPU" not in command.env
    status = r.expect(WorkerState.STARTING)
    assert status.queues == ("gpu-tasks-u1", "cpu-tasks-u1")
    assert status.notice is not None and "transcribed on the CPU" in status.notice


def test_worker_type_cpu_serves_only_the_cpu_queue_and_hides_the_gpus() -> None:
    r = Rig(settings=Settings(hub_url="http://hub.test:8700", worker_type=WorkerType.CPU))
    r.start()
    command = r.child().command
    assert command.argv[command.argv.index("-Q") + 1] == "cpu-tasks-u1"
    assert command.env["CUDA_VISIBLE_DEVICES"] == ""
    assert r.expect(WorkerState.STARTING).notice is None


def test_windows_plan_runs_the_wrapper_with_a_control_pipe() -> None:
    r = Rig(options=SupervisorOptions(platform="win32"))
    r.start()
    command = r.child().command
    assert command.argv[1:3] == ["-m", "morag_worker.core.execution.windows_wrapper"]
    assert command.pool == "threads" and command.uses_control_pipe


def test_hub_unreachable_backs_off_with_capped_exponential_delays_then_recovers() -> None:
    down = HubUnreachable("cannot reach the hub at http://hub.test:8700 (ConnectionError)")
    hub = FakeHub(down, down, down, down, queue_info())
    r = Rig(hub=hub, options=SupervisorOptions(backoff_jitter=0.0, backoff_base_s=1, backoff_cap_s=3))
    r.start()
    delays = []
    for attempt in range(1, 5):
        status = r.expect(WorkerState.BACKOFF)
        assert status.problem is Problem.HUB_UNREACHABLE and status.attempt == attempt
        assert f"attempt {attempt + 1}" in status.message and "Cannot reach the hub" in status.message
        assert status.retry_at is not None
        delays.append(round(status.retry_at - r.clock.time()))
        r.advance(delays[-1] - 0.5)
        assert len(r.hub.calls) == attempt  # not before the delay is over
        r.advance(0.5)
        assert len(r.hub.calls) == attempt + 1
    assert delays == [1, 2, 3, 3]
    r.child().ready()
    assert r.expect(WorkerState.RUNNING).attempt == 4  # reset only after a healthy period


def test_a_retry_waits_the_capped_backoff_less_its_jitter() -> None:
    """The supervisor's retries share the downloads' backoff (transfer.retry): never past the cap."""
    down = HubUnreachable("cannot reach the hub at http://hub.test:8700 (ConnectionError)")
    options = SupervisorOptions(backoff_jitter=0.5, backoff_base_s=2, backoff_cap_s=5)
    r = Rig(hub=FakeHub(down, down, down, queue_info()), options=options, rng=lambda: 1.0)
    r.start()
    waits = []
    for _ in range(3):
        status = r.expect(WorkerState.BACKOFF)
        assert status.retry_at is not None
        waits.append(status.retry_at - r.clock.time())
        r.advance(waits[-1])
    assert waits == [1.0, 2.0, 2.5]  # 2, 4, then the cap of 5; each less half of itself


@pytest.mark.parametrize(
    ("error", "problem"),
    [
        (KeyRejected("the hub rejected the API key (unknown, revoked or expired)"), Problem.KEY_REJECTED),
        (None, Problem.NO_API_KEY),
    ],
)
def test_errors_that_retrying_cannot_fix_crash_without_retry(
    error: Exception | None, problem: Problem
) -> None:
    r = Rig(hub=FakeHub(error)) if error else Rig(key_error=NoApiKey("no API key for x", "log in"))
    r.start()
    status = r.expect(WorkerState.CRASHED)
    assert status.problem is problem
    r.advance(3600)
    assert r.status == status and not r.machine.timers  # nothing retried
    r.stop()
    r.expect(WorkerState.STOPPED)
    assert len(r.hub.calls) <= 1 and r.launcher.children == []
    if problem is Problem.KEY_REJECTED:
        assert "rejected the API key" in status.message


def test_hub_error_is_retried_and_max_attempts_gives_up() -> None:
    hub = FakeHub(HubError("the hub answered 500: boom"))
    r = Rig(hub=hub, options=SupervisorOptions(backoff_jitter=0.0, max_attempts=2))
    r.start()
    assert r.expect(WorkerState.BACKOFF).problem is Problem.HUB_ERROR
    r.advance(1)
    status = r.expect(WorkerState.CRASHED)
    assert status.problem is Problem.HUB_ERROR and "gave up after 2 attempts" in status.message


def test_launch_failure_is_a_clear_crash() -> None:
    r = Rig()
    r.launcher.error = FileNotFoundError(2, "No such file or directory")
    r.start()
    status = r.expect(WorkerState.CRASHED)
    assert status.problem is Problem.LAUNCH_FAILED and "cannot start the worker" in status.message.lower()


def test_start_deadline_kills_the_silent_child_and_attaches_its_output(rig: Rig) -> None:
    rig.start()
    child = rig.child()
    child.output("Traceback: something went wrong")
    rig.advance(rig.options.start_timeout_s - 1)
    assert child.controls == []
    rig.advance(2)
    status = rig.expect(WorkerState.BACKOFF)
    assert child.controls == [StopMode.KILL]
    assert status.problem is Problem.START_TIMEOUT
    assert "Traceback: something went wrong" in status.last_output
    rig.advance(1)
    rig.child(2)


def test_start_deadline_while_connecting_is_broker_unreachable(rig: Rig) -> None:
    rig.start()
    child = rig.child()
    child.heartbeat(consumer="connecting", since_poll_s=None)
    assert "broker" in rig.status.message
    rig.advance(rig.options.start_timeout_s + 1)
    assert rig.expect(WorkerState.BACKOFF).problem is Problem.BROKER_UNREACHABLE


def test_a_crashed_child_is_restarted_and_a_healthy_run_resets_the_count(rig: Rig) -> None:
    child = rig.running()
    child.output("Unrecoverable error: boom")
    child.exit(1)
    status = rig.expect(WorkerState.BACKOFF)
    assert status.problem is Problem.CRASHED and "exit status 1" in status.message and status.attempt == 1
    assert "Unrecoverable error: boom" in status.last_output
    rig.advance(1)
    second = rig.child(2)
    second.ready()
    rig.expect(WorkerState.RUNNING)
    rig.advance(rig.options.healthy_after_s + 1)
    second.heartbeat()
    second.exit(1)
    assert rig.expect(WorkerState.BACKOFF).attempt == 1


def test_finish_waits_for_the_task_then_stops(rig: Rig) -> None:
    child = rig.running()
    child.send("task_start", task_id="t1", name="morag.worker.process_file_task_remote", filename="a.pdf")
    assert rig.status.active_tasks == 1
    rig.stop(StopMode.FINISH)
    status = rig.expect(WorkerState.FINISHING)
    assert child.controls == [StopMode.FINISH] and "Finishing the current task" in status.message
    rig.advance(24 * 3600)  # no timeout by default while a task runs
    assert child.controls == [StopMode.FINISH]
    child.send("task_end", task_id="t1", outcome="succeeded", error=None, metadata={}, processing_time=1.0)
    assert len(rig.listener.records) == 1
    child.exit(0)
    rig.expect(WorkerState.STOPPED)
    [record] = rig.listener.records
    assert record.outcome is TaskOutcome.SUCCEEDED and record.filename == "a.pdf"


def test_finish_with_nothing_running_escalates_to_now_then_kill(rig: Rig) -> None:
    child = rig.running()
    child.exit_on = {}
    rig.stop(StopMode.FINISH)
    rig.expect(WorkerState.FINISHING)
    rig.advance(rig.options.idle_finish_timeout_s + 1)
    rig.expect(WorkerState.STOPPING)
    assert child.controls == [StopMode.FINISH, StopMode.NOW]
    rig.advance(rig.options.now_timeout_s + 1)
    assert child.controls == [StopMode.FINISH, StopMode.NOW, StopMode.KILL]
    child.exit(-9)
    rig.expect(WorkerState.STOPPED)


def test_stop_now_requeues_and_never_downgrades(rig: Rig) -> None:
    child = rig.running()
    child.send("task_start", task_id="t1", name="n", filename=None)
    child.send("progress", task_id="t1", stage="DOWNLOADING", done=10, total=100, percent=10.0, message="")
    assert rig.listener.progress[-1].stage == "DOWNLOADING"
    rig.stop(StopMode.NOW)
    assert "back to the queue" in rig.expect(WorkerState.STOPPING).message
    rig.stop(StopMode.FINISH)
    assert child.controls == [StopMode.NOW]
    child.exit(0)
    rig.expect(WorkerState.STOPPED)
    [record] = rig.listener.records
    assert record.outcome is TaskOutcome.REQUEUED and "back to the queue" in (record.error or "")


def test_silence_after_ready_restarts_the_child(rig: Rig) -> None:
    child = rig.running()
    child.exit_on = {}
    rig.advance(rig.options.heartbeat_timeout_s - 1)
    assert child.controls == []
    rig.advance(2)
    assert child.controls == [StopMode.NOW]
    rig.advance(rig.options.restart_kill_after_s + 1)
    assert child.controls == [StopMode.NOW, StopMode.KILL]
    child.exit(-9)
    status = rig.expect(WorkerState.BACKOFF)
    assert status.problem is Problem.STALLED and "no heartbeat" in status.message
    rig.advance(1)
    rig.child(2)


def test_a_consumer_that_stops_polling_is_restarted(rig: Rig) -> None:
    child = rig.running()
    child.heartbeat(since_poll_s=5)
    child.heartbeat(consumer="connecting", since_poll_s=None)
    assert rig.status.message == "Reconnecting to the broker"
    assert rig.state() is WorkerState.RUNNING
    child.heartbeat(since_poll_s=rig.options.stall_after_s + 5, reserved=1)  # busy: fine
    assert child.controls == []
    child.heartbeat(since_poll_s=rig.options.stall_after_s + 5)
    assert child.controls == [StopMode.NOW]
    child.exit(0)
    assert rig.expect(WorkerState.BACKOFF).problem is Problem.STALLED


def test_snooze_finishes_then_resumes_at_the_time(rig: Rig) -> None:
    child = rig.running()
    until = rig.clock.time() + 600
    rig.snooze(until)
    rig.expect(WorkerState.FINISHING)
    child.exit(0)
    status = rig.expect(WorkerState.SNOOZED)
    assert status.snoozed_until == until
    rig.advance(599)
    assert rig.state() is WorkerState.SNOOZED and len(rig.launcher.children) == 1
    rig.advance(2)
    rig.child(2)
    rig.expect(WorkerState.STARTING)


def test_snooze_without_end_waits_for_start(rig: Rig) -> None:
    rig.snooze(None)
    assert rig.expect(WorkerState.SNOOZED).snoozed_until is None
    rig.advance(10 * 24 * 3600)
    assert rig.launcher.children == []
    rig.start()
    rig.child()


def test_start_while_finishing_starts_again_after_the_exit(rig: Rig) -> None:
    child = rig.running()
    rig.stop()
    rig.expect(WorkerState.FINISHING)
    rig.start()
    assert len(rig.launcher.children) == 1  # not while the first child is still there
    child.exit(0)
    rig.child(2)
    assert WorkerState.STOPPED not in rig.listener.states()[-2:]


def test_stop_while_preparing_discards_the_attempt(rig: Rig) -> None:
    rig.hold_prepare = True
    rig.start()
    rig.expect(WorkerState.STARTING)
    assert len(rig.prepares) == 1 and rig.hub.calls == []  # the attempt is preparing
    rig.stop()
    rig.expect(WorkerState.STOPPED)
    rig.release_prepare()
    assert rig.hub.calls and rig.hub.closed  # the attempt finished its prepare...
    assert rig.launcher.children == []  # ...and its outcome was dropped
    rig.expect(WorkerState.STOPPED)


def test_progress_events_and_bad_lines_reach_the_listener_safely(rig: Rig) -> None:
    child = rig.running()
    child.raw(b"this is not json")
    child.raw(b'{"v": 1, "type": "progress"}')
    child.send("task_start", task_id="t1", name="morag.worker.process_url_task_remote", filename=None)
    child.send("progress", task_id="t1", stage="PROCESSING", done=1, total=4, percent=25.0, message="page 1")
    started, processing = rig.listener.progress
    assert started.stage == "STARTED" and started.message == "process_url_task_remote"
    assert processing.percent == 25.0 and processing.message == "page 1"
    assert rig.active_tasks()[0].task_id == "t1"
    assert rig.expect(WorkerState.RUNNING).message == "Working on 1 task"
    child.send(
        "task_end", task_id="t1", outcome="failed", error="corrupt PDF", metadata={}, processing_time=0.1
    )
    assert rig.listener.records[0].error == "corrupt PDF"
    assert rig.status.message == "Waiting for work"


def test_close_stops_the_child_now_and_ends_once_it_has_exited(rig: Rig) -> None:
    child = rig.running()
    child.exit_on = {}
    rig.close()
    assert child.controls == [StopMode.NOW] and not rig.loop_ended
    rig.start()  # closing: ignored
    child.exit(0)
    assert rig.loop_ended and rig.machine.finished and child.closed
    assert rig.expect(WorkerState.STOPPED) and len(rig.launcher.children) == 1


def test_a_child_that_cannot_reach_the_broker_is_restarted_before_the_start_deadline(rig: Rig) -> None:
    rig.start()
    child = rig.child()
    child.output("consumer: Cannot connect to redis://127.0.0.1:9/0: Error 111 connecting")
    child.heartbeat(consumer="connecting", since_poll_s=None)
    rig.advance(rig.options.connect_timeout_s / 2)
    child.heartbeat(consumer="connecting", since_poll_s=None)
    assert child.controls == []
    rig.advance(rig.options.connect_timeout_s / 2 + 1)
    child.heartbeat(consumer="connecting", since_poll_s=None)
    status = rig.expect(WorkerState.BACKOFF)
    assert child.controls == [StopMode.KILL] and status.problem is Problem.BROKER_UNREACHABLE
    assert any("Cannot connect" in line for line in status.last_output)


def test_reconnecting_for_too_long_restarts_the_child_so_the_key_is_checked_again(rig: Rig) -> None:
    child = rig.running()
    child.heartbeat(consumer="connecting", since_poll_s=None)
    assert rig.status.message == "Reconnecting to the broker"
    waited = 0.0
    while waited + 10 < rig.options.connect_timeout_s:  # beats keep coming: alive, reconnecting
        rig.advance(10)
        waited += 10
        child.heartbeat(consumer="connecting", since_poll_s=None)
    assert child.controls == []  # so far a blip: keep waiting
    rig.advance(10)
    child.heartbeat(consumer="connecting", since_poll_s=None)
    assert child.controls == [StopMode.KILL]
    child.exit(-9)
    status = rig.expect(WorkerState.BACKOFF)
    assert (
        status.problem is Problem.BROKER_UNREACHABLE
        and "lost the broker connection" in status.message.lower()
    )


def test_a_refused_broker_login_confirmed_by_the_hub_ends_in_key_rejected_at_once() -> None:
    """Revocation: the child says Redis refused its login; the hub confirms; no connect_timeout_s wait."""
    rejected = KeyRejected("the hub rejected the API key (unknown, revoked or expired)")
    rig = Rig(hub=FakeHub(queue_info(), rejected))
    child = rig.running()
    child.send("task_start", task_id="t1", name="morag.worker.process_file_task_remote", filename="a.pdf")
    child.send("broker_refused", source="presence", error="invalid username-password pair")
    assert len(rig.hub.calls) == 2  # asked the hub again, at once
    assert child.controls == [StopMode.KILL]  # the task cannot be acked any more: kill, not requeue
    status = rig.expect(WorkerState.CRASHED)
    assert status.problem is Problem.KEY_REJECTED
    assert status.message.startswith("The hub rejected the API key")
    (record,) = rig.listener.records
    assert record.task_id == "t1" and record.outcome is TaskOutcome.REQUEUED
    assert record.error is not None and "rejected the API key" in record.error
    rig.advance(600)
    assert len(rig.launcher.children) == 1  # no retry: the key is gone


def test_a_refused_broker_login_with_a_key_the_hub_still_accepts_keeps_the_worker() -> None:
    rig = Rig(hub=FakeHub(queue_info()))
    child = rig.running()
    child.send("broker_refused", source="consumer", error="WRONGPASS invalid username-password pair")
    assert len(rig.hub.calls) == 2 and child.controls == []
    rig.expect(WorkerState.RUNNING)
    child.send("broker_refused", source="consumer", error="WRONGPASS invalid username-password pair")
    assert len(rig.hub.calls) == 3  # asked again on the next report, one check at a time


def test_a_refused_broker_login_while_the_hub_is_unreachable_waits_for_the_usual_deadlines() -> None:
    down = HubUnreachable("cannot reach the hub at http://hub.test:8700 (ConnectionError)")
    rig = Rig(hub=FakeHub(queue_info(), down))
    child = rig.running()
    child.send("broker_refused", source="presence", error="WRONGPASS")
    assert child.controls == []
    rig.expect(WorkerState.RUNNING)


# ---- the threaded Supervisor, end to end ----------------------------------------------------
# Its own loop thread, prepare threads and listener shield: these wait across threads.


@contextlib.contextmanager
def threaded(listener: RecordingListener) -> Iterator[tuple[Supervisor, FakeLauncher]]:
    launcher = FakeLauncher()
    sup = Supervisor(
        Settings(hub_url="http://hub.test:8700"),
        key_resolver=lambda: KEY,
        hub_client_factory=FakeHub(),
        listener=listener,
        launcher=launcher,
        clock=FakeClock(),
        gpu_probe=FakeGpuProbe([make_gpu()]),
        env={"PATH": "/usr/bin"},
        options=SupervisorOptions(backoff_jitter=0.0),
        rng=lambda: 0.0,
    )
    try:
        yield sup, launcher
    finally:
        for child in launcher.children:  # let live children obey the close
            child.exit_on = {mode: 0 for mode in StopMode}
        sup.close(timeout=10)
        assert not sup._thread.is_alive()


def test_threaded_a_broken_listener_does_not_stop_the_supervisor() -> None:
    listener = RecordingListener()
    calls = []

    def explode(status: WorkerStatus) -> None:
        calls.append(status)
        raise RuntimeError("front end bug")

    listener.on_status = explode  # type: ignore[method-assign]
    with threaded(listener) as (sup, launcher):
        sup.start()
        wait_for(lambda: launcher.children, timeout=10, what="a child")
        launcher.last.ready()
        wait_for(lambda: any(s.state is WorkerState.RUNNING for s in calls), timeout=10)


def test_threaded_close_stops_the_child_now_and_joins() -> None:
    listener = RecordingListener()
    with threaded(listener) as (sup, launcher):
        sup.start()
        wait_for(lambda: launcher.children, timeout=10, what="a child")
        child = launcher.last
        child.ready()
        wait_for(lambda: sup.status.state is WorkerState.RUNNING, timeout=10)
        child.exit_on = {StopMode.NOW: 0}
        sup.close(timeout=10)
        assert child.controls == [StopMode.NOW]
        assert sup.status.state is WorkerState.STOPPED and listener.last() == sup.status
        assert not sup._thread.is_alive()
        assert not any(thread.is_alive() for thread in sup._machine.prepare_threads)


def test_threaded_settings_source_is_read_at_each_attempt_and_its_errors_are_clear(tmp_path: Path) -> None:
    from morag_worker.core.config.settings import SettingsStore
    from morag_worker.core.supervisor.supervisor import supervisor_for

    store = SettingsStore(tmp_path)
    store.save(Settings(hub_url="http://127.0.0.1:1"))
    listener = RecordingListener()
    env = {"MORAG_API_KEY": KEY, "MAIN_SERVER_URL": ""}
    sup = supervisor_for(
        listener, settings_store=store, credentials=None, env=env, options=SupervisorOptions(max_attempts=1)
    )
    try:
        sup.start()
        wait_for(lambda: sup.status.state is WorkerState.CRASHED, timeout=30)
        assert "127.0.0.1:1" in sup.status.message and sup.status.problem is Problem.HUB_UNREACHABLE
        starting = [s.message for s in listener.statuses if s.state is WorkerState.STARTING]
        assert starting[0] == "Connecting to the hub at http://127.0.0.1:1"  # not the default hub
        (tmp_path / "settings.json").write_text("{not json")
        sup.start()
        wait_for(lambda: sup.status.problem is Problem.CONFIG, timeout=30)
        assert "not valid JSON" in sup.status.message
    finally:
        sup.close(timeout=10)


# ---- the hub away while the child runs ---------------------------------------------------------


def test_an_unreachable_hub_is_shown_with_its_retry_and_ends_when_it_answers(rig: Rig) -> None:
    child = rig.running()
    child.send("task_start", task_id="t1", name="morag.worker.process_file_task_remote", filename="a.txt")
    child.send("hub", reachable=False, retry_in_s=3.6)
    status = rig.expect(WorkerState.WAITING_FOR_HUB)
    assert status.message == "Hub unreachable, retrying in 4 s."
    assert status.problem is Problem.HUB_UNREACHABLE and status.active_tasks == 1
    assert status.retry_at == rig.clock.time() + 4
    child.send("hub", reachable=False, retry_in_s=8)  # the next try: refreshed
    assert rig.expect(WorkerState.WAITING_FOR_HUB).message == "Hub unreachable, retrying in 8 s."
    # Paused on purpose: not polling the broker is no stall, and heartbeats keep the state.
    child.send(
        "heartbeat", consumer="connected", since_poll_s=rig.options.stall_after_s + 5, reserved=0, paused=True
    )
    assert child.controls == [] and rig.state() is WorkerState.WAITING_FOR_HUB
    child.send("hub", reachable=True, retry_in_s=None)
    status = rig.expect(WorkerState.RUNNING)
    assert (status.message, status.retry_at, status.problem) == ("Working on 1 task", None, None)


def test_stopping_while_the_hub_is_away_takes_over_the_status(rig: Rig) -> None:
    child = rig.running()
    child.send("hub", reachable=False, retry_in_s=2)
    rig.expect(WorkerState.WAITING_FOR_HUB)
    rig.stop(StopMode.FINISH)
    rig.expect(WorkerState.FINISHING)
    child.send("hub", reachable=False, retry_in_s=4)
    assert rig.state() is WorkerState.FINISHING


# ---- held back by the contributor's rules (issue 13) ------------------------------------------


def test_the_supervisor_shows_why_intake_is_paused_and_the_task_in_hand_finishes(rig: Rig) -> None:
    child = rig.running()
    child.send("task_start", task_id="t1", name="morag.worker.process_file_task_remote", filename="a.wav")
    child.send("intake", held=True, reason="GPU at 86 °C, waiting for 78 °C")
    status = rig.expect(WorkerState.HELD_BACK)
    assert status.message == "Paused: GPU at 86 °C, waiting for 78 °C. The task in hand finishes first."
    assert status.held_reason == "GPU at 86 °C, waiting for 78 °C" and status.active_tasks == 1
    # Paused on purpose: not polling the broker is no stall, and no stop is sent to the child.
    child.send(
        "heartbeat", consumer="connected", since_poll_s=rig.options.stall_after_s + 5, reserved=0, paused=True
    )
    child.send("task_end", task_id="t1", outcome="succeeded", error=None, metadata={}, processing_time=1.0)
    status = rig.expect(WorkerState.HELD_BACK)
    assert status.message == "Paused: GPU at 86 °C, waiting for 78 °C." and status.active_tasks == 0
    assert child.controls == []
    child.send("intake", held=False, reason=None)
    status = rig.expect(WorkerState.RUNNING)
    assert (status.message, status.held_reason) == ("Waiting for work", None)


def test_the_rules_for_when_to_contribute_reach_the_child_with_the_chosen_gpu() -> None:
    settings = Settings(hub_url="http://hub.test:8700", idle_minutes=5, time_windows="Sat-Sun all day")
    r = Rig(settings=settings)
    r.start()
    env = r.child().command.env
    assert env["MORAG_WORKER_GPU_INDEX"] == "0" and env["MORAG_GPU_TEMP_LIMIT_C"] == "83"
    assert (env["MORAG_IDLE_MINUTES"], env["MORAG_TIME_WINDOWS"], env["MORAG_PAUSE_ON_BATTERY"]) == (
        "5",
        "Sat-Sun all day",
        "on",
    )
    no_gpu = Rig(gpus=[])
    no_gpu.start()
    assert "MORAG_WORKER_GPU_INDEX" not in no_gpu.child().command.env


# ---- finishing: what follows, shown at once (issue 11, points 7 and 11) --------------------------


def _task(child: FakeChild, task_id: str) -> None:
    child.send("task_start", task_id=task_id, name="morag.worker.process_file_task_remote", filename="a.pdf")


def test_finishing_counts_the_tasks_and_says_what_follows(rig: Rig) -> None:
    child = rig.running()
    _task(child, "t1")
    _task(child, "t2")
    rig.stop(StopMode.FINISH)
    status = rig.expect(WorkerState.FINISHING)
    assert status.message == "Finishing 2 tasks, then pausing" and status.then is WorkerState.STOPPED
    until = rig.clock.time() + 600
    rig.snooze(until)  # already finishing: the snooze is shown at once, not when the tasks end
    status = rig.expect(WorkerState.FINISHING)
    assert status.then is WorkerState.SNOOZED and status.snoozed_until == until
    assert status.message == "Finishing 2 tasks, then snoozing"
    rig.start()  # undoes it: the worker starts again once the tasks are done
    status = rig.expect(WorkerState.FINISHING)
    assert status.then is WorkerState.STARTING and status.message == "Finishing 2 tasks, then restarting"
    rig.stop(StopMode.FINISH)  # and pausing again undoes that
    assert rig.expect(WorkerState.FINISHING).then is WorkerState.STOPPED
    child.send("task_end", task_id="t1", outcome="succeeded", error=None, metadata={}, processing_time=1.0)
    assert rig.expect(WorkerState.FINISHING).message == "Finishing the current task, then pausing"
    child.send("task_end", task_id="t2", outcome="succeeded", error=None, metadata={}, processing_time=1.0)
    child.exit(0)
    assert rig.expect(WorkerState.STOPPED).message == "Paused"  # asked to pause, so not "Stopped"


def test_stop_now_ends_in_stopped_not_paused(rig: Rig) -> None:
    child = rig.running()
    rig.stop(StopMode.NOW)
    child.exit(0)
    assert rig.expect(WorkerState.STOPPED).message == "Stopped"


def test_a_key_that_fails_signs_the_user_out(rig: Rig) -> None:
    child = rig.running()
    assert rig.status.user_id is not None
    rig.stop(StopMode.NOW)
    child.exit(0)
    rig.key_error = NoApiKey("no API key for http://hub.test:8700", "run `morag-worker login`")
    rig.start()
    status = rig.expect(WorkerState.CRASHED)
    assert status.problem is Problem.NO_API_KEY and status.user_id is None and status.queues == ()


def test_threaded_connecting_names_the_hub_saved_since_the_supervisor_was_built(tmp_path: Path) -> None:
    from morag_worker.core.config.settings import SettingsStore
    from morag_worker.core.supervisor.supervisor import supervisor_for

    store = SettingsStore(tmp_path)
    store.save(Settings(hub_url="http://127.0.0.1:1"))
    listener = RecordingListener()
    env = {"MORAG_API_KEY": KEY, "MAIN_SERVER_URL": ""}
    sup = supervisor_for(
        listener, settings_store=store, credentials=None, env=env, options=SupervisorOptions(max_attempts=1)
    )
    try:
        store.save(Settings(hub_url="http://127.0.0.1:2"))  # a settings dialog saved a new hub
        sup.start()
        wait_for(lambda: sup.status.state is WorkerState.CRASHED, timeout=30)
        starting = [s.message for s in listener.statuses if s.state is WorkerState.STARTING]
        assert starting[-1] == "Connecting to the hub at http://127.0.0.1:2"
        assert "127.0.0.1:2" in sup.status.message
        assert "Error" not in sup.status.message  # no exception class names for people
    finally:
        sup.close(timeout=10)


def test_threaded_the_start_asks_the_hub_with_a_bounded_wait() -> None:
    from morag_worker.core.hub_client import QUICK_TIMEOUT, quick_client
    from morag_worker.core.supervisor.supervisor import supervisor_for

    sup = supervisor_for(RecordingListener(), settings_loader=Settings, credentials=None, env={})
    try:
        assert sup._machine._hub_client_factory is quick_client
        assert quick_client("http://hub.test", KEY)._timeout == QUICK_TIMEOUT and max(QUICK_TIMEOUT) <= 15
    finally:
        sup.close(timeout=10)
