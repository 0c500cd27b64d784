"""The real launcher with small stand-in children: channel and log lines, exit ordering, the
process group, the control pipe and signals (no Celery, so these run in about a second)."""

from __future__ import annotations

import queue
import sys
import textwrap

import pytest

from morag_worker.core.execution.progress_channel import HeartbeatMessage, parse_line
from morag_worker.core.supervisor.child_process import ChildCallbacks, SubprocessLauncher
from morag_worker.core.supervisor.events import StopMode
from morag_worker.core.supervisor.worker_command import WorkerCommand
from tests.processes import base_env, wait_for
from tests.supervised import process_group

pytestmark = pytest.mark.integration


class Events:
    def __init__(self) -> None:
        self.items: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self.callbacks = ChildCallbacks(
            on_message=lambda line: self.items.put(("message", line)),
            on_output=lambda line: self.items.put(("output", line)),
            on_exit=lambda code: self.items.put(("exit", code)),
        )

    def until_exit(self, timeout: float = 30) -> list[tuple[str, object]]:
        seen = []
        while True:
            item = self.items.get(timeout=timeout)
            seen.append(item)
            if item[0] == "exit":
                return seen


def command(script: str, pool: str = "prefork") -> WorkerCommand:
    return WorkerCommand(argv=[sys.executable, "-c", textwrap.dedent(script)], env=base_env(), pool=pool)


FD_CHILD = """
    import os, sys
    from morag_worker.core.execution.progress_channel import ChannelWriter
    writer = ChannelWriter.from_env(os.environ)
    print("a log line", flush=True)
    print("an error line", file=sys.stderr, flush=True)
    writer.send("heartbeat", consumer="connected", since_poll_s=0.1, reserved=0, active=[])
    if os.fork() == 0:  # a pool process writes too
        writer.send("heartbeat", consumer="forked")
        os._exit(0)
    os.wait()
    sys.exit(3)
"""


def test_fd_channel_lines_logs_and_exit_last() -> None:
    events = Events()
    child = SubprocessLauncher("fd").launch(command(FD_CHILD), events.callbacks)
    seen = events.until_exit()
    assert seen[-1] == ("exit", 3)
    messages = [parse_line(v) for k, v in seen if k == "message"]  # type: ignore[arg-type]
    assert all(isinstance(m, HeartbeatMessage) for m in messages)
    assert sorted(m.consumer for m in messages) == ["connected", "forked"]  # type: ignore[union-attr]
    outputs = {v for k, v in seen if k == "output"}
    assert {"a log line", "an error line"} <= outputs
    child.close()


STDOUT_CHILD = """
    import os, sys
    from morag_worker.core.execution.windows_wrapper import take_channel_from_stdout
    from morag_worker.core.execution.progress_channel import ChannelWriter
    take_channel_from_stdout(os.environ)
    print("stray print goes to the log", flush=True)
    ChannelWriter.from_env(os.environ).send("heartbeat", consumer="connected")
    for line in sys.stdin:
        print("control:", line.strip(), flush=True)
        if line.strip() == "stop-now":
            break
"""


def test_stdout_channel_and_control_pipe() -> None:
    events = Events()
    child = SubprocessLauncher("stdout").launch(command(STDOUT_CHILD, pool="threads"), events.callbacks)
    child.control(StopMode.FINISH)
    child.control(StopMode.NOW)
    seen = events.until_exit()
    assert seen[-1] == ("exit", 0)
    assert [k for k, _ in seen].count("message") == 1
    outputs = [v for k, v in seen if k == "output"]
    assert outputs == ["stray print goes to the log", "control: finish", "control: stop-now"]
    child.close()


def test_stdout_channel_needs_the_wrapper() -> None:
    with pytest.raises(ValueError, match="winworker"):
        SubprocessLauncher("stdout").launch(command("pass"), Events().callbacks)


GROUP_CHILD = """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, lambda *a: print("warm", flush=True))
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("started", flush=True)
    signal.pause()
    signal.pause()
"""


def test_signals_and_kill_take_the_whole_group() -> None:
    events = Events()
    child = SubprocessLauncher("fd").launch(command(GROUP_CHILD), events.callbacks)
    assert events.items.get(timeout=30) == ("output", "started")
    wait_for(lambda: len(process_group(child.pid)) == 2, what="the grandchild")
    child.control(StopMode.FINISH)
    assert events.items.get(timeout=30) == ("output", "warm")
    assert len(process_group(child.pid)) == 2  # SIGTERM went to the main process only
    child.control(StopMode.KILL)
    assert events.until_exit()[-1] == ("exit", -9)
    assert process_group(child.pid) == []
    child.close()
