"""A hub outage mid-download, through the real supervisor, worker child, hub and Redis.

The worker reaches the hub through ``CuttingProxy``; ``rules.down`` plays the hub going away (the
response under way is cut, every new request is closed unanswered) and coming back. The test's own
observer talks to the hub directly, so it keeps seeing the tasks' states meanwhile. Every wait is
on a condition: the outage lasts until the worker has been seen retrying a few times and the
outage's length (8 s, and the 60 s of the acceptance test) has passed.

What must hold: the task in hand waits the outage out (or goes back to the queue when its deadline
passes first), no other task is taken meanwhile, the supervisor says "Hub unreachable, retrying in
N s", and in the end every task succeeds exactly once and none fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from morag_worker.core.hub_client import HubClient
from morag_worker.core.naming import namespace_prefix, queue_name
from morag_worker.core.results import TaskOutcome
from morag_worker.core.supervisor.events import Problem, StopMode, WorkerState
from tests.conftest import Stack
from tests.processes import wait_for
from tests.proxy import CuttingProxy
from tests.supervised import LiveSupervisor, big_text_file, queue_length, wait_task

pytestmark = pytest.mark.integration

USER = "olga"
SLOW_BPS = 256 * 1024  # a 1 MiB input takes about 4 s: the cut lands mid-download


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return stack.key(USER)


@pytest.fixture
def proxy(stack: Stack) -> Iterator[CuttingProxy]:
    with CuttingProxy.in_front_of(stack.hub_url) as server:
        try:
            yield server
        finally:
            server.rules.down = False


def submit_inputs(client: HubClient, tmp_path: Path, count: int) -> list[str]:
    ids = []
    for n in range(count):
        path = big_text_file(tmp_path / f"input-{n}.txt", 1.0)
        uploaded = client.upload(path)
        ids.append(str(client.create_task(file_id=uploaded["file_id"])["task_id"]))
    return ids


def refused(proxy: CuttingProxy, path: str) -> int:
    """Requests for ``path...`` that the dead hub closed unanswered."""
    return sum(1 for r in list(proxy.rules.seen) if r.upstream_down and r.path.startswith(path))


def cut_until_retried(live: LiveSupervisor, proxy: CuttingProxy, probes: int, at_least_s: float) -> float:
    """Take the hub away until the worker probed ``/healthz`` ``probes`` times and ``at_least_s``
    passed; return how long it was away."""
    proxy.rules.down = True
    cut_at = time.monotonic()
    live.wait_state(WorkerState.WAITING_FOR_HUB, timeout=60)
    wait_for(
        lambda: refused(proxy, "/healthz") >= probes and time.monotonic() - cut_at >= at_least_s,
        at_least_s + 120,
        f"{probes} probes of the dead hub over {at_least_s:g} s",
    )
    return time.monotonic() - cut_at


@pytest.mark.parametrize(("outage_s", "tasks"), [(8, 3), (60, 7)])
def test_a_hub_outage_mid_download_loses_no_task_and_fails_none(
    stack: Stack, key: str, proxy: CuttingProxy, tmp_path: Path, outage_s: float, tasks: int
) -> None:
    admin = stack.redis.client()
    observer = stack.client(key)  # straight to the hub: it sees the tasks while the proxy is down
    with (
        LiveSupervisor(proxy.url, key, tmp_path) as live,
        closing(HubClient(proxy.url, key)) as submitter,
        closing(observer),
    ):
        live.start()
        proxy.rules.rate_bps = SLOW_BPS
        task_ids = submit_inputs(submitter, tmp_path, tasks)
        first = task_ids[0]
        live.wait_progress(lambda p: p.task_id == first and p.stage == "DOWNLOADING" and p.done > 0)

        away = cut_until_retried(live, proxy, probes=3, at_least_s=outage_s)
        status = live.status
        assert status.state is WorkerState.WAITING_FOR_HUB and status.problem is Problem.HUB_UNREACHABLE
        assert status.message.startswith("Hub unreachable, retrying in ") and status.message.endswith(" s.")
        assert status.retry_at is not None
        # The task in hand waits; the others were not taken.
        assert queue_length(admin, USER) == tasks - 1
        assert {p.task_id for p in live.listener.progress} == {first}
        assert observer.task(first).state == "DOWNLOADING"
        assert not live.listener.records
        proxy.rules.down = False
        proxy.rules.rate_bps = None

        views = {task_id: wait_task(observer, task_id, timeout=180) for task_id in task_ids}
        live.wait_state(WorkerState.RUNNING)
        for task_id in task_ids:
            wait_for(lambda t=task_id: live.records(t), 60, f"the record of {task_id}")
    for task_id, view in views.items():
        assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view
        assert [r.outcome for r in live.records(task_id)] == [TaskOutcome.SUCCEEDED]
    assert all(r.outcome is TaskOutcome.SUCCEEDED for r in live.listener.records)
    first_view = views[first]
    assert first_view.result is not None and first_view.result["metadata"]["download_resumes"] >= 1
    states = live.listener.states()
    assert WorkerState.CRASHED not in states and WorkerState.BACKOFF not in states
    assert away >= outage_s


def test_an_outage_longer_than_the_deadline_requeues_the_task_without_failing_it(
    stack: Stack, key: str, proxy: CuttingProxy, tmp_path: Path
) -> None:
    admin = stack.redis.client()
    observer = stack.client(key)
    with (
        LiveSupervisor(proxy.url, key, tmp_path, MORAG_DOWNLOAD_DEADLINE_S="8") as live,
        closing(HubClient(proxy.url, key)) as submitter,
        closing(observer),
    ):
        live.start()
        proxy.rules.rate_bps = SLOW_BPS
        (task_id,) = submit_inputs(submitter, tmp_path, 1)
        live.wait_progress(lambda p: p.task_id == task_id and p.stage == "DOWNLOADING" and p.done > 0)
        proxy.rules.down = True
        live.wait_state(WorkerState.WAITING_FOR_HUB, timeout=60)

        record = live.wait_record(task_id, timeout=60)
        assert record.outcome is TaskOutcome.REQUEUED, record
        assert record.error and "could not be reached" in record.error and "back to the queue" in record.error
        # Back in the queue, and not taken again while the hub is away.
        wait_for(lambda: queue_length(admin, USER) == 1, 60, "the task to be back in the queue")
        wait_for(lambda: refused(proxy, "/healthz") >= 2, 120, "the worker to probe the dead hub")
        assert queue_length(admin, USER) == 1 and len(live.records(task_id)) == 1
        assert any("hub.consumer_paused" in line for line in list(live.listener.logs))
        assert live.status.state is WorkerState.WAITING_FOR_HUB
        assert observer.task(task_id).state not in ("FAILURE", "SUCCESS")

        proxy.rules.down = False
        proxy.rules.rate_bps = None
        view = wait_task(observer, task_id, timeout=180)
        wait_for(lambda: len(live.records(task_id)) == 2, 60, "the second record")
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view
    assert [r.outcome for r in live.records(task_id)] == [TaskOutcome.REQUEUED, TaskOutcome.SUCCEEDED]


def test_finishing_during_an_outage_hands_the_task_back_at_once(
    stack: Stack, key: str, proxy: CuttingProxy, tmp_path: Path
) -> None:
    admin = stack.redis.client()
    with LiveSupervisor(proxy.url, key, tmp_path) as live, closing(HubClient(proxy.url, key)) as submitter:
        live.start()
        proxy.rules.rate_bps = SLOW_BPS
        (task_id,) = submit_inputs(submitter, tmp_path, 1)
        live.wait_progress(lambda p: p.task_id == task_id and p.stage == "DOWNLOADING" and p.done > 0)
        proxy.rules.down = True
        live.wait_state(WorkerState.WAITING_FOR_HUB, timeout=60)
        # Finish cannot finish a download from a hub that is away: the task goes back instead of
        # holding the stop until the download's deadline (an hour by default).
        live.supervisor.stop(StopMode.FINISH)
        live.wait_state(WorkerState.STOPPED, timeout=60)
        record = live.wait_record(task_id)
    assert record.outcome is TaskOutcome.REQUEUED, record
    assert record.error and "worker is stopping" in record.error
    assert queue_length(admin, USER) == 1
    admin.delete(namespace_prefix(USER) + queue_name(USER, "gpu"))  # empty for the next test
