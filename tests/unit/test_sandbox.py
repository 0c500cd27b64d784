"""The converter child's limits and wire, without a process: frames, the parent's follow loop, Job objects.

The parent's loop is driven with a fake child whose "pipe" is a byte buffer written by the real
``FrameWriter`` (or by hand, when the child is hostile). The Windows Job object runs against
``FakeKernel32`` (tests/fakes.py), which keeps Windows' handles, jobs, limits and members.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from morag_worker.core.config.settings import ConverterLimits, SettingsError
from morag_worker.core.processing import CorruptInput, EmptyContent, ProcessingError, TaskCancelled
from morag_worker.core.processing.base import OutputTooLarge, WithOutputLimit, check_output
from morag_worker.core.processing.sandbox import (
    ConverterCrashed,
    ConverterLimitReached,
    ConverterSandbox,
    ExitStatus,
    StartMethod,
    default_start_method,
)
from morag_worker.core.processing.sandbox_child import stored_size
from morag_worker.core.processing.sandbox_process import SpareKeeper
from morag_worker.core.processing.sandbox_wire import (
    MAX_MESSAGE_BYTES,
    Content,
    Crashed,
    Done,
    Failed,
    FrameWriter,
    Limit,
    LimitReached,
    Progress,
    WireError,
    read_frame,
)
from morag_worker.core.processing.winjob import (
    JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOB_OBJECT_LIMIT_PROCESS_MEMORY,
    PROCESS_SET_QUOTA,
    PROCESS_TERMINATE,
    JobObject,
    JobObjectError,
)
from tests.bombs import pdf_shared_stream
from tests.fakes import FakeKernel32
from tests.processes import wait_for

pytestmark = pytest.mark.unit

MIB = 1024 * 1024


# --- limits -----------------------------------------------------------------------------------------


def test_limits_have_safe_defaults_and_read_the_environment() -> None:
    assert ConverterLimits.from_env({}) == ConverterLimits()
    assert ConverterLimits().memory_mb == 2048 and ConverterLimits().max_output_bytes == 64 * MIB
    limits = ConverterLimits.from_env(
        {
            "MORAG_CONVERTER_MEMORY_MB": "256",
            "MORAG_CONVERTER_DEADLINE_S": "2.5",
            "MORAG_MAX_OUTPUT_MB": "0.5",
        }
    )
    assert limits == ConverterLimits(memory_bytes=256 * MIB, deadline_s=2.5, max_output_bytes=MIB // 2)


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("MORAG_MAX_OUTPUT_MB", "lots", "must be a number"),
        ("MORAG_CONVERTER_MEMORY_MB", "0", "must be a positive number"),
        ("MORAG_CONVERTER_DEADLINE_S", "inf", "must be a positive number"),
        ("MORAG_CONVERTER_DEADLINE_S", "-3", "must be a positive number"),
    ],
)
def test_a_bad_limit_names_its_variable(name: str, raw: str, says: str) -> None:
    with pytest.raises(SettingsError, match=f"{name} {says}"):
        ConverterLimits.from_env({name: raw})


def test_the_worker_reads_its_converter_settings_once_with_clear_errors() -> None:
    from morag_worker.core.execution.context import WorkerRuntime

    runtime = WorkerRuntime({"MORAG_CONVERTER_START": "Spawn", "MORAG_MAX_OUTPUT_MB": "2"})
    assert runtime.converter_start is StartMethod.SPAWN
    assert runtime.converter_limits.max_output_bytes == 2 * MIB
    assert WorkerRuntime({}).converter_start is default_start_method()
    with pytest.raises(ValueError, match="MORAG_CONVERTER_START must be fork or spawn, not 'thread'"):
        WorkerRuntime({"MORAG_CONVERTER_START": "thread"})


# --- the wire ---------------------------------------------------------------------------------------


def frames(*items: Any) -> bytes:
    """What a child writes: messages and, for bytes, a text frame."""
    buffer = io.BytesIO()
    writer = FrameWriter(buffer.write)
    for item in items:
        if isinstance(item, bytes):
            writer.content(item)
        else:
            writer.message(item)
    return buffer.getvalue()


def raw_frame(kind: bytes, payload: bytes, size: int | None = None) -> bytes:
    return struct.pack(">cI", kind, len(payload) if size is None else size) + payload


def test_every_message_crosses_the_wire_unchanged() -> None:
    sent = [
        Progress(3.0, 10.0, "page 4 of 10"),
        Progress(1.0, None, "ünïcode"),
        Done(5, {"pages": 2, "notes": ["a"]}),
        Failed("CorruptInput", "the PDF file is damaged"),
        LimitReached(Limit.OUTPUT, 123),
        LimitReached(Limit.MEMORY),
        Crashed("ValueError", "bad"),
    ]
    stream = io.BytesIO(frames(*sent, b"hello"))
    received = [read_frame(stream, 100) for _ in range(len(sent) + 2)]
    assert received == [*sent, Content(b"hello"), None]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (raw_frame(b"P", b"\x80\x04K\x01."), "unknown kind"),  # a pickle, in a frame of its own
        (raw_frame(b"M", b"", size=MAX_MESSAGE_BYTES + 1), "over the"),
        (raw_frame(b"C", b"", size=101), "over the output limit"),
        (raw_frame(b"M", b'{"type": "progress"', size=50), "ended inside a frame"),
        (raw_frame(b"M", b"\x80\x04K\x01."), "not JSON"),
        (raw_frame(b"M", b"[1, 2]"), "not a JSON object"),
        (raw_frame(b"M", b'{"type": "exec", "code": "import os"}'), "unknown message type"),
        (raw_frame(b"M", b'{"type": "progress", "done": "1", "total": null, "message": ""}'), "done"),
        (raw_frame(b"M", b'{"type": "progress", "done": NaN, "total": null, "message": ""}'), "done"),
        (raw_frame(b"M", b'{"type": "done", "content_bytes": -1, "metadata": {}}'), "content_bytes"),
        (raw_frame(b"M", b'{"type": "done", "content_bytes": 1, "metadata": []}'), "metadata"),
        (raw_frame(b"M", b'{"type": "limit", "limit": "patience"}'), "unknown limit"),
        (raw_frame(b"M", b'{"type": "failed", "error": 1, "message": "x"}'), "error"),
        (raw_frame(b"M", b"[" * 100_000), "not JSON"),
    ],
)
def test_anything_but_the_closed_set_of_messages_is_refused(data: bytes, says: str) -> None:
    with pytest.raises(WireError, match=says):
        read_frame(io.BytesIO(data), 100)


def test_a_message_over_a_megabyte_is_not_sent() -> None:
    with pytest.raises(WireError, match="over the"):
        FrameWriter(io.BytesIO().write).message(Done(1, {"huge": "x" * MAX_MESSAGE_BYTES}))


def test_output_is_counted_as_it_will_be_stored() -> None:
    text = 'ж"\n€ \U0001f600 plain'
    assert stored_size(text) == len(json.dumps(text)) - 2 == 6 + 2 + 2 + 6 + 1 + 12 + 6
    long = "ab\n" * 1_000_000
    assert stored_size(long, chunk=4096) == len(json.dumps(long)) - 2


def test_only_a_converter_childs_options_carry_the_output_limit() -> None:
    check_output({"max_output_bytes": 1}, 10**9)  # a plain mapping: no limit, whatever its keys
    options = WithOutputLimit({"charset": "utf-8", "max_output_bytes": 10**12}, 100)
    assert options.get("charset") == "utf-8" and dict(options) == {
        "charset": "utf-8",
        "max_output_bytes": 10**12,
    }
    check_output(options, 100)
    with pytest.raises(OutputTooLarge) as caught:
        check_output(options, 101)
    assert caught.value.size == 101


def test_pdf_and_xlsx_stop_as_soon_as_their_text_is_over_the_limit(tmp_path: Path) -> None:
    from openpyxl import Workbook

    from morag_worker.core.processing.office import XlsxProcessor
    from morag_worker.core.processing.pdf import PdfProcessor

    pdf = tmp_path / "shared.pdf"
    pdf.write_bytes(pdf_shared_stream(pages=50, lines=100))  # 4,200 characters a page
    pages: list[float] = []
    with pytest.raises(OutputTooLarge):
        PdfProcessor().process(pdf, WithOutputLimit({}, 10_000), lambda done, total, msg: pages.append(done))
    assert max(pages) == 2  # the third page passed 10,000 characters
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("rows")
    for i in range(5000):
        sheet.append([i, "some text in a cell"])
    workbook.save(tmp_path / "rows.xlsx")
    with pytest.raises(OutputTooLarge) as caught:
        XlsxProcessor().process(tmp_path / "rows.xlsx", WithOutputLimit({}, 10_000), lambda *a: None)
    assert caught.value.size < 50_000  # stopped at the first checkpoint past the limit (1,000 rows)


# --- the parent's loop, with a fake child -----------------------------------------------------------


class FakeChild:
    """A converter child whose pipe holds ``data``; ``block`` keeps the pipe open until it is killed."""

    def __init__(
        self,
        data: bytes = b"",
        *,
        status: ExitStatus | None = None,
        block: bool = False,
        at_limit: bool = False,
    ) -> None:
        self._data = io.BytesIO(data)
        self._block = block
        self._killed = threading.Event()
        self.status = status or ExitStatus(code=0)
        self.at_limit = at_limit
        self.closed = False
        self.stream = self

    def read(self, size: int = -1) -> bytes:
        chunk = self._data.read(size)
        if not chunk and self._block:
            self._killed.wait(30)
        return chunk

    @property
    def killed(self) -> bool:
        return self._killed.is_set()

    def wait(self, timeout: float | None) -> ExitStatus | None:
        return self.status

    def kill(self) -> None:
        self._killed.set()

    def reached_memory_limit(self) -> bool:
        return self.at_limit

    def close(self) -> None:
        self.kill()
        self.closed = True


def follow(child: FakeChild, limits: ConverterLimits | None = None, progress: Any = None) -> Any:
    sandbox = ConverterSandbox(limits or ConverterLimits(max_output_bytes=1000))
    seen: list[tuple[float, float | None, str]] = []
    result = sandbox._follow(child, progress or (lambda *a: seen.append(a)), sandbox.clock())  # type: ignore[arg-type]
    return result, seen


def test_progress_is_relayed_and_the_announced_text_comes_back() -> None:
    child = FakeChild(
        frames(Progress(0, 2, "page 1 of 2"), Progress(2, 2, "done"), Done(5, {"pages": 2}), b"hello")
    )
    result, seen = follow(child)
    assert result.markdown == "hello" and result.metadata == {"pages": 2}
    assert seen == [(0.0, 2.0, "page 1 of 2"), (2.0, 2.0, "done")]


@pytest.mark.parametrize(
    ("name", "cls"),
    [("CorruptInput", CorruptInput), ("EmptyContent", EmptyContent), ("SomePluginError", ProcessingError)],
)
def test_a_processing_error_arrives_as_the_same_kind_with_the_same_message(
    name: str, cls: type[ProcessingError]
) -> None:
    with pytest.raises(cls) as caught:
        follow(FakeChild(frames(Failed(name, "the PDF file is damaged: page 3 cannot be read"))))
    assert type(caught.value) is cls
    assert caught.value.message == "the PDF file is damaged: page 3 cannot be read"


def test_any_other_exception_is_a_clear_failure_naming_its_type() -> None:
    with pytest.raises(ConverterCrashed, match=r"failed unexpectedly \(KeyError: 'x'\)"):
        follow(FakeChild(frames(Crashed("KeyError", "'x'"))))


def test_each_limit_is_named_in_a_sentence() -> None:
    limits = ConverterLimits(memory_bytes=1024 * MIB, deadline_s=30, max_output_bytes=64 * MIB)
    with pytest.raises(ConverterLimitReached) as memory:
        follow(FakeChild(frames(LimitReached(Limit.MEMORY))), limits)
    assert memory.value.limit is Limit.MEMORY
    assert memory.value.message.startswith("The conversion needed more than 1,024 MB of memory")
    with pytest.raises(ConverterLimitReached) as output:
        follow(FakeChild(frames(LimitReached(Limit.OUTPUT, 210 * MIB))), limits)
    assert output.value.limit is Limit.OUTPUT
    assert "output larger than 64 MB (210 MB)" in output.value.message


def test_the_deadline_kills_a_silent_child() -> None:
    child = FakeChild(frames(Progress(0, None, "starting")), block=True)
    with pytest.raises(ConverterLimitReached) as caught:
        follow(child, ConverterLimits(deadline_s=0.3))
    assert caught.value.limit is Limit.TIME and child.killed
    assert caught.value.message.startswith("The conversion took longer than 0.3 s")


def test_a_cancelling_progress_callback_kills_the_child_and_propagates() -> None:
    child = FakeChild(frames(Progress(1, 10, "page 2 of 10")), block=True)

    def stop_now(*_: Any) -> None:
        raise TaskCancelled("stopped by the contributor")

    with pytest.raises(TaskCancelled, match="stopped by the contributor"):
        follow(child, progress=stop_now)
    assert child.killed


def test_stop_now_reaches_a_child_that_reports_nothing() -> None:
    child = FakeChild(frames(Progress(1, 10, "page 2 of 10")), block=True)
    cancel = threading.Event()
    sandbox = ConverterSandbox(ConverterLimits(deadline_s=30))
    # "Stop now" is pressed after the last report; the child then stays silent (it blocks).
    with pytest.raises(TaskCancelled, match="stopped by the contributor"):
        sandbox._follow(child, lambda *a: cancel.set(), sandbox.clock(), cancel)  # type: ignore[arg-type]
    assert child.killed


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (raw_frame(b"M", b"\x80\x04K\x01."), "does not accept"),
        (frames(Done(4, {}), b"hello"), "had not announced"),
        (frames(b"hello"), "had not announced"),
        (frames(Done(2, {}), Progress(1, 1, "")), "where its text was expected"),
        (frames(Done(2, {}), b"\xff\xfe"), "not UTF-8"),
        (raw_frame(b"C", b"", size=1001), "does not accept"),
    ],
)
def test_a_hostile_child_is_a_clear_failure_and_is_killed(data: bytes, says: str) -> None:
    child = FakeChild(data, block=True)
    with pytest.raises(ConverterCrashed, match=says):
        follow(child)
    assert child.killed


@pytest.mark.parametrize(
    ("status", "at_limit", "says"),
    [
        (ExitStatus(signal=signal.SIGSEGV), False, r"stopped unexpectedly \(killed by SIGSEGV\)"),
        (ExitStatus(code=9), False, r"stopped unexpectedly \(exit code 9\)"),
        (ExitStatus(signal=signal.SIGKILL), False, "killed by the system .* out of memory"),
        (ExitStatus(code=137), True, "needed more than 2,048 MB of memory"),  # a Windows job at its limit
    ],
)
def test_a_child_that_dies_without_a_word_says_how(status: ExitStatus, at_limit: bool, says: str) -> None:
    with pytest.raises(ProcessingError, match=says):
        follow(FakeChild(frames(Progress(0, 1, "")), status=status, at_limit=at_limit))


# --- the spare keeper, with fake children -----------------------------------------------------------


class FakeSpare(FakeChild):
    """A started child that waits for its request until it is sent one or killed (as a real one)."""

    def __init__(self, limits: ConverterLimits | None = None) -> None:
        super().__init__(block=True)
        self.limits = limits or ConverterLimits()
        self.processors: frozenset[int] | None = frozenset({1})
        self.sent: bytes | None = None

    def send(self, payload: bytes) -> bool:
        self.sent = payload
        return not self.killed

    def waiting(self) -> bool:
        return self.sent is None and not self.killed


def test_the_keeper_hands_out_its_spare_once_and_starts_the_next_only_when_asked() -> None:
    started: list[FakeSpare] = []
    keeper = SpareKeeper(lambda: started.append(FakeSpare()) or started[-1])
    try:
        assert keeper.take(lambda child: True, wait_s=0) is None  # none yet: the task starts its own
        keeper.refill()
        assert keeper.ready(timeout=10)
        spare = keeper.take(lambda child: True, wait_s=10)
        assert spare is started[0] and keeper.take(lambda child: True, wait_s=0) is None
        keeper.refill()
        assert keeper.ready(timeout=10) and len(started) == 2
    finally:
        keeper.close()
    assert all(child.closed for child in started[1:])  # the waiting spare was reaped at close


def test_a_spare_refused_or_dead_is_reaped_not_handed_out() -> None:
    started: list[FakeSpare] = []
    keeper = SpareKeeper(lambda: started.append(FakeSpare()) or started[-1])
    try:
        keeper.refill()
        assert keeper.ready(timeout=10)
        assert keeper.take(lambda child: False, wait_s=10) is None  # other limits, unknown processor
        keeper.refill()
        assert keeper.ready(timeout=10)
        started[1].kill()  # died while waiting
        assert keeper.take(lambda child: True, wait_s=10) is None
        wait_for(lambda: started[0].closed and started[1].closed, timeout=10, what="both to be reaped")
    finally:
        keeper.close()


def test_a_spare_that_cannot_start_leaves_none_and_the_keeper_goes_on() -> None:
    attempts: list[int] = []

    def start() -> FakeSpare:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError(11, "fork: Resource temporarily unavailable")
        return FakeSpare()

    keeper = SpareKeeper(start)
    try:
        keeper.refill()
        wait_for(lambda: attempts, timeout=10, what="the first start")
        assert keeper.take(lambda child: True, wait_s=10) is None
        keeper.refill()
        assert keeper.ready(timeout=10)
    finally:
        keeper.close()


# --- the Windows Job object, on a fake kernel32 -----------------------------------------------------


def test_a_job_caps_each_process_and_kills_it_when_closed() -> None:
    k = FakeKernel32()
    job = JobObject(k, 300 * MIB)
    [record] = k.jobs.values()
    assert record["limit"] == 300 * MIB
    assert record["flags"] == (
        JOB_OBJECT_LIMIT_PROCESS_MEMORY
        | JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
    )
    job.assign(4242)
    assert k.last_access == PROCESS_SET_QUOTA | PROCESS_TERMINATE
    assert record["pids"] == {4242}
    assert k.commit(4242, 200 * MIB) and not job.reached_limit()
    assert not k.commit(4242, 301 * MIB)  # the allocation fails: Python raises MemoryError
    assert job.reached_limit() and job.peak_process_memory() == 300 * MIB
    job.close()
    job.close()
    assert k.terminated == [4242]
    assert k.open_handles == set()  # the process handle was closed after the assignment, the job now


def test_terminate_kills_the_members() -> None:
    k = FakeKernel32()
    job = JobObject(k, MIB)
    job.assign(7)
    job.terminate()
    assert k.terminated == [7]
    job.close()


@pytest.mark.parametrize(
    "call", ["CreateJobObjectW", "SetInformationJobObject", "OpenProcess", "AssignProcessToJobObject"]
)
def test_a_failing_call_is_a_typed_error_naming_it_and_leaks_no_handle(call: str) -> None:
    k = FakeKernel32(fail=[call])
    with pytest.raises(JobObjectError, match=f"{call} failed \\(Windows error 5\\)") as caught:
        job = JobObject(k, MIB)
        try:
            job.assign(99)
        finally:
            job.close()
    assert caught.value.errno == 5
    assert k.open_handles == set()


def test_a_closed_job_refuses_new_members() -> None:
    k = FakeKernel32()
    job = JobObject(k, MIB)
    job.close()
    with pytest.raises(JobObjectError, match="closed"):
        job.assign(1)


CHILD_WRITES_AFTER_A_FORK_MID_WRITE = r"""
import array, fcntl, logging, os, sys, termios, threading, time
from morag_worker.core.processing.sandbox_child import fresh_std_streams

