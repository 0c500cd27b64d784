"""Pieces of the headless front end and the Windows wrapper that need no process: views, exit codes,
the control reader, the signal choice per pool."""

from __future__ import annotations

import io
import json
import signal
import threading

import pytest
import structlog

from morag_worker.core.cli.errors import ExitCode
from morag_worker.core.cli.headless import exit_code_for
from morag_worker.core.cli.terminal_view import JsonView, TerminalView, progress_line
from morag_worker.core.execution.windows_wrapper import ControlReader
from morag_worker.core.results import TaskOutcome, TaskRecord
from morag_worker.core.supervisor.child_process import posix_signal_for
from morag_worker.core.supervisor.events import Problem, StopMode, TaskProgress, WorkerState, WorkerStatus
from morag_worker.core.units import human_bytes

pytestmark = pytest.mark.unit


def test_stop_signals_never_cold_stop_a_solo_pool() -> None:
    assert posix_signal_for("prefork", StopMode.FINISH) == signal.SIGTERM
    assert posix_signal_for("prefork", StopMode.NOW) == signal.SIGQUIT
    assert posix_signal_for("prefork", StopMode.KILL) == signal.SIGKILL
    assert posix_signal_for("solo", StopMode.NOW) == signal.SIGTERM  # SIGQUIT would lose the task
    assert posix_signal_for("threads", StopMode.NOW) == signal.SIGTERM


@pytest.mark.parametrize(
    ("state", "problem", "code"),
    [
        (WorkerState.STOPPED, None, ExitCode.OK),
        (WorkerState.CRASHED, Problem.KEY_REJECTED, ExitCode.KEY_REJECTED),
        (WorkerState.CRASHED, Problem.HUB_UNREACHABLE, ExitCode.HUB_UNREACHABLE),
        (WorkerState.CRASHED, Problem.BROKER_UNREACHABLE, ExitCode.BROKER_UNREACHABLE),
        (WorkerState.CRASHED, Problem.NO_API_KEY, ExitCode.CONFIG),
        (WorkerState.CRASHED, Problem.STALLED, ExitCode.WORKER_CRASHED),
    ],
)
def test_exit_codes(state: WorkerState, problem: Problem | None, code: ExitCode) -> None:
    assert exit_code_for(WorkerStatus(state, "x", problem=problem)) is code


def progress(**kw: object) -> TaskProgress:
    fields: dict[str, object] = dict(
        task_id="0123456789", stage="DOWNLOADING", done=1.5 * 2**20, total=3 * 2**20, percent=50.0,
        filename="a.pdf", speed=350 * 1024, eta_s=4.4,
    )  # fmt: skip
    fields.update(kw)
    return TaskProgress(**fields)  # type: ignore[arg-type]


def test_progress_line() -> None:
    assert progress_line(progress()) == "a.pdf  downloading   50.0%  1.5 MiB of 3.0 MiB  350 KiB/s  ETA 4 s"
    line = progress_line(
        progress(
            stage="PROCESSING",
            done=2,
            total=8,
            percent=25.0,
            speed=0.5,
            eta_s=3700,
            message="page 2",
            filename=None,
        )
    )
    assert line == "01234567  processing   25.0%  2 of 8  0.5/s  ETA 1 h 01 min  page 2"
    assert len(progress_line(progress(filename="x" * 300), width=40)) == 40
    assert human_bytes(512) == "512 B" and human_bytes(5 * 2**30) == "5.0 GiB"


def test_terminal_view_redraws_task_lines_in_place() -> None:
    out = io.StringIO()
    now = [0.0]
    view = TerminalView(out, width=lambda: 120, clock=lambda: now[0])
    view.on_status(WorkerStatus(WorkerState.RUNNING, "Waiting for work"))
    view.on_progress(progress())
    now[0] += 1
    view.on_progress(progress(done=2 * 2**20, percent=66.7))
    view.on_progress(progress(done=2.5 * 2**20, percent=83.3))  # too soon: not drawn
    view.on_task_finished(TaskRecord("0123456789", TaskOutcome.SUCCEEDED, 10.0, 13.0, filename="a.pdf"))
    view.on_log('{"event": "debug chatter", "level": "info"}')
    view.on_log('{"event": "broker down", "level": "warning"}')
    text = out.getvalue()
    assert "running: Waiting for work" in text
    assert text.count("\x1b[1F\x1b[J") >= 2  # the task line was replaced, not appended
    assert "66.7%" in text and "83.3%" not in text
    assert "a.pdf: succeeded after 3 s" in text
    assert "broker down" in text and "debug chatter" not in text


