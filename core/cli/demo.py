"""``morag-worker demo``: the whole loop on one machine, with nothing configured.

Starts a private redis-server on a free port in a temporary folder, the hub, a demo user with a
fresh key (and its Redis ACL user), and a headless worker (``morag-worker --no-gui``, the same
program a contributor runs); then submits the bundled samples, shows their progress, prints the
markdown, and shuts everything down. Its last line says how many samples converted ("4 of 4
converted", or "3 of 4 converted; failed: sample.xlsx (reason)"); the exit status is 0 only when
every sample converted and the worker stopped cleanly.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

from morag_worker.core.cli.devstack import (
    Proc,
    RedisServer,
    RedisServerMissing,
    free_port,
    python_argv,
    wait_for,
)
from morag_worker.core.cli.errors import CliError, ExitCode
from morag_worker.core.cli.submit import failure_of
from morag_worker.core.hub_client import HubClient, TaskView
from morag_worker.core.server.acl import create_provisioned_key
from morag_worker.core.wording import sentence

__all__ = ["run"]

DEMO_USER = "demo"
POLL_S = 0.25


def _say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def _child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MORAG_", "MAIN_SERVER_URL", "REDIS_URL", "CELERY_", "WORKER_TYPE"))
    }
    env.update(extra)
    return env


def _samples(folder: Path, own: Path | None = None) -> list[Path]:
    """Copies of the documents to submit, in name order: every bundled ``sample.*``, or every file
    in ``own`` (``--samples DIR``)."""
    if own is not None:
        if not own.is_dir():
            raise CliError(f"the --samples option needs a folder, and {own} is not one", ExitCode.USAGE)
        entries: list[Any] = [p for p in own.iterdir() if p.is_file() and not p.name.startswith(".")]
    else:
        bundled = importlib.resources.files("morag_worker.resources") / "samples"
        entries = [
            e
            for e in bundled.iterdir()
            if e.is_file() and e.name.startswith("sample.") and not e.name.endswith(".py")
        ]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in sorted(entries, key=lambda e: e.name):
        target = folder / entry.name
        target.write_bytes(entry.read_bytes())
        paths.append(target)
    if not paths:
        raise CliError(f"there are no files to submit in {own or 'the bundled samples'}", ExitCode.USAGE)
    return paths


def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="morag-demo-"))
    try:
        with ExitStack() as stack:
            return _run(args, tmp, stack)
    except RedisServerMissing as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None
    finally:
        if args.keep:
            _say(f"Kept {tmp}.")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, tmp: Path, stack: ExitStack) -> int:
    samples = _samples(tmp / "samples", getattr(args, "samples", None))
    _say("Starting a private redis-server.")
    server = RedisServer(tmp / "redis")
    stack.callback(server.stop)

    port = free_port()
    hub_url = f"http://127.0.0.1:{port}"
    _say(f"Starting the hub on {hub_url}.")
    hub = Proc(
        python_argv("-m", "morag_worker", "hub", "--port", str(port), "--storage", str(tmp / "hub")),
        env=_child_env(REDIS_URL=server.url),
        name="hub",
    )
    stack.callback(hub.stop)
    wait_for(lambda: requests.get(hub_url + "/healthz", timeout=2).ok, 60, "the hub to start")

    api_key = create_provisioned_key(server.url, DEMO_USER, "morag-worker demo")
    _say(f"Created user {DEMO_USER!r} with a fresh API key (and its Redis ACL user).")

    _say("Starting a headless worker (morag-worker --no-gui).")
    worker = Proc(
        python_argv("-m", "morag_worker", "--no-gui", "--config-dir", str(tmp / "config")),
        env=_child_env(
            MORAG_API_KEY=api_key,
            MAIN_SERVER_URL=hub_url,
            TEMP_DIR=str(tmp / "work"),
            # The demo converts at once: a laptop on battery or a full-screen terminal does not hold
            # it back (a hot GPU still does, and the worker says so).
            MORAG_PAUSE_ON_BATTERY="off",
            MORAG_PAUSE_WHEN_FULLSCREEN="off",
        ),
        name="worker",
    )
    stack.callback(worker.stop, 60)
    client = HubClient(hub_url, api_key)
    stack.callback(client.close)
    try:
        wait_for(lambda: worker.popen.poll() is not None or client.workers(), 120, "the worker to come up")
    except TimeoutError as exc:
        raise CliError(f"the worker did not come up: {exc}", ExitCode.BROKER_UNREACHABLE) from None
    if worker.popen.poll() is not None:
        raise CliError("the worker exited:\n" + worker.output()[-2000:], ExitCode.BROKER_UNREACHABLE)
    queues = ", ".join(client.workers()[0].get("queues") or [])
    _say(f"The worker is ready and waiting for work on {queues}.")

    tasks: dict[str, Path] = {}
    for path in samples:
        uploaded = client.upload(path)
        created = client.create_task(file_id=uploaded["file_id"])  # gpu-tasks-{user}, as the seed sends
        tasks[created["task_id"]] = path
        _say(f"Submitted {path.name} as task {created['task_id'][:8]} on {created['queue']}.")

    views = _follow(client, tasks, args.timeout)
    failed: dict[str, str] = {}
    for task_id, path in tasks.items():
        view = views.get(task_id)
        result = (view.result if view else None) or {}
        failure = failure_of(view) if view else ("no result", f"none came within {args.timeout:.0f} s")
        print(
            f"\n===== {path.name}: {'converted' if failure is None else 'FAILED'} "
            f"({float(result.get('processing_time') or 0):.2f} s) ====="
        )
        if failure is None:
            print((result.get("content") or "").strip()[:1500])
        else:
            what, why = failure
            failed[path.name] = why
            print(sentence(f"{what}: {why}"))

    _say("Stopping the worker (it finishes, then exits).")
    code = worker.stop(timeout=60)
    _say(f"The worker {_ending(code)}.")
    sys.stdout.flush()
    print(_summary(len(tasks), failed, code), flush=True)
    return int(ExitCode.OK if not failed and code == 0 else ExitCode.TASK_FAILED)


def _summary(total: int, failed: dict[str, str], worker_code: int | None) -> str:
    """The demo's last line: "4 of 4 converted", or which samples failed and why."""
    line = f"{total - len(failed)} of {total} converted"
    if failed:
        reasons = ", ".join(f"{name} ({_short(reason)})" for name, reason in failed.items())
        line += f"; failed: {reasons}"
    if worker_code != 0:
        line += f"; the worker {_ending(worker_code)}"
    return line


