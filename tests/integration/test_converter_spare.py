"""The spare converter child (issue 14): started ahead of need, used once, replaced, reaped at stop.

Real children, found in /proc: a forked one has this process's command line, a spawned one runs
``sandbox_child``. Each forked case converts once first, so the spare that follows knows the
processor (a forked spare knows those registered before it was forked).
"""

from __future__ import annotations

import gc
import os
import select
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from morag_worker.core.config.settings import ConverterLimits
from morag_worker.core.execution.context import WorkerRuntime
from morag_worker.core.processing import ProcessedContent, ProgressFn
from morag_worker.core.processing.sandbox import (
    ConversionRequest,
    ConverterLimitReached,
    ConverterSandbox,
    StartMethod,
)
from morag_worker.core.processing.sandbox_process import SpareKeeper
from morag_worker.core.processing.sandbox_wire import Limit
from morag_worker.core.processing.winjob import JobObject, JobObjectError
from tests.conftest import SAMPLES
from tests.fakes import FakeKernel32
from tests.processes import Proc, base_env, process_tree, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc"),
]

MIB = 1024 * 1024
LIMITS = ConverterLimits(memory_bytes=64 * MIB, deadline_s=20, max_output_bytes=MIB)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def converter_children(root: int | None = None) -> set[int]:
    """The converter children of ``root`` (this process), zombies included: forked or spawned.

    Those of this process that were there before the test began (other tests' sandboxes, not yet
    collected) are left out.
    """
    if root is None:
        return _children(os.getpid()) - BEFORE
    return _children(root)


BEFORE: set[int] = set()


@pytest.fixture(autouse=True)
def _children_before() -> Any:
    gc.collect()  # a dropped sandbox's spare is reaped when the sandbox is collected
    BEFORE.clear()
    BEFORE.update(_children(os.getpid()))
    yield
    BEFORE.clear()


def _children(root: int) -> set[int]:
    own = _cmdline(root)
    found = set()
    for pid in process_tree(root)[1:]:
        line = _cmdline(pid)
        ours = line == own or b"morag_worker.core.processing.sandbox_child" in line or not line
        if ours and _parent(pid) == root:
            found.add(pid)
    return found


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def one_spare(sandbox: ConverterSandbox, root: int | None = None) -> int:
    """The pid of the spare child, once it is the only converter child (used ones reaped)."""
    assert sandbox.spare_ready(timeout=20)
    [pid] = wait_for(lambda: len(found := converter_children(root)) == 1 and found, what="one spare child")
    return pid


