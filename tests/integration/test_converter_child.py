"""Real converter children: forked (Linux) and spawned (the Windows path, run here on Linux).

The processors below are defined in this module: a forked child inherits them, so each plays one
hostile input (allocating without end, sleeping, printing too much, crashing, dying). The spawned
child resolves real processors from the default registry, so its cases use real files.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from morag_worker.core.config.settings import ConverterLimits
from morag_worker.core.processing import (
    CorruptInput,
    ProcessedContent,
    ProcessingError,
    ProcessorRegistry,
    ProgressFn,
    TaskCancelled,
)
from morag_worker.core.processing.sandbox import (
    SPAWN_BASELINE_BYTES,
    ConversionRequest,
    ConverterCrashed,
    ConverterLimitReached,
    ConverterSandbox,
    StartMethod,
)
from morag_worker.core.processing.sandbox_wire import Limit
from morag_worker.core.processing.winjob import JobObject
from tests.bombs import pdf_shared_stream
from tests.conftest import SAMPLES
from tests.fakes import FakeKernel32
from tests.processes import Proc, base_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")]

MIB = 1024 * 1024
LIMITS = ConverterLimits(memory_bytes=64 * MIB, deadline_s=20, max_output_bytes=MIB)


class Scripted:
    """A processor that runs ``body`` in the converter child and records its pid in ``pid_file``."""

    def __init__(self, body: Any, pid_file: Path | None = None, *, isolated: bool = True) -> None:
        self.name = "scripted"
        self.isolated = isolated
        self._body = body
        self._pid_file = pid_file
        self.preloads = 0

    def preload(self) -> None:
        self.preloads += 1

    def process(self, path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        if self._pid_file is not None:
            self._pid_file.write_text(str(os.getpid()))
        result = self._body(path, options, progress)
        assert isinstance(result, ProcessedContent)
        return result


class PluginError(CorruptInput):
    """A plugin's own kind of damaged input."""