def _ending(code: int | None) -> str:
    return "did not stop in time and was killed" if code is None else f"exited with status {code}"


def _short(reason: str, limit: int = 100) -> str:
    """The gist of a failure for the summary line (the details are printed above it)."""
    text = " ".join(reason.split())
    gist = text.split(" (", 1)[0] or text
    return gist if len(gist) <= limit else gist[: limit - 1] + "…"


def _follow(client: HubClient, tasks: dict[str, Path], timeout: float) -> dict[str, TaskView]:
    """Show progress until every task is done or ``timeout`` passed; the views of the done ones."""
    deadline = time.monotonic() + timeout
    views: dict[str, TaskView] = {}
    last: dict[str, str] = {}
    while len(views) < len(tasks):
        for task_id, path in tasks.items():
            if task_id in views:
                continue
            view = client.task(task_id)
            line = view.state
            if view.progress:
                pct = view.progress.get("percent")
                line = (
                    f"{view.progress.get('stage')} {pct:.0f}%"
                    if pct is not None
                    else str(view.progress.get("stage"))
                )
            if view.done:
                line = "converted" if failure_of(view) is None else "failed"
            if last.get(task_id) != line:
                _say(f"{path.name}: {line.lower()}")
                last[task_id] = line
            if view.done:
                views[task_id] = view
        if time.monotonic() > deadline:
            _say(f"Gave up after {timeout:.0f} s waiting for results.")
            break
        time.sleep(POLL_S)
    return views