r, w = os.pipe()
os.dup2(w, 2)  # stderr: a pipe nobody reads yet, so a writing thread blocks holding its lock
sys.stderr = open(2, "w", closefd=False)
logging.getLogger().addHandler(logging.StreamHandler(sys.stderr))
threading.Thread(target=lambda: (sys.stderr.write("x" * (1 << 20)), sys.stderr.flush()), daemon=True).start()
def queued() -> int:
    count = array.array("i", [0])
    fcntl.ioctl(r, termios.FIONREAD, count)
    return count[0]
give_up = time.monotonic() + 60
while queued() < 65536 and time.monotonic() < give_up:  # the pipe full: the writer is blocked in it
    time.sleep(0.01)
pid = os.fork()
if pid == 0:
    os.close(r)
    if sys.argv[1] == "fresh":
        fresh_std_streams()
    logging.getLogger().warning("the child logs")
    sys.stderr.write("and writes\n")
    sys.stderr.flush()
    os._exit(0)
threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(r, 1 << 16), b"")], daemon=True).start()
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("exited", os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.02)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print("hung")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked children are POSIX's")
def test_a_forked_child_gets_streams_no_other_thread_holds() -> None:
    """The keeper forks spares while the task's thread may be writing a log line; the child's
    stderr would then keep that thread's buffer lock for ever."""
    script = CHILD_WRITES_AFTER_A_FORK_MID_WRITE

    def run(mode: str, wait_s: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", script, mode, wait_s], capture_output=True, text=True, timeout=120
        )
        return done.stdout.strip()

    assert run("fresh", "60") == "exited 0"
    assert run("inherited", "3") == "hung"  # what the test guards against, shown once
