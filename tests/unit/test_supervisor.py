"""The supervisor's state machine with a fake launcher, hub and clock: no process is started.

Every wait is on a condition (``wait_for``); the fake clock moves only when a test advances it,
and ``sync`` makes sure the supervisor has handled everything sent before it.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from morag_worker.core.config.credentials import NoApiKey
from morag_worker.core.config.settings import Settings
from morag_worker.core.hub_client import HubError, HubUnreachable, KeyRejected
from morag_worker.core.naming import WorkerType
from morag_worker.core.results import TaskOutcome
from morag_worker.core.supervisor.events import Problem, StopMode, WorkerState, WorkerStatus
from morag_worker.core.supervisor.options import backoff_delay
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
_tokens = itertools.count()


class Rig:
    def __init__(
        self,
        hub: FakeHub | None = None,
        options: SupervisorOptions | None = None,
        gpus: list | None = None,
        key_error: Exception | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.launcher = FakeLauncher()
        self.hub = hub or FakeHub()
        self.listener = RecordingListener()
        self.key_error = key_error
        self.sup = Supervisor(
            settings or Settings(hub_url="http://hub.test:8700"),
            key_resolver=self.resolve_key,
            hub_client_factory=self.hub,
            listener=self.listener,
            launcher=self.launcher,
            clock=self.clock,
            gpu_probe=FakeGpuProbe([make_gpu()] if gpus is None else gpus),
            env={"PATH": "/usr/bin", "MORAG_API_KEY": "stale"},
            options=options or SupervisorOptions(backoff_jitter=0.0),
            rng=lambda: 0.0,
        )

    def resolve_key(self) -> str:
        if self.key_error is not None:
            raise self.key_error
        return KEY

    def state(self) -> WorkerState | None:
        last = self.listener.last()
        return last.state if last else None

    def wait_state(self, state: WorkerState, what: str = "") -> WorkerStatus:
        wait_for(lambda: self.state() is state, timeout=10, what=f"state {state.value} {what}")
        status = self.listener.last()
        assert status is not None
        return status

    def wait_child(self, count: int = 1) -> FakeChild:
        wait_for(lambda: len(self.launcher.children) >= count, timeout=10, what=f"child #{count}")
        return self.launcher.children[count - 1]

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.sup.tick()

    def sync(self, child: FakeChild) -> None:
        token = f"sync-{next(_tokens)}"
        child.output(token)
        wait_for(lambda: token in self.listener.logs, timeout=10, what="the supervisor to catch up")

    def close(self) -> None:
        for child in self.launcher.children:  # let live children obey the close
            child.exit_on = {mode: 0 for mode in StopMode}
        self.sup.close(timeout=10)
        assert not self.sup._thread.is_alive()

    def running(self) -> FakeChild:
        self.sup.start()
        child = self.wait_child(len(self.launcher.children) + 1)
        child.ready()
        self.wait_state(WorkerState.RUNNING)
        return child


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


@contextlib.contextmanager
def make_rig(**kwargs: object) -> Iterator[Rig]:
    r = Rig(**kwargs)  # type: ignore[arg-type]
    try:
        yield r
    finally:
        r.close()


def test_running_only_after_the_child_says_ready(rig: Rig) -> None:
    rig.sup.start()
    child = rig.wait_child()
    rig.wait_state(WorkerState.STARTING)
    child.heartbeat(consumer="starting")
    child.output("celery banner")
    rig.sync(child)
    assert WorkerState.RUNNING not in rig.listener.states()
    child.ready()
    status = rig.wait_state(WorkerState.RUNNING)
    assert status.message == "Waiting for work"
    assert status.user_id == "u1" and status.queues == ("gpu-tasks-u1", "cpu-tasks-u1")
    assert rig.hub.calls == [("http://hub.test:8700", KEY)]


def test_the_key_reaches_the_child_only_through_its_environment(rig: Rig) -> None:
    rig.sup.start()
    command = rig.wait_child().command
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
    with make_rig(gpus=[]) as r:
        r.sup.start()
        command = r.wait_child().command
        assert command.argv[command.argv.index("-Q") + 1] == "gpu-tasks-u1,cpu-tasks-u1"
        assert "CUDA_VISIBLE_DEVICES" not in command.env and "MORAG_WORKER_GPU" not in command.env
        status = r.wait_state(WorkerState.STARTING)
        assert status.queues == ("gpu-tasks-u1", "cpu-tasks-u1")
        assert status.notice is not None and "transcribed on the CPU" in status.notice


def test_worker_type_cpu_serves_only_the_cpu_queue_and_hides_the_gpus() -> None:
    with make_rig(settings=Settings(hub_url="http://hub.test:8700", worker_type=WorkerType.CPU)) as r:
        r.sup.start()
        command = r.wait_child().command
        assert command.argv[command.argv.index("-Q") + 1] == "cpu-tasks-u1"
        assert command.env["CUDA_VISIBLE_DEVICES"] == ""
        assert r.wait_state(WorkerState.STARTING).notice is None


def test_windows_plan_runs_the_wrapper_with_a_control_pipe() -> None:
    with make_rig(options=SupervisorOptions(platform="win32")) as r:
        r.sup.start()
        command = r.wait_child().command
        assert command.argv[1:3] == ["-m", "morag_worker.core.execution.windows_wrapper"]
        assert command.pool == "threads" and command.uses_control_pipe


def test_hub_unreachable_backs_off_with_capped_exponential_delays_then_recovers() -> None:
    down = HubUnreachable("cannot reach the hub at http://hub.test:8700 (ConnectionError)")
    hub = FakeHub(down, down, down, down, queue_info())
    options = SupervisorOptions(backoff_jitter=0.0, backoff_base_s=1, backoff_cap_s=3)
    with make_rig(hub=hub, options=options) as r:
        r.sup.start()
        delays = []
        for attempt in range(1, 5):
            status = r.wait_state(WorkerState.BACKOFF, f"attempt {attempt}")
            assert status.problem is Problem.HUB_UNREACHABLE and status.attempt == attempt
            assert f"attempt {attempt + 1}" in status.message and "Cannot reach the hub" in status.message
            assert status.retry_at is not None
            delays.append(round(status.retry_at - r.clock.time()))
            r.advance(delays[-1])
            calls = attempt + 1
            wait_for(lambda: len(r.hub.calls) >= calls, timeout=10, what="the next attempt")  # noqa: B023
        assert delays == [1, 2, 3, 3]
        r.wait_child().ready()
        assert r.wait_state(WorkerState.RUNNING).attempt == 4  # reset only after a healthy period


def test_backoff_delay_jitter_and_cap() -> None:
    options = SupervisorOptions(backoff_base_s=2, backoff_cap_s=100, backoff_jitter=0.5)
    assert backoff_delay(1, options, lambda: 0.0) == 2
    assert backoff_delay(3, options, lambda: 1.0) == 12
    assert backoff_delay(50, options, lambda: 0.0) == 100


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
    kwargs = {"hub": FakeHub(error)} if error else {"key_error": NoApiKey("no API key for x", "log in")}
    with make_rig(**kwargs) as r:
        r.sup.start()
        status = r.wait_state(WorkerState.CRASHED)
        assert status.problem is problem
        r.advance(3600)
        r.sup.stop()
        r.wait_state(WorkerState.STOPPED)
        assert len(r.hub.calls) <= 1 and r.launcher.children == []
        if problem is Problem.KEY_REJECTED:
            assert "rejected the API key" in status.message


def test_hub_error_is_retried_and_max_attempts_gives_up() -> None:
    hub = FakeHub(HubError("the hub answered 500: boom"))
    with make_rig(hub=hub, options=SupervisorOptions(backoff_jitter=0.0, max_attempts=2)) as r:
        r.sup.start()
        assert r.wait_state(WorkerState.BACKOFF).problem is Problem.HUB_ERROR
        r.advance(1)
        status = r.wait_state(WorkerState.CRASHED)
        assert status.problem is Problem.HUB_ERROR and "gave up after 2 attempts" in status.message


def test_launch_failure_is_a_clear_crash() -> None:
    with make_rig() as r:
        r.launcher.error = FileNotFoundError(2, "No such file or directory")
        r.sup.start()
        status = r.wait_state(WorkerState.CRASHED)
        assert status.problem is Problem.LAUNCH_FAILED and "cannot start the worker" in status.message.lower()


def test_start_deadline_kills_the_silent_child_and_attaches_its_output(rig: Rig) -> None:
    rig.sup.start()
    child = rig.wait_child()
    child.output("Traceback: something went wrong")
    rig.sync(child)
    rig.advance(rig.sup.options.start_timeout_s + 1)
    status = rig.wait_state(WorkerState.BACKOFF)
    assert child.controls == [StopMode.KILL]
    assert status.problem is Problem.START_TIMEOUT
    assert "Traceback: something went wrong" in status.last_output
    rig.advance(1)
    rig.wait_child(2)


def test_start_deadline_while_connecting_is_broker_unreachable(rig: Rig) -> None:
    rig.sup.start()
    child = rig.wait_child()
    child.heartbeat(consumer="connecting", since_poll_s=None)
    wait_for(lambda: "broker" in rig.sup.status.message, timeout=10)
    rig.sync(child)
    rig.advance(rig.sup.options.start_timeout_s + 1)
    assert rig.wait_state(WorkerState.BACKOFF).problem is Problem.BROKER_UNREACHABLE


def test_a_crashed_child_is_restarted_and_a_healthy_run_resets_the_count(rig: Rig) -> None:
    child = rig.running()
    child.output("Unrecoverable error: boom")
    child.exit(1)
    status = rig.wait_state(WorkerState.BACKOFF)
    assert status.problem is Problem.CRASHED and "exit status 1" in status.message and status.attempt == 1
    assert "Unrecoverable error: boom" in status.last_output
    rig.advance(1)
    second = rig.wait_child(2)
    second.ready()
    rig.wait_state(WorkerState.RUNNING)
    rig.sync(second)
    rig.advance(rig.sup.options.healthy_after_s + 1)
    second.heartbeat()
    rig.sync(second)
    second.exit(1)
    assert rig.wait_state(WorkerState.BACKOFF).attempt == 1


def test_finish_waits_for_the_task_then_stops(rig: Rig) -> None:
    child = rig.running()
    child.send("task_start", task_id="t1", name="morag.worker.process_file_task_remote", filename="a.pdf")
    wait_for(lambda: rig.sup.status.active_tasks == 1, timeout=10)
    rig.sup.stop(StopMode.FINISH)
    status = rig.wait_state(WorkerState.FINISHING)
    assert child.controls == [StopMode.FINISH] and "Finishing the current task" in status.message
    rig.sync(child)
    rig.advance(24 * 3600)  # no timeout by default while a task runs
    rig.sync(child)
    assert child.controls == [StopMode.FINISH]
    child.send("task_end", task_id="t1", outcome="succeeded", error=None, metadata={}, processing_time=1.0)
    wait_for(lambda: rig.listener.records, timeout=10)
    child.exit(0)
    rig.wait_state(WorkerState.STOPPED)
    [record] = rig.listener.records
    assert record.outcome is TaskOutcome.SUCCEEDED and record.filename == "a.pdf"


def test_finish_with_nothing_running_escalates_to_now_then_kill(rig: Rig) -> None:
    child = rig.running()
    child.exit_on = {}
    rig.sup.stop(StopMode.FINISH)
    rig.wait_state(WorkerState.FINISHING)
    rig.sync(child)
    rig.advance(rig.sup.options.idle_finish_timeout_s + 1)
    rig.wait_state(WorkerState.STOPPING)
    rig.sync(child)
    rig.advance(rig.sup.options.now_timeout_s + 1)
    wait_for(lambda: child.controls == [StopMode.FINISH, StopMode.NOW, StopMode.KILL], timeout=10)
    child.exit(-9)
    rig.wait_state(WorkerState.STOPPED)


def test_stop_now_requeues_and_never_downgrades(rig: Rig) -> None:
    child = rig.running()
    child.send("task_start", task_id="t1", name="n", filename=None)
    child.send("progress", task_id="t1", stage="DOWNLOADING", done=10, total=100, percent=10.0, message="")
    wait_for(lambda: rig.listener.progress and rig.listener.progress[-1].stage == "DOWNLOADING", timeout=10)
    rig.sup.stop(StopMode.NOW)
    assert "back to the queue" in rig.wait_state(WorkerState.STOPPING).message
    rig.sup.stop(StopMode.FINISH)
    rig.sync(child)
    assert child.controls == [StopMode.NOW]
    child.exit(0)
    rig.wait_state(WorkerState.STOPPED)
    [record] = rig.listener.records
    assert record.outcome is TaskOutcome.REQUEUED and "back to the queue" in (record.error or "")


def test_silence_after_ready_restarts_the_child(rig: Rig) -> None:
    child = rig.running()
    child.exit_on = {}
    rig.sync(child)
    rig.advance(rig.sup.options.heartbeat_timeout_s + 1)
    wait_for(lambda: child.controls == [StopMode.NOW], timeout=10)
    rig.sync(child)
    rig.advance(rig.sup.options.restart_kill_after_s + 1)
    wait_for(lambda: child.controls == [StopMode.NOW, StopMode.KILL], timeout=10)
    child.exit(-9)
    status = rig.wait_state(WorkerState.BACKOFF)
    assert status.problem is Problem.STALLED and "no heartbeat" in status.message
    rig.advance(1)
    rig.wait_child(2)


def test_a_consumer_that_stops_polling_is_restarted(rig: Rig) -> None:
    child = rig.running()
    child.heartbeat(since_poll_s=5)
    child.heartbeat(consumer="connecting", since_poll_s=None)
    wait_for(lambda: rig.sup.status.message == "Reconnecting to the broker", timeout=10)
    assert rig.state() is WorkerState.RUNNING
    child.heartbeat(since_poll_s=rig.sup.options.stall_after_s + 5, reserved=1)  # busy: fine
    rig.sync(child)
    assert child.controls == []
    child.heartbeat(since_poll_s=rig.sup.options.stall_after_s + 5)
    wait_for(lambda: child.controls == [StopMode.NOW], timeout=10)
    child.exit(0)
    assert rig.wait_state(WorkerState.BACKOFF).problem is Problem.STALLED


def test_snooze_finishes_then_resumes_at_the_time(rig: Rig) -> None:
    child = rig.running()
    until = rig.clock.time() + 600
    rig.sup.snooze(until)
    rig.wait_state(WorkerState.FINISHING)
    child.exit(0)
    status = rig.wait_state(WorkerState.SNOOZED)
    assert status.snoozed_until == until
    rig.advance(601)
    rig.wait_child(2)
    rig.wait_state(WorkerState.STARTING)


def test_snooze_without_end_waits_for_start(rig: Rig) -> None:
    rig.sup.snooze(None)
    assert rig.wait_state(WorkerState.SNOOZED).snoozed_until is None
    rig.advance(10 * 24 * 3600)
    rig.sup.start()
    rig.wait_child()


def test_start_while_finishing_starts_again_after_the_exit(rig: Rig) -> None:
    child = rig.running()
    rig.sup.stop()
    rig.wait_state(WorkerState.FINISHING)
    rig.sup.start()
    rig.sync(child)
    child.exit(0)
    rig.wait_child(2)
    assert WorkerState.STOPPED not in rig.listener.states()[-2:]


def test_stop_while_preparing_discards_the_attempt() -> None:
    release = threading.Event()

    class SlowHub(FakeHub):
        def queue_info(self):  # type: ignore[no-untyped-def]
            release.wait(10)
            return super().queue_info()

    with make_rig(hub=SlowHub()) as r:
        r.sup.start()
        r.wait_state(WorkerState.STARTING)
        r.sup.stop()
        r.wait_state(WorkerState.STOPPED)
        release.set()
        wait_for(lambda: r.hub.closed, timeout=10)
        r.sup.tick()
        assert r.launcher.children == []


def test_progress_events_and_bad_lines_reach_the_listener_safely(rig: Rig) -> None:
    child = rig.running()
    child.raw(b"this is not json")
    child.raw(b'{"v": 1, "type": "progress"}')
    child.send("task_start", task_id="t1", name="morag.worker.process_url_task_remote", filename=None)
    child.send("progress", task_id="t1", stage="PROCESSING", done=1, total=4, percent=25.0, message="page 1")
    wait_for(lambda: len(rig.listener.progress) == 2, timeout=10)
    started, processing = rig.listener.progress
    assert started.stage == "STARTED" and started.message == "process_url_task_remote"
    assert processing.percent == 25.0 and processing.message == "page 1"
    assert rig.sup.active_tasks()[0].task_id == "t1"
    assert rig.wait_state(WorkerState.RUNNING).message == "Working on 1 task"
    child.send(
        "task_end", task_id="t1", outcome="failed", error="corrupt PDF", metadata={}, processing_time=0.1
    )
    wait_for(lambda: rig.listener.records, timeout=10)
    assert rig.listener.records[0].error == "corrupt PDF"
    wait_for(lambda: rig.sup.status.message == "Waiting for work", timeout=10)


def test_a_broken_listener_does_not_stop_the_supervisor(rig: Rig) -> None:
    calls = []

    def explode(status: WorkerStatus) -> None:
        calls.append(status)
        raise RuntimeError("front end bug")

    rig.listener.on_status = explode  # type: ignore[method-assign]
    rig.sup.start()
    rig.wait_child().ready()
    wait_for(lambda: any(s.state is WorkerState.RUNNING for s in calls), timeout=10)


def test_close_stops_the_child_now_and_joins() -> None:
    r = Rig()
    child = r.running()
    child.exit_on = {StopMode.NOW: 0}
    r.sup.close(timeout=10)
    assert child.controls == [StopMode.NOW]
    assert r.state() is WorkerState.STOPPED
    assert not r.sup._thread.is_alive()


def test_settings_source_is_read_at_each_attempt_and_its_errors_are_clear(tmp_path: Path) -> None:
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


def test_a_child_that_cannot_reach_the_broker_is_restarted_before_the_start_deadline(rig: Rig) -> None:
    rig.sup.start()
    child = rig.wait_child()
    child.output("consumer: Cannot connect to redis://127.0.0.1:9/0: Error 111 connecting")
    child.heartbeat(consumer="connecting", since_poll_s=None)
    rig.sync(child)
    rig.advance(rig.sup.options.connect_timeout_s / 2)
    child.heartbeat(consumer="connecting", since_poll_s=None)
    rig.sync(child)
    assert child.controls == []
    rig.advance(rig.sup.options.connect_timeout_s / 2 + 1)
    child.heartbeat(consumer="connecting", since_poll_s=None)
    status = rig.wait_state(WorkerState.BACKOFF)
    assert child.controls == [StopMode.KILL] and status.problem is Problem.BROKER_UNREACHABLE
    assert any("Cannot connect" in line for line in status.last_output)


def test_reconnecting_for_too_long_restarts_the_child_so_the_key_is_checked_again(rig: Rig) -> None:
    child = rig.running()
    child.heartbeat(consumer="connecting", since_poll_s=None)
    wait_for(lambda: rig.sup.status.message == "Reconnecting to the broker", timeout=10)
    waited = 0.0
    while waited + 10 < rig.sup.options.connect_timeout_s:  # beats keep coming: alive, reconnecting
        rig.advance(10)
        waited += 10
        child.heartbeat(consumer="connecting", since_poll_s=None)
        rig.sync(child)
    assert child.controls == []  # so far a blip: keep waiting
    rig.advance(10)
    child.heartbeat(consumer="connecting", since_poll_s=None)
    wait_for(lambda: child.controls == [StopMode.KILL], timeout=10)
    child.exit(-9)
    status = rig.wait_state(WorkerState.BACKOFF)
    assert (
        status.problem is Problem.BROKER_UNREACHABLE
        and "lost the broker connection" in status.message.lower()
    )