class Pid:
    """Returns the child's pid as its text; with ``{"bomb": true}`` in the options, allocates without end."""

    name = "pid"

    def process(self, path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        if options.get("bomb"):
            hoard = []
            while True:
                hoard.append(bytearray(8 * MIB))
        return ProcessedContent(str(os.getpid()), {})


def converted_by(sandbox: ConverterSandbox, **options: Any) -> int:
    return int(sandbox.convert(PID, ConversionRequest(Path("x"), options), lambda *a: None).markdown)


PID = Pid()


@pytest.fixture
def sandbox() -> Any:
    sandbox = ConverterSandbox(LIMITS, StartMethod.FORK, spare=True)
    yield sandbox
    sandbox.close()


def test_the_waiting_spare_converts_the_next_document_and_is_replaced(sandbox: ConverterSandbox) -> None:
    first = converted_by(sandbox)  # on demand: no spare knew the processor yet
    spare = one_spare(sandbox)
    assert spare != first
    assert converted_by(sandbox) == spare  # started before the request was sent
    replacement = one_spare(sandbox)
    assert replacement not in (first, spare)
    assert converted_by(sandbox) == replacement


def test_the_spare_is_reaped_when_the_sandbox_closes(sandbox: ConverterSandbox) -> None:
    converted_by(sandbox)
    one_spare(sandbox)
    sandbox.close()
    assert converter_children() == set()  # killed and reaped: not even a zombie left


def test_a_memory_bomb_in_a_spare_still_ends_with_the_limit_message(sandbox: ConverterSandbox) -> None:
    converted_by(sandbox)
    spare = one_spare(sandbox)
    with pytest.raises(ConverterLimitReached) as caught:
        converted_by(sandbox, bomb=True)
    assert caught.value.limit is Limit.MEMORY
    assert caught.value.message.startswith("The conversion needed more than 64 MB of memory")
    wait_for(lambda: spare not in converter_children(), what="the spent spare to be reaped")
    assert sandbox.spare_ready(timeout=20)


def test_a_dead_spare_is_not_used(sandbox: ConverterSandbox) -> None:
    converted_by(sandbox)
    spare = one_spare(sandbox)
    os.kill(spare, signal.SIGKILL)
    wait_for(lambda: zombie(spare), what="the spare to die")  # and not yet reaped
    assert converted_by(sandbox) != spare


def test_a_spare_started_under_other_limits_is_not_used(sandbox: ConverterSandbox) -> None:
    converted_by(sandbox)
    spare = one_spare(sandbox)
    sandbox.limits = ConverterLimits(memory_bytes=32 * MIB, deadline_s=20, max_output_bytes=MIB)
    assert converted_by(sandbox) != spare
    with pytest.raises(ConverterLimitReached, match="more than 32 MB"):
        converted_by(sandbox, bomb=True)


def test_no_spare_is_forked_before_a_processor_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    # Asked of the keeper synchronously: a spare forked on its thread might not exist yet to be seen.
    asked: list[object] = []
    refill = SpareKeeper.refill
    monkeypatch.setattr(SpareKeeper, "refill", lambda keeper: (asked.append(keeper), refill(keeper))[1])
    sandbox = ConverterSandbox(LIMITS, StartMethod.FORK, spare=True)
    try:
        sandbox.start_spare()
        assert asked == []
        assert converter_children() == set()
    finally:
        sandbox.close()


SPARE_SCRIPT = """
import os, sys, time
from pathlib import Path
from morag_worker.core.processing import ProcessedContent
from morag_worker.core.processing.sandbox import ConversionRequest, ConverterSandbox, StartMethod

class Quick:
    name = "quick"
    def process(self, path, options, progress):
        return ProcessedContent("done", {})

sandbox = ConverterSandbox(start=StartMethod.FORK, spare=True)
sandbox.convert(Quick(), ConversionRequest(Path("x")), lambda *a: None)
assert sandbox.spare_ready(20)
Path(sys.argv[1]).write_text("ready")
time.sleep(120)
"""


def test_the_spare_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A pool process killed outright (a hard time limit, a cold stop) leaves no spare behind."""
    ready = tmp_path / "ready"
    parent = Proc([sys.executable, "-c", SPARE_SCRIPT, str(ready)], env=base_env(), name="pool stand-in")
    try:
        wait_for(ready.exists, what="the spare")
        [spare] = wait_for(lambda: len(found := converter_children(parent.pid)) == 1 and found, what="spare")
        os.kill(parent.pid, signal.SIGKILL)
        wait_for(lambda: not _cmdline(spare), timeout=10, what="the spare to die")
    finally:
        parent.stop()


def test_the_worker_starts_its_spare_and_reaps_it_when_it_stops() -> None:
    runtime = WorkerRuntime({"MORAG_CONVERTER_START": "spawn", "MORAG_CONVERTER_MEMORY_MB": "256"})
    runtime.warm_converters()  # a pool process starts
    sandbox = runtime.pipeline().sandbox
    assert sandbox is not None and sandbox.spare_ready(timeout=20)
    wait_for(lambda: len(converter_children()) == 1, what="the spawned spare")
    runtime.close_converters()  # the pool process stops
    assert converter_children() == set()


# --- spawned: the Windows path ----------------------------------------------------------------------


def test_a_spawned_spare_waits_in_its_job_object_and_is_used() -> None:
    kernel32 = FakeKernel32()
    jobs: list[JobObject] = []

    def job_factory(limit: int) -> JobObject:
        jobs.append(JobObject(kernel32, limit))
        return jobs[-1]

    sandbox = ConverterSandbox(LIMITS, StartMethod.SPAWN, job_factory=job_factory, spare=True)
    try:
        sandbox.start_spare()
        assert sandbox.spare_ready(timeout=20)
        [spare] = wait_for(lambda: len(found := converter_children()) == 1 and found, what="the spare")
        assert "AssignProcessToJobObject" in kernel32.calls
        assert [job.memory_limit_bytes for job in jobs] == [LIMITS.memory_bytes + 256 * MIB]
        assert {spare} == set().union(*(j["pids"] for j in kernel32.jobs.values()))  # in its job, waiting

        result = sandbox.convert(PID, ConversionRequest(SAMPLES / "sample.txt"), lambda *a: None)
        assert "MoRAG Worker" in result.markdown
        assert sandbox.spare_ready(timeout=20)
        assert len(jobs) == 2  # the spare's and its replacement's: no child was started on demand
    finally:
        sandbox.close()
    assert kernel32.open_handles == set()  # every job closed with its child
    assert converter_children() == set()


def test_a_spare_that_fails_to_start_leaves_the_task_to_start_its_own() -> None:
    kernel32 = FakeKernel32()
    calls = 0

    def job_factory(limit: int) -> JobObject:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise JobObjectError(5, "CreateJobObjectW failed (Windows error 5)")
        return JobObject(kernel32, limit)

    sandbox = ConverterSandbox(LIMITS, StartMethod.SPAWN, job_factory=job_factory, spare=True)
    try:
        sandbox.start_spare()
        wait_for(lambda: calls == 1, what="the spare's start to fail")
        result = sandbox.convert(PID, ConversionRequest(SAMPLES / "sample.txt"), lambda *a: None)
        assert "MoRAG Worker" in result.markdown
    finally:
        sandbox.close()
    assert converter_children() == set()


def test_a_waiting_spare_holds_no_end_of_another_threads_pipe(sandbox: ConverterSandbox) -> None:
    """Else a reader of that pipe (a spawned child's parent, say) waits for the spare forever."""
    read_end, write_end = os.pipe()
    try:
        converted_by(sandbox)
        one_spare(sandbox)  # forked while write_end was open here
        os.close(write_end)
        readable, _, _ = select.select([read_end], [], [], 10)
        assert readable and os.read(read_end, 1) == b""  # the end of the pipe: nobody else holds it
    finally:
        os.close(read_end)
