"""What the worker child loads on its way to ready (issue 14: start to ready <= a bare ``celery worker``).

Each check runs in a fresh interpreter, since ``sys.modules`` of the test process holds everything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.processes import ROOT, base_env

pytestmark = pytest.mark.unit

# Celery's umbrella command imports every sub-command; ``amqp`` alone brings a REPL toolkit.
CELERY_CLI_ONLY = ("celery.bin.celery", "celery.bin.amqp", "click_repl", "prompt_toolkit")


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    probe = code + f"\nimport json, sys\nprint(json.dumps(sorted(set({names!r}) & set(sys.modules))))\n"
    result = _run(probe)
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_the_worker_entry_runs_celerys_worker_command_without_the_umbrella_command() -> None:
    code = (
        "from morag_worker.core.execution.worker_main import run_worker\nassert run_worker(['--help']) == 0\n"
    )
    assert _loaded_after(code, CELERY_CLI_ONLY) == []
    shown = _run(code)
    for option in ("--without-mingle", "--queues", "--concurrency", "--pool"):
        assert option in shown.stdout  # celery worker's own options, as `celery worker --help` lists


def test_the_worker_entry_refuses_an_unknown_option_like_celery() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "morag_worker.core.execution.worker_main", "--no-such-option"],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "No such option" in result.stderr and "celery worker" in result.stderr


# Loaded on the first task's way (the pipeline, the HTTP stack) or by a converter, never to get ready.
NOT_AT_WORKER_IMPORT = (
    "requests",
    "urllib3",
    "charset_normalizer",
    "morag_worker.core.execution.pipeline",
    "morag_worker.core.transfer.downloader",
    "pypdfium2",
    "pypdf",
    "openpyxl",
    "docx",
    "mammoth",
    "markitdown",
    "lxml",
    "av",
    "faster_whisper",
    "ctranslate2",
    "numpy",
    "pynvml",
)


def test_importing_the_worker_app_loads_neither_the_pipeline_nor_any_converter() -> None:
    assert _loaded_after("import morag_worker.core.worker", NOT_AT_WORKER_IMPORT) == []


def test_a_pool_process_warms_the_pipeline_up_once_the_worker_is_ready() -> None:
    code = (
        "import sys\n"
        "from morag_worker.core.execution.context import WorkerRuntime\n"
        "runtime = WorkerRuntime(env={})\n"
        "thread = runtime.warm_up()\n"
        "assert thread is not None and runtime.warm_up() is None  # once per process\n"
        "assert 'morag_worker.core.execution.pipeline' not in sys.modules\n"
        "runtime.announce_ready(hostname='h', queues=[], config={})\n"
        "thread.join(60)\n"
        "assert not thread.is_alive()\n"
    )
    loaded = _loaded_after(code, ("morag_worker.core.execution.pipeline", "requests"))
    assert loaded == ["morag_worker.core.execution.pipeline", "requests"]


def test_a_fork_waits_for_an_import_under_the_guard() -> None:
    # The child reports whether the guarded block had finished when it was forked. Unguarded, the
    # fork would happen at once, in the middle of the block.
    code = """
import os, threading
from morag_worker.core.fork_guard import import_guard

entered, attempting, forked, done = threading.Event(), threading.Event(), threading.Event(), []
os.register_at_fork(before=attempting.set)  # runs before the guard's hook (reverse order)

def hold():
    with import_guard():
        entered.set()
        attempting.wait(30)
        forked.wait(0.5)  # guarded, the fork cannot happen meanwhile
        done.append(True)

holder = threading.Thread(target=hold)
holder.start()
entered.wait(30)
pid = os.fork()
if pid == 0:
    os._exit(0 if done else 1)
forked.set()
holder.join(30)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="prefork pool processes are POSIX's")
def test_ready_reaches_pool_processes_and_a_dead_waiter_does_not_block_it() -> None:
    """A pool process killed while its warm-up waits (Celery kills one that is slow to say UP)
    must not stop the main process from saying ready (a multiprocessing.Event's set() would)."""
    from morag_worker.core.execution.context import _SharedFlag

    flag = _SharedFlag()
    dead = os.fork()
    if dead == 0:
        flag.wait(60)
        os._exit(0)
    seer = os.fork()
    if seer == 0:
        os._exit(0 if flag.wait(60) else 1)
    os.kill(dead, signal.SIGKILL)
    os.waitpid(dead, 0)
    flag.set()
    assert flag.is_set()
    _, status = os.waitpid(seer, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # the flag reached a process forked before it was set