def test_json_view_throttles_progress(capsys: pytest.CaptureFixture[str]) -> None:
    from morag_worker.core.logging import configure_logging

    stream = io.StringIO()
    configure_logging(renderer="json", stream=stream)
    now = [0.0]
    view = JsonView(stream=stream, clock=lambda: now[0], progress_every_s=5)
    view.on_progress(progress())
    view.on_progress(progress(done=2 * 2**20))
    now[0] += 6
    view.on_progress(progress(done=2.5 * 2**20))
    view.on_progress(progress(stage="PROCESSING", done=0, total=None, percent=None))
    view.on_status(
        WorkerStatus(WorkerState.CRASHED, "gave up", problem=Problem.HUB_UNREACHABLE, last_output=("x",))
    )
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds == ["task.progress", "task.progress", "task.progress", "worker.status"]
    assert events[-1]["problem"] == "hub_unreachable" and events[-1]["last_output"] == ["x"]


def test_control_reader_finish_stop_now_and_eof() -> None:
    cancel = threading.Event()
    stops: list[bool] = []
    reader = ControlReader(
        io.BytesIO(b"finish\n\nbogus\n"), cancel=cancel, request_stop=lambda: stops.append(True)
    )
    reader.run()
    assert stops == [True, True] and not cancel.is_set()  # finish, then EOF
    stops.clear()
    reader = ControlReader(
        io.BytesIO(b"STOP-NOW\r\n"), cancel=cancel, request_stop=lambda: stops.append(True)
    )
    reader.run()
    assert cancel.is_set() and stops == [True, True]


def test_terminal_view_names_the_queues_consumed_and_the_cpu_notice_once() -> None:
    out = io.StringIO()
    view = TerminalView(out, width=lambda: 120)
    notice = "No usable NVIDIA GPU found: audio and video are transcribed on the CPU, more slowly."
    queues = ("gpu-tasks-alice", "cpu-tasks-alice")
    view.on_status(WorkerStatus(WorkerState.STARTING, "Connecting", queues=queues, notice=notice))
    view.on_status(WorkerStatus(WorkerState.RUNNING, "Waiting for work", queues=queues, notice=notice))
    text = out.getvalue()
    assert "running: Waiting for work (queues gpu-tasks-alice, cpu-tasks-alice)" in text
    assert "starting: Connecting\n" in text  # queues only once they are consumed
    assert text.count(notice) == 1


def test_terminal_view_says_when_the_hub_is_unreachable_at_each_try() -> None:
    out = io.StringIO()
    view = TerminalView(out, width=lambda: 120)
    for wait in (1, 2, 4):
        message = f"Hub unreachable, retrying in {wait} s."
        view.on_status(WorkerStatus(WorkerState.WAITING_FOR_HUB, message, problem=Problem.HUB_UNREACHABLE))
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "waiting_for_hub: Hub unreachable, retrying in 1 s.",
        "waiting_for_hub: Hub unreachable, retrying in 2 s.",
        "waiting_for_hub: Hub unreachable, retrying in 4 s.",
    ]
    waiting = WorkerStatus(WorkerState.WAITING_FOR_HUB, "", problem=Problem.HUB_UNREACHABLE)
    assert exit_code_for(waiting) is ExitCode.OK  # not an end: the worker keeps running


def test_the_headless_views_say_why_intake_is_paused() -> None:
    held = WorkerStatus(
        WorkerState.HELD_BACK,
        "Paused: GPU at 86 °C, waiting for 78 °C.",
        held_reason="GPU at 86 °C, waiting for 78 °C",
    )
    out = io.StringIO()
    TerminalView(out, width=lambda: 120).on_status(held)
    assert out.getvalue().split("] ", 1)[1] == "held_back: Paused: GPU at 86 °C, waiting for 78 °C.\n"
    assert exit_code_for(held) is ExitCode.OK  # not an end: the worker resumes by itself
    with structlog.testing.capture_logs() as events:
        JsonView().on_status(held)
    assert events[0]["state"] == "held_back" and events[0]["held_reason"] == "GPU at 86 °C, waiting for 78 °C"
