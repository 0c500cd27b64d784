"""What one task costs on the way (issue 14): connections to the hub kept between tasks, progress
states written only once a person could see them, no Redis call for a first delivery's count, no
converter child for a small plain-text input, one log line per task at INFO, and downloads that
hand small pieces to their writer a chunk at a time."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog.testing

from morag_worker.core.cli.devstack import RedisServer
from morag_worker.core.execution.context import WorkerRuntime
from morag_worker.core.execution.deliveries import DeliveryCounter
from morag_worker.core.execution.pipeline import INLINE_TEXT_MAX_BYTES, InfrastructureError, converts_inline
from morag_worker.core.execution.progress_reporter import ProgressReporter, SettledStates
from morag_worker.core.execution.task_args import read_task
from morag_worker.core.processing import ProcessorRegistry
from morag_worker.core.processing.text import TextProcessor
from morag_worker.core.results import ProgressMeta, TaskResult
from tests.httpserver import HTTPTestServer, Route
from tests.processes import wait_for

pytestmark = pytest.mark.unit

USER = "alice"
API_KEY = "k3y-" + "Zq9" * 12
PARAMS = ("file_url", "user_id", "content_type", "task_options")


@pytest.fixture
def hub() -> Iterator[HTTPTestServer]:
    with HTTPTestServer() as srv:
        yield srv


def runtime_for(hub: HTTPTestServer, tmp_path: Path) -> WorkerRuntime:
    runtime = WorkerRuntime(
        {"MAIN_SERVER_URL": hub.origin, "MORAG_API_KEY": API_KEY, "TEMP_DIR": str(tmp_path)}
    )
    runtime.configure(own_user_id=USER)
    return runtime


def task_result(
    runtime: WorkerRuntime, url: str, task_id: str, content_type: str = "text/plain", **options: Any
) -> TaskResult:
    request = read_task(PARAMS, (url, USER, content_type, options), {}, remote=True, own_user_id=USER)
    return runtime.pipeline().run_file(ProgressReporter(task_id, []), request, remote=True, url_task=False)


def run_task(runtime: WorkerRuntime, url: str, task_id: str) -> str:
    result = task_result(runtime, url, task_id)
    assert result.success, result.error_message
    return result.content or ""


def test_two_tasks_download_from_the_hub_over_one_connection(hub: HTTPTestServer, tmp_path: Path) -> None:
    hub.route("/a", Route(body=b"first input\n"))
    hub.route("/b", Route(body=b"second input\n"))
    runtime = runtime_for(hub, tmp_path)
    assert "first input" in run_task(runtime, hub.url("/a"), "t1")
    assert "second input" in run_task(runtime, hub.url("/b"), "t2")
    assert [r.headers.get("authorization") for r in hub.requests()] == [f"Bearer {API_KEY}"] * 2
    assert hub.connections_accepted == 1


def test_a_forked_process_never_uses_its_parents_connections(
    hub: HTTPTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = runtime_for(hub, tmp_path)
    first = runtime._downloader()
    assert runtime._downloader() is first
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as a pool process forked from this one sees it
    forked = runtime._downloader()
    assert forked is not first and forked.session is not first.session


def test_a_download_cut_short_does_not_leave_its_connection_in_the_pool(
    hub: HTTPTestServer, tmp_path: Path
) -> None:
    body = b"a line of text\n" * 20000
    route = hub.route("/cut", Route(body=body, cut_after=100_000, cut_times=1))
    runtime = runtime_for(hub, tmp_path)
    run_task(runtime, hub.url("/cut"), "t1")
    assert route.body_responses == 2 and hub.connections_accepted == 2


# -- progress states: written once a person could see them -------------------------------------


def _meta(stage: str, done: float) -> ProgressMeta:
    return ProgressMeta.of(stage, done, 10, "")


def test_states_replaced_before_they_settle_are_never_written() -> None:
    written: list[tuple[str, str, float]] = []
    states = SettledStates(lambda tid, meta: written.append((tid, meta.stage, meta.done)), settle_s=0.3)
    states("t1", _meta("DOWNLOADING", 0))
    states("t1", _meta("DOWNLOADING", 10))
    states("t1", _meta("PROCESSING", 0))
    states.discard("t1")  # the task ended within the quarter second: its result is all there is
    time.sleep(0.6)
    assert written == []


def test_a_state_that_lasts_is_written_once_with_the_latest_value() -> None:
    written: list[tuple[str, str, float]] = []
    states = SettledStates(lambda tid, meta: written.append((tid, meta.stage, meta.done)), settle_s=0.05)
    states("t1", _meta("DOWNLOADING", 0))
    states("t1", _meta("DOWNLOADING", 3))
    wait_for(lambda: bool(written), 10, "the settled state to be written", interval=0.01)
    time.sleep(0.2)
    assert written == [("t1", "DOWNLOADING", 3)]
    states("t1", _meta("PROCESSING", 1))
    wait_for(lambda: len(written) == 2, 10, "the second settled state", interval=0.01)
    assert written[-1] == ("t1", "PROCESSING", 1)


def test_reports_the_thread_would_find_in_time_wake_nobody() -> None:
    """A small task reports six times in a few milliseconds; only a state due before the thread
    would look again may wake it (each wake cost a thread switch and the GIL)."""
    written: list[tuple[str, str, float]] = []
    states = SettledStates(lambda tid, meta: written.append((tid, meta.stage, meta.done)), settle_s=0.3)
    states("t0", _meta("DOWNLOADING", 0))  # starts the thread, which then waits for t0's due time
    wait_for(lambda: states._wakes_at not in (None, float("-inf")), 10, "the thread to wait", interval=0.005)
    wakes: list[None] = []
    notify = states._cond.notify
    states._cond.notify = lambda n=1: (wakes.append(None), notify(n))  # type: ignore[method-assign]
    for done in (1, 2, 3):
        states("t0", _meta("DOWNLOADING", done))
    states("t1", _meta("PROCESSING", 0))  # due after t0's: found when the thread looks for t0's
    assert wakes == []
    wait_for(lambda: len(written) == 2, 10, "both settled states", interval=0.01)
    assert written == [("t0", "DOWNLOADING", 3), ("t1", "PROCESSING", 0)]
    wait_for(lambda: states._wakes_at is None, 10, "the thread to wait for a first state", interval=0.005)
    wakes.clear()  # the writes' own notify_all (for discard) counted too
    states("t2", _meta("PROCESSING", 0))  # nothing waiting: the thread sleeps until told
    assert wakes == [None]
    wait_for(lambda: len(written) == 3, 10, "the third settled state", interval=0.01)


def test_discard_waits_for_a_write_in_flight() -> None:
    started, release = threading.Event(), threading.Event()
    written: list[str] = []

    def slow_write(tid: str, meta: ProgressMeta) -> None:
        started.set()
        release.wait(10)
        written.append(meta.stage)

    states = SettledStates(slow_write, settle_s=0.0)
    states("t1", _meta("PROCESSING", 1))
    assert started.wait(10)
    done = threading.Event()
    threading.Thread(target=lambda: (states.discard("t1"), done.set()), daemon=True).start()
    assert not done.wait(0.2)  # the result must not be stored while the state is being written
    release.set()
    assert done.wait(10) and written == ["PROCESSING"]


# -- the delivery counter: nothing asked of Redis on a first delivery ----------------------------


def _commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",))


def test_a_first_delivery_asks_redis_nothing(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    counter = DeliveryCounter(client, "morag:ns:alice:", 3)
    before = _commands(client)
    start = counter.start("t1", redelivered=False)
    counter.finished("t1", start)
    assert start.starts == 1 and _commands(client) == before


def test_redeliveries_count_deaths_and_a_requeue_starts_the_count_again(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    counter = DeliveryCounter(client, "morag:ns:alice:", 3)
    assert counter.start("t1", redelivered=False).starts == 1  # ...and the worker died
    assert counter.start("t1", redelivered=True).starts == 2  # died again
    assert counter.start("t1", redelivered=True).starts == 3
    start = counter.start("t1", redelivered=True)
    assert start.starts == 4 > counter.limit
    counter.finished("t1", start)
    assert client.get("morag:ns:alice:attempts:t1") is None
    # A stop now sends it back on purpose: the next start counts as a first one.
    start = counter.requeued("t2", counter.start("t2", redelivered=False))
    counter.finished("t2", start)
    assert counter.start("t2", redelivered=True).starts == 1


# -- small plain text converts without a child -------------------------------------------------


def test_only_small_plain_text_without_a_declared_charset_converts_inline(tmp_path: Path) -> None:
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text("hello\n")
    big.write_text("x" * (INLINE_TEXT_MAX_BYTES + 1))
    text, markdown = TextProcessor("text"), TextProcessor("markdown")
    size, too_big = small.stat().st_size, big.stat().st_size
    assert converts_inline(text, size, {})
    assert not converts_inline(text, too_big, {})
    assert not converts_inline(markdown, size, {})
    assert not converts_inline(text, size, {"charset": "punycode"})
    assert not converts_inline(ProcessorRegistry.default().resolve("text/html", None, small), size, {})


def test_a_small_text_task_forks_no_converter_child(
    hub: HTTPTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from morag_worker.core.processing import sandbox

    def no_child(*_a: object, **_k: object) -> None:
        raise AssertionError("a converter child was started")

    monkeypatch.setattr(sandbox, "fork_child", no_child)
    monkeypatch.setattr(sandbox, "spawn_child", no_child)
    hub.route("/a", Route(body=b"a tiny input\n"))
    assert "a tiny input" in run_task(runtime_for(hub, tmp_path), hub.url("/a"), "t1")


# -- a small input of stated size stays in memory ----------------------------------------------


def test_a_small_text_input_of_stated_size_never_touches_the_disk(
    hub: HTTPTestServer, tmp_path: Path
) -> None:
    body = b"a tiny input\r\nof two lines\n"
    route = hub.route("/a", Route(body=body))
    temp = tmp_path / "tasks"
    result = task_result(runtime_for(hub, temp), hub.url("/a"), "t1", size=len(body), sha256=route.sha256)
    assert result.success, result.error_message
    assert result.content == "a tiny input\nof two lines\n"
    assert (result.metadata["source_size"], result.metadata["source_sha256"]) == (len(body), route.sha256)
    assert result.metadata["processor"] == "text"
    assert not temp.exists() or list(temp.iterdir()) == []  # no task folder, not even a spare one


def test_a_small_input_that_is_not_plain_text_converts_from_its_task_folder(
    hub: HTTPTestServer, tmp_path: Path
) -> None:
    body = b"# A title\n\nSome *markdown* text.\n"
    hub.route("/a.md", Route(body=body))
    temp = tmp_path / "tasks"
    result = task_result(runtime_for(hub, temp), hub.url("/a.md"), "t1", "text/markdown", size=len(body))
    assert result.success, result.error_message
    assert result.metadata["title"] == "A title"
    assert len(list(temp.iterdir())) == 1  # its task folder, emptied and kept as a spare


def test_a_small_input_written_for_its_converter_keeps_the_disk_reserve(
    hub: HTTPTestServer, tmp_path: Path
) -> None:
    body = b"# A title\n"
    hub.route("/a.md", Route(body=body))
    runtime = runtime_for(hub, tmp_path)
    runtime.download_limits = dataclasses.replace(
        runtime.download_limits, disk_reserve_bytes=shutil.disk_usage(tmp_path).free
    )
    with pytest.raises(InfrastructureError, match="Not enough disk space"):
        task_result(runtime, hub.url("/a.md"), "t1", "text/markdown", size=len(body))


def test_a_small_input_of_stated_size_is_checked_as_a_file_is(hub: HTTPTestServer, tmp_path: Path) -> None:
    body = b"a tiny input\n"
    hub.route("/a", Route(body=body))
    runtime = runtime_for(hub, tmp_path)
    with pytest.raises(InfrastructureError, match="SHA-256"):
        task_result(runtime, hub.url("/a"), "t1", size=len(body), sha256="ab" * 32)
    assert len(hub.requests("/a")) == 2  # and one fresh download
    with pytest.raises(InfrastructureError, match="expects 5"):
        task_result(runtime, hub.url("/a"), "t2", size=5)


# -- logging: one line per task at INFO ---------------------------------------------------------


def test_a_quick_download_logs_nothing_at_info(hub: HTTPTestServer, tmp_path: Path) -> None:
    hub.route("/a", Route(body=b"a tiny input\n"))
    runtime = runtime_for(hub, tmp_path)
    with structlog.testing.capture_logs() as events:
        run_task(runtime, hub.url("/a"), "t1")
    assert [e["event"] for e in events if e["log_level"] not in ("debug",)] == []


def test_the_worker_turns_off_celerys_own_task_lines_at_info() -> None:
    from morag_worker.core import worker

    saved = {name: logging.getLogger(name).level for name in worker.TASK_LINE_LOGGERS}
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        worker._setup_logging(loglevel="INFO")
        assert all(not logging.getLogger(n).isEnabledFor(logging.INFO) for n in worker.TASK_LINE_LOGGERS)
        assert logging.getLogger("celery.worker.consumer").isEnabledFor(logging.INFO)
    finally:
        for name, old in saved.items():
            logging.getLogger(name).setLevel(old)
        root.handlers[:] = handlers
        root.setLevel(level)


# -- downloads: small pieces reach the writer a chunk at a time -----------------------------------


def test_small_pieces_are_handed_to_the_writer_a_chunk_at_a_time(
    hub: HTTPTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from morag_worker.core.transfer import download_state
    from morag_worker.core.transfer.downloader import Downloader, DownloadLimits

    body = os.urandom(2 * 1024 * 1024)
    hub.route("/big", Route(body=body, trickle=(16 * 1024, 0.0)))  # a server writing 16 KiB pieces
    hand_offs: list[int] = []
    real = download_state.write_pieces

    def counted(fh: Any, pieces: list[bytes]) -> None:
        hand_offs.append(sum(map(len, pieces)))
        real(fh, pieces)

    monkeypatch.setattr(download_state, "write_pieces", counted)
    limits = DownloadLimits(chunk_size=256 * 1024, disk_reserve_bytes=0)
    with Downloader(limits=limits, trusted_origins=[hub.origin]) as downloader:
        got = downloader.download(hub.url("/big"), tmp_path, expected_sha256=hashlib.sha256(body).hexdigest())
    assert (tmp_path / "input.bin").read_bytes() == body and got.size == len(body)
    assert sum(hand_offs) == len(body) and len(hand_offs) <= 9, hand_offs  # not 128 hand-offs


def test_a_results_wire_form_has_every_field_and_its_own_metadata() -> None:
    import dataclasses

    from morag_worker.core.results import TaskResult

    result = TaskResult(True, "text", {"pages": [1, 2]}, 0.5, None, "alice")
    wire = result.to_dict()
    assert wire == dataclasses.asdict(result)
    assert list(wire) == [f.name for f in dataclasses.fields(TaskResult)]
    assert TaskResult.from_dict(wire) == result
    wire["metadata"]["added"] = True
    assert "added" not in result.metadata


def test_celery_renders_no_result_for_a_line_that_leaves_it_out() -> None:
    from celery.app import trace
    from celery.utils.saferepr import saferepr

    from morag_worker.core import worker

    document = {"success": True, "content": "a converted page " * 500, "metadata": {"words": 1500}}
    for task in (worker.process_file_task, worker.process_file_task_remote, worker.process_url_task_remote):
        # What the tracer hands the worker's main process instead of the document.
        assert len(saferepr(document, task.resultrepr_maxsize)) < 10
    assert "return_value" not in trace.LOG_SUCCESS
