"""The Windows code paths against the real thing: the Run key in the registry, the key in Credential
Manager, and the worker child's stdout channel and control pipe with the launcher's Windows
defaults. Skipped elsewhere (the same logic runs against fakes in tests/unit on every platform);
.github/workflows/windows.yml runs them through packaging/windows/test.ps1."""

from __future__ import annotations

import contextlib
import queue
import sys
import textwrap
import uuid
from collections.abc import Iterator

import pytest

from morag_worker.core.supervisor.child_process import ChildCallbacks, SubprocessLauncher
from morag_worker.core.supervisor.events import StopMode
from morag_worker.core.supervisor.worker_command import WorkerCommand
from tests.processes import base_env

pytestmark = [
    pytest.mark.windows,
    pytest.mark.skipif(sys.platform != "win32", reason="needs Windows: registry, Credential Manager"),
]

TEST_KEY_PARENT = r"Software\MoRAG Worker tests"


@pytest.fixture
def run_key_path() -> Iterator[str]:
    """A throwaway key under HKCU standing in for ...\\CurrentVersion\\Run, removed afterwards."""
    import winreg

    path = TEST_KEY_PARENT + "\\Run-" + uuid.uuid4().hex[:8]
    yield path
    for doomed in (path, TEST_KEY_PARENT):
        # Not created, or another test's key still lives under the parent.
        with contextlib.suppress(OSError):
            winreg.DeleteKey(winreg.HKEY_CURRENT_USER, doomed)


def test_run_key_enable_and_disable_in_the_real_registry(run_key_path: str) -> None:
    import subprocess

    from morag_worker.core.config.autostart import RUN_VALUE_NAME, WindowsAutostart, WinregRunKey

    key = WinregRunKey(run_key_path)
    autostart = WindowsAutostart(key)
    assert not autostart.is_enabled()
    command = [
        r"C:\Users\Test User\AppData\Local\Programs\MoRAG Worker\morag-worker.exe",
        "--config-dir",
        r"D:\c",
    ]
    autostart.enable(command)
    assert key.get(RUN_VALUE_NAME) == subprocess.list2cmdline(command)
    assert autostart.is_enabled()
    autostart.disable()
    assert key.get(RUN_VALUE_NAME) is None and not autostart.is_enabled()
    autostart.disable()  # twice is fine


def test_key_round_trip_through_credential_manager() -> None:
    from keyring.backends.Windows import WinVaultKeyring

    from morag_worker.core.config.credentials import CredentialStore

    store = CredentialStore(WinVaultKeyring())
    hub = f"https://hub-{uuid.uuid4().hex[:8]}.test.invalid"
    secret = "mk_" + uuid.uuid4().hex
    try:
        assert store.get(hub) is None
        store.set(hub, secret)
        assert store.get(hub) == secret
        assert "Credential Manager" in store.backend_description()
    finally:
        assert store.delete(hub)
    assert store.get(hub) is None


WRAPPER_CHILD = """
    import os, sys, threading
    from morag_worker.core.execution.progress_channel import ChannelWriter
    from morag_worker.core.execution.windows_wrapper import ControlReader, take_channel_from_stdout
    take_channel_from_stdout(os.environ)
    print("stray print goes to the log", flush=True)
    ChannelWriter.from_env(os.environ).send("heartbeat", consumer="connected")
    cancel, stopped = threading.Event(), threading.Event()
    stdin = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    reader = ControlReader(stdin, cancel=cancel, request_stop=stopped.set)
    reader.start()
    stopped.wait(60)
    print("cancelled" if cancel.is_set() else "finished", flush=True)
"""


def test_threads_pool_child_talks_over_stdout_and_stops_through_the_pipe() -> None:
    """The launcher's Windows default (no channel given: stdout) with the wrapper's own control reader."""
    items: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
    callbacks = ChildCallbacks(
        on_message=lambda line: items.put(("message", line)),
        on_output=lambda line: items.put(("output", line)),
        on_exit=lambda code: items.put(("exit", code)),
    )
    command = WorkerCommand(
        argv=[sys.executable, "-c", textwrap.dedent(WRAPPER_CHILD)], env=base_env(), pool="threads"
    )
    launcher = SubprocessLauncher()
    assert launcher.channel == "stdout"
    child = launcher.launch(command, callbacks)
    child.control(StopMode.NOW)
    seen = []
    while not seen or seen[-1][0] != "exit":
        seen.append(items.get(timeout=60))
    child.close()
    assert seen[-1] == ("exit", 0)
    assert [k for k, _ in seen].count("message") == 1
    outputs = [v for k, v in seen if k == "output"]
    assert "stray print goes to the log" in outputs and "cancelled" in outputs