def convert(body: Any, limits: ConverterLimits = LIMITS, progress: Any = None, **kw: Any) -> Any:
    sandbox = ConverterSandbox(limits, StartMethod.FORK)
    return sandbox.convert(
        Scripted(body, **kw), ConversionRequest(Path("input.bin")), progress or (lambda *a: None)
    )


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_text_metadata_and_progress_come_back_from_a_forked_child() -> None:
    def body(path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        for page in range(3):
            progress(page, 3, f"page {page + 1} of 3")
            time.sleep(0.15)  # past the child's progress throttle, so every page is sent
        progress(3, 3, "3 pages extracted")
        return ProcessedContent("# Título\n\nünïcode ✓\n", {"pages": 3, "pid": os.getpid()})

    seen: list[tuple[Any, ...]] = []
    result = convert(body, progress=lambda *a: seen.append(a))
    assert result.markdown == "# Título\n\nünïcode ✓\n"
    assert result.metadata["pages"] == 3 and result.metadata["pid"] != os.getpid()
    assert seen == [
        (0.0, 3.0, "page 1 of 3"),
        (1.0, 3.0, "page 2 of 3"),
        (2.0, 3.0, "page 3 of 3"),
        (3.0, 3.0, "3 pages extracted"),
    ]


def test_a_plugins_processing_error_arrives_as_its_nearest_kind_with_its_message() -> None:
    def body(*_: Any) -> ProcessedContent:
        raise PluginError("the IMG file is damaged (truncated header)")

    with pytest.raises(CorruptInput) as caught:
        convert(body)
    assert type(caught.value) is CorruptInput
    assert caught.value.message == "the IMG file is damaged (truncated header)"


def test_any_other_exception_is_a_clear_failure() -> None:
    def body(*_: Any) -> ProcessedContent:
        return {}["missing"]  # type: ignore[no-any-return]

    with pytest.raises(ConverterCrashed, match=r"failed unexpectedly \(KeyError: 'missing'\)"):
        convert(body)


def test_a_memory_bomb_hits_the_memory_limit_and_says_so(tmp_path: Path) -> None:
    def body(*_: Any) -> ProcessedContent:
        hoard = []
        while True:
            hoard.append(bytearray(8 * MIB))

    started = time.monotonic()
    with pytest.raises(ConverterLimitReached) as caught:
        convert(body, pid_file=tmp_path / "pid")
    assert caught.value.limit is Limit.MEMORY
    assert caught.value.message.startswith("The conversion needed more than 64 MB of memory")
    assert time.monotonic() - started < 10
    wait_for(lambda: gone(int((tmp_path / "pid").read_text())), timeout=10, what="the child to be gone")


def test_a_slow_conversion_is_killed_at_the_deadline(tmp_path: Path) -> None:
    def body(*_: Any) -> ProcessedContent:
        time.sleep(60)
        raise AssertionError("not reached")

    started = time.monotonic()
    with pytest.raises(ConverterLimitReached) as caught:
        convert(body, ConverterLimits(deadline_s=1), pid_file=tmp_path / "pid")
    assert caught.value.limit is Limit.TIME
    assert caught.value.message.startswith("The conversion took longer than 1 s")
    assert time.monotonic() - started < 6
    assert gone(int((tmp_path / "pid").read_text()))


# Over 1 MiB: as characters; in UTF-8 only; as stored (JSON escapes: 6 bytes a character) only.
@pytest.mark.parametrize("text", ["x" * (MIB + 1), "€" * (MIB // 3 + 1), "ж" * (MIB // 6 + 1)])
def test_output_over_the_limit_is_refused_before_it_is_sent(text: str) -> None:
    with pytest.raises(ConverterLimitReached) as caught:
        convert(lambda *_: ProcessedContent(text, {}))
    assert caught.value.limit is Limit.OUTPUT
    assert "output larger than 1 MB" in caught.value.message


def test_a_pdf_whose_pages_share_one_content_stream_stops_at_the_output_limit(tmp_path: Path) -> None:
    """Issue 10's bomb: its text grows by a page at a time, and the PDF processor stops once it is over."""
    bomb = tmp_path / "shared.pdf"
    bomb.write_bytes(pdf_shared_stream(pages=3000, lines=1000))  # 126 MB of text; about 90 s to extract
    processor = ProcessorRegistry.default().resolve(None, None, bomb)
    started = time.monotonic()
    with pytest.raises(ConverterLimitReached) as caught:
        ConverterSandbox(ConverterLimits(max_output_bytes=MIB, deadline_s=60), StartMethod.FORK).convert(
            processor, ConversionRequest(bomb), lambda *a: None
        )
    assert caught.value.limit is Limit.OUTPUT, caught.value.message
    assert time.monotonic() - started < 20


def test_stop_now_kills_the_child_and_the_cancellation_propagates(tmp_path: Path) -> None:
    def body(path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        for page in range(10_000):
            progress(page, 10_000, "working")
            time.sleep(0.01)
        raise AssertionError("not reached")

    calls = 0

    def progress(*_: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise TaskCancelled("stopped by the contributor")

    with pytest.raises(TaskCancelled, match="stopped by the contributor"):
        convert(body, progress=progress, pid_file=tmp_path / "pid")
    assert gone(int((tmp_path / "pid").read_text()))


@pytest.mark.parametrize(
    ("how", "says"),
    [
        (lambda: os._exit(9), r"stopped unexpectedly \(exit code 9\)"),
        (
            lambda: (faulthandler.disable(), os.kill(os.getpid(), 11)),
            r"stopped unexpectedly \(killed by SIGSEGV\)",
        ),
    ],
)
def test_a_child_that_dies_is_a_clear_failure(how: Any, says: str) -> None:
    def body(*_: Any) -> ProcessedContent:
        how()
        raise AssertionError("not reached")

    with pytest.raises(ConverterCrashed, match=says):
        convert(body)


def test_a_processor_that_is_not_isolated_runs_here_and_preload_runs_once() -> None:
    sandbox = ConverterSandbox(LIMITS, StartMethod.FORK)
    here = Scripted(lambda *_: ProcessedContent(str(os.getpid()), {}), isolated=False)
    assert sandbox.convert(here, ConversionRequest(Path("x")), lambda *a: None).markdown == str(os.getpid())
    forked = Scripted(lambda *_: ProcessedContent(str(os.getpid()), {}))
    for _ in range(3):
        assert sandbox.convert(forked, ConversionRequest(Path("x")), lambda *a: None).markdown != str(
            os.getpid()
        )
    assert forked.preloads == 1


def test_conversions_on_several_threads_each_end_with_their_own_child() -> None:
    """Each child closes the others' pipes, so a long conversion never holds up a short one's end."""
    sandbox = ConverterSandbox(LIMITS, StartMethod.FORK)
    results: dict[int, float] = {}

    def run(seconds: float) -> None:
        started = time.monotonic()

        def body(*_: Any) -> ProcessedContent:
            time.sleep(seconds)
            return ProcessedContent(f"slept {seconds}", {})

        assert sandbox.convert(Scripted(body), ConversionRequest(Path("x")), lambda *a: None).markdown
        results[int(seconds * 10)] = time.monotonic() - started

    threads = [threading.Thread(target=run, args=(s,)) for s in (3.0, 0.2, 0.2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results[2] < 2.5 and results[30] >= 3.0


# --- spawned: the Windows path ----------------------------------------------------------------------


def spawn_convert(path: Path, limits: ConverterLimits = LIMITS, **kw: Any) -> ProcessedContent:
    sandbox = ConverterSandbox(limits, StartMethod.SPAWN, **kw)
    processor = ProcessorRegistry.default().resolve(None, None, path)
    return sandbox.convert(processor, ConversionRequest(path), lambda *a: None)


def test_a_spawned_child_converts_a_real_document() -> None:
    result = spawn_convert(SAMPLES / "sample.pdf")
    assert "MoRAG Worker runs on a contributor's machine" in result.markdown
    assert result.metadata["pages"] == 2


def test_a_spawned_child_is_put_in_a_job_object_before_it_reads_its_request() -> None:
    kernel32 = FakeKernel32()
    jobs: list[JobObject] = []

    def job_factory(limit: int) -> JobObject:
        jobs.append(JobObject(kernel32, limit))
        return jobs[-1]

    result = spawn_convert(SAMPLES / "sample.txt", job_factory=job_factory)
    assert "MoRAG Worker" in result.markdown
    [job] = jobs
    assert job.memory_limit_bytes == LIMITS.memory_bytes + SPAWN_BASELINE_BYTES
    assert kernel32.calls[:4] == [
        "CreateJobObjectW",
        "SetInformationJobObject",
        "OpenProcess",
        "AssignProcessToJobObject",
    ]
    assert kernel32.open_handles == set()  # the job was closed with the child


def test_a_spawned_child_limits_its_own_memory_where_there_is_no_job(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.csv"
    bomb.write_text("a,b\n" + ("," * 20 + "\n") * (4 * MIB // 21))  # 4 MB of empty cells: over 100 MB parsed
    with pytest.raises(ConverterLimitReached) as caught:
        spawn_convert(bomb)
    assert caught.value.limit is Limit.MEMORY


def test_a_spawned_childs_processing_error_keeps_its_kind(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": ')
    with pytest.raises(ProcessingError) as caught:
        spawn_convert(broken)
    assert type(caught.value) is CorruptInput and "not valid JSON" in caught.value.message


ORPHAN_SCRIPT = """
import os, sys, time
from pathlib import Path
from morag_worker.core.processing import ProcessedContent
from morag_worker.core.processing.sandbox import ConversionRequest, ConverterSandbox, StartMethod

class Sleeper:
    name = "sleeper"
    def process(self, path, options, progress):
        Path(sys.argv[1]).write_text(str(os.getpid()))
        time.sleep(120)
        return ProcessedContent("late", {})

ConverterSandbox(start=StartMethod.FORK).convert(Sleeper(), ConversionRequest(Path("x")), lambda *a: None)
"""


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_converter_child_dies_with_the_pool_process_that_started_it(tmp_path: Path) -> None:
    """A pool child killed mid-conversion (a hard time limit, a cold stop) leaves no converter behind."""
    pid_file = tmp_path / "converter.pid"
    parent = Proc([sys.executable, "-c", ORPHAN_SCRIPT, str(pid_file)], env=base_env(), name="pool stand-in")
    try:
        converter = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="the converter"))
        assert not gone(converter)
        os.kill(parent.pid, signal.SIGKILL)
        wait_for(lambda: gone(converter) or zombie(converter), timeout=10, what="the converter child to die")
    finally:
        parent.stop()
