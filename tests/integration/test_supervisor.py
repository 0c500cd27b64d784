"""The supervisor over a real worker child, hub and Redis (production ACL): start, stops, faults.

Long tasks are made by throttling the download through ``CuttingProxy`` (the worker's hub URL is
the proxy's), and every interruption waits for an observable condition first (a DOWNLOADING
progress event on the channel); nothing sleeps. The Windows wrapper runs here on Linux with the
platform override and its stdout channel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from morag_worker.core.hub_client import HubClient
from morag_worker.core.results import TaskOutcome
from morag_worker.core.server.watchdog import Watchdog
from morag_worker.core.supervisor.child_process import SubprocessLauncher
from morag_worker.core.supervisor.events import Problem, StopMode, WorkerState
from tests.conftest import Stack
from tests.processes import base_env, wait_for
from tests.proxy import CuttingProxy
from tests.supervised import LiveSupervisor, big_text_file, process_group, queue_length, wait_task

pytestmark = pytest.mark.integration

USER = "sam"
SLOW_BPS = 256 * 1024  # the 1 MiB input takes about 4 s to download: ample time to interrupt it
BIG_MIB = 1.0


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return stack.key(USER)


@pytest.fixture(scope="module")
def proxy(stack: Stack) -> Iterator[CuttingProxy]:
    with CuttingProxy.in_front_of(stack.hub_url) as server:
        yield server


@pytest.fixture
def slow(proxy: CuttingProxy) -> Iterator[CuttingProxy]:
    proxy.rules.rate_bps = SLOW_BPS
    try:
        yield proxy
    finally:
        proxy.rules.rate_bps = None


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return big_text_file(tmp_path_factory.mktemp("inputs") / "big.txt", BIG_MIB)


def submit(client: HubClient, path: Path) -> str:
    uploaded = client.upload(path)
    return str(client.create_task(file_id=uploaded["file_id"])["task_id"])


def downloading(task_id: str) -> object:
    return lambda p: p.task_id == task_id and p.stage == "DOWNLOADING" and p.done > 0


def test_running_only_after_ready_then_serving_with_progress(
    stack: Stack, key: str, proxy: CuttingProxy, tmp_path: Path
) -> None:
    with LiveSupervisor(proxy.url, key, tmp_path) as live:
        live.start()
        states = [s.state for s in live.listener.statuses]
        assert states.index(WorkerState.STARTING) < states.index(WorkerState.RUNNING)
        info = live.supervisor.child_info
        assert info is not None and info.queues == (f"gpu-tasks-{USER}", f"cpu-tasks-{USER}")
        # The reliability settings reached the remote role after celeryd_init switched it.
        assert info.config["task_acks_late"] is True and info.config["task_reject_on_worker_lost"] is True
        assert info.config["worker_prefetch_multiplier"] == 1
        assert info.config["worker_cancel_long_running_tasks_on_connection_loss"] is True
        assert info.config["broker_connection_retry_on_startup"] is True
        assert (
            info.config["global_keyprefix"] == f"morag:ns:{USER}:" == info.config["result_global_keyprefix"]
        )
        assert info.config["visibility_timeout"] == info.config["result_visibility_timeout"] == 10800
        assert info.config["task_time_limit"] > info.config["task_soft_time_limit"]
        assert info.config["worker_enable_remote_control"] is False
        note = tmp_path / "note.txt"
        note.write_text("supervised hello\n" * 50)
        client = HubClient(proxy.url, key)
        task_id = submit(client, note)
        view = wait_task(client, task_id)
        assert view.state == "SUCCESS" and view.result and "supervised hello" in view.result["content"]
        record = live.wait_record(task_id)
        assert record.outcome is TaskOutcome.SUCCEEDED and record.filename == "note.txt"
        assert record.metadata.get("processor") == "text"
        stages = {p.stage for p in live.listener.progress if p.task_id == task_id}
        assert {"STARTED", "DOWNLOADING", "PROCESSING"} <= stages
        live.supervisor.stop(StopMode.FINISH)
        live.wait_state(WorkerState.STOPPED)


def test_finish_during_a_task_completes_it_and_takes_no_new_one(
    stack: Stack, key: str, slow: CuttingProxy, big_file: Path, tmp_path: Path
) -> None:
    redis = stack.redis.client()
    with LiveSupervisor(slow.url, key, tmp_path) as live:
        live.start()
        client = HubClient(slow.url, key)
        first = submit(client, big_file)
        live.wait_progress(downloading(first))
        second = submit(client, big_file)
        wait_for(lambda: queue_length(redis, USER) == 1, what="the second task to wait in the queue")
        live.supervisor.stop(StopMode.FINISH)
        live.wait_state(WorkerState.FINISHING)
        live.wait_state(WorkerState.STOPPED, timeout=120)
        assert live.wait_record(first).outcome is TaskOutcome.SUCCEEDED
        assert wait_task(client, first).state == "SUCCESS"
        assert client.task(second).state == "PENDING" and queue_length(redis, USER) == 1
        assert live.records(second) == []
    slow.rules.rate_bps = None
    with LiveSupervisor(slow.url, key, tmp_path) as other:  # the left-over task is still served
        other.start()
        assert wait_task(client, second).state == "SUCCESS"


@pytest.mark.parametrize("platform", ["linux", "win32"])
def test_stop_now_requeues_the_task_and_another_worker_completes_it(
    stack: Stack, key: str, slow: CuttingProxy, big_file: Path, tmp_path: Path, platform: str
) -> None:
    redis = stack.redis.client()
    windows = platform == "win32"
    launcher = SubprocessLauncher(channel="stdout") if windows else None
    options = LiveSupervisor.options(platform=platform)
    with LiveSupervisor(slow.url, key, tmp_path, options=options, launcher=launcher) as live:
        live.start()
        client = HubClient(slow.url, key)
        task_id = submit(client, big_file)
        live.wait_progress(downloading(task_id))
        asked = time.monotonic()
        live.supervisor.stop(StopMode.NOW)
        live.wait_state(WorkerState.STOPPED, timeout=60)
        stopped_in = time.monotonic() - asked
        assert queue_length(redis, USER) == 1, "the task is back in the queue at once"
        record = live.wait_record(task_id)
        assert record.outcome is TaskOutcome.REQUEUED
        assert stopped_in < 20, stopped_in
    slow.rules.rate_bps = None
    with LiveSupervisor(slow.url, key, tmp_path) as second:
        second.start()
        view = wait_task(client, task_id)
        assert view.state == "SUCCESS" and view.result and view.result["success"]
        assert second.wait_record(task_id).outcome is TaskOutcome.SUCCEEDED
        second.supervisor.stop()
        second.wait_state(WorkerState.STOPPED)


def test_windows_wrapper_finishes_the_running_task(
    stack: Stack, key: str, slow: CuttingProxy, big_file: Path, tmp_path: Path
) -> None:
    options = LiveSupervisor.options(platform="win32")
    with LiveSupervisor(
        slow.url, key, tmp_path, options=options, launcher=SubprocessLauncher("stdout")
    ) as live:
        live.start()
        client = HubClient(slow.url, key)
        task_id = submit(client, big_file)
        live.wait_progress(downloading(task_id))
        live.supervisor.stop(StopMode.FINISH)
        live.wait_state(WorkerState.STOPPED, timeout=120)
        assert live.wait_record(task_id).outcome is TaskOutcome.SUCCEEDED
        assert wait_task(client, task_id).state == "SUCCESS"


def test_kill_9_mid_task_restarts_the_child_and_the_task_completes_once(
    stack: Stack, key: str, slow: CuttingProxy, big_file: Path, tmp_path: Path
) -> None:
    # A contributor's worker never restores stale deliveries itself (its ACL has no Lua, which
    # kombu's restore lock needs): the hub's watchdog does, once the visibility timeout has passed.
    options = LiveSupervisor.options(backoff_base_s=6.0, backoff_jitter=0.0)
    with LiveSupervisor(slow.url, key, tmp_path, options=options, CELERY_VISIBILITY_TIMEOUT="5") as live:
        live.start()
        assert live.supervisor.child_info and live.supervisor.child_info.config["visibility_timeout"] == 5
        client = HubClient(slow.url, key)
        task_id = submit(client, big_file)
        live.wait_progress(downloading(task_id))
        first_pid = live.supervisor.child_pid
        assert first_pid is not None
        downloads_before = len([r for r in slow.rules.seen if r.path.startswith("/api/v1/files/")])
        slow.rules.rate_bps = None  # the redelivered run must finish well within the visibility timeout
        os.kill(first_pid, signal.SIGKILL)
        live.wait_state(WorkerState.BACKOFF)
        assert live.status.problem is Problem.CRASHED
        live.wait_state(WorkerState.RUNNING)
        assert live.supervisor.child_pid not in (None, first_pid)
        assert process_group(first_pid) == []  # the old prefork pool process went with its group
        watchdog = Watchdog(stack.redis.url, visibility_timeout=5)  # what the hub runs every round
        try:
            wait_for(lambda: watchdog.run().restored, what="the watchdog to restore the killed task")
        finally:
            watchdog.close()
        view = wait_task(client, task_id, timeout=120)
        assert view.state == "SUCCESS"
        wait_for(lambda: len(live.records(task_id)) == 2, what="the second run's record")
        records = live.records(task_id)
        assert [r.outcome for r in records] == [TaskOutcome.REQUEUED, TaskOutcome.SUCCEEDED]
        downloads = [r for r in slow.rules.seen if r.path.startswith("/api/v1/files/")]
        assert len(downloads) == downloads_before + 1  # exactly one more run


def test_a_silent_child_is_detected_and_restarted(
    stack: Stack, key: str, proxy: CuttingProxy, tmp_path: Path
) -> None:
    options = LiveSupervisor.options(heartbeat_timeout_s=4.0, restart_kill_after_s=2.0)
    with LiveSupervisor(proxy.url, key, tmp_path, options=options) as live:
        live.start()
        stalled = live.supervisor.child_pid
        assert stalled is not None
        os.kill(stalled, signal.SIGSTOP)  # alive, but proves nothing any more
        live.wait_state(WorkerState.BACKOFF)
        assert live.status.problem is Problem.STALLED and "no heartbeat" in live.status.message
        live.wait_state(WorkerState.RUNNING)
        assert live.supervisor.child_pid != stalled and process_group(stalled) == []


def test_the_key_is_in_no_argv_and_no_log(
    stack: Stack, key: str, proxy: CuttingProxy, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with LiveSupervisor(proxy.url, key, tmp_path) as live:
        live.start()
        pid = live.supervisor.child_pid
        assert pid is not None
        note = tmp_path / "k.txt"
        note.write_text("key check\n")
        client = HubClient(proxy.url, key)
        task_id = submit(client, note)
        assert wait_task(client, task_id).state == "SUCCESS"
        members = process_group(pid)
        assert len(members) >= 2  # the Celery main process and its prefork pool process
        for member in members:
            cmdline = Path(f"/proc/{member}/cmdline").read_bytes()
            assert key.encode() not in cmdline
        assert key.encode() in Path(f"/proc/{pid}/environ").read_bytes()  # where it is meant to be
        live.supervisor.stop()
        live.wait_state(WorkerState.STOPPED)
        logs = "\n".join(live.listener.logs)
    assert logs and "worker.ready" in logs
    assert key not in logs
    captured = capfd.readouterr()
    assert key not in captured.out and key not in captured.err


def test_a_key_revoked_while_running_ends_in_a_clear_key_rejected_state(
    stack: Stack, proxy: CuttingProxy, tmp_path: Path
) -> None:
    """Revocation drops the worker's broker connections and its logins fail from then on; the
    child reports the refused login (tests/integration/test_revocation.py times it mid-task), the
    supervisor asks the hub, and stops with KEY_REJECTED."""
    revoked = stack.key("sam-revoked")
    options = LiveSupervisor.options(connect_timeout_s=3.0, restart_kill_after_s=2.0)
    with LiveSupervisor(proxy.url, revoked, tmp_path, options=options) as live:
        live.start()
        child = live.supervisor.child_pid
        assert child is not None
        done = subprocess.run(
            [sys.executable, "-m", "morag_worker", "keys", "revoke", "-"],
            input=revoked + "\n",
            env=base_env(REDIS_URL=stack.redis.url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        live.wait_state(WorkerState.CRASHED, timeout=120)
        assert live.status.problem is Problem.KEY_REJECTED, live.status
        assert "rejected" in live.status.message
        assert process_group(child) == []
