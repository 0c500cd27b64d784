"""``morag-worker demo``: the whole loop on one machine, with nothing configured.

Starts a private redis-server on a free port in a temporary folder, the hub, a demo user with a
fresh key (and its Redis ACL user), and a headless worker (``morag-worker --no-gui``, the same
program a contributor runs); then submits the bundled samples, shows their progress, prints the
markdown, and shuts everything down. Exit status 0 when every sample came back converted.
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

import requests

from morag_worker.core.acl import create_provisioned_key
from morag_worker.core.hub_client import HubClient, TaskView
from morag_worker.core.local_stack import (
    Proc,
    RedisServer,
    RedisServerMissing,
    free_port,
    python_argv,
    wait_for,
)

from .errors import CliError, ExitCode

__all__ = ["run"]

DEMO_USER = "demo"
SAMPLE_NAMES = ("sample.txt", "sample.html", "sample.docx", "sample.pdf")
POLL_S = 0.25


def _say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def _child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MORAG_", "MAIN_SERVER_URL", "REDIS_URL", "CELERY_"))
    }
    env.update(extra)
    return env


def _samples(folder: Path) -> list[Path]:
    source = importlib.resources.files("morag_worker.resources") / "samples"
    paths = []
    for name in SAMPLE_NAMES:
        target = folder / name
        target.write_bytes(source.joinpath(name).read_bytes())
        paths.append(target)
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
            _say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, tmp: Path, stack: ExitStack) -> int:
    _say("starting a private redis-server")
    server = RedisServer(tmp / "redis")
    stack.callback(server.stop)

    port = free_port()
    hub_url = f"http://127.0.0.1:{port}"
    _say(f"starting the hub on {hub_url}")
    hub = Proc(
        python_argv("-m", "morag_worker", "hub", "--port", str(port), "--storage", str(tmp / "hub")),
        env=_child_env(REDIS_URL=server.url),
        name="hub",
    )
    stack.callback(hub.stop)
    wait_for(lambda: requests.get(hub_url + "/healthz", timeout=2).ok, 60, "the hub to start")

    api_key = create_provisioned_key(server.url, DEMO_USER, "morag-worker demo")
    _say(f"created user {DEMO_USER!r} with a fresh API key (and its Redis ACL user)")

    _say("starting a headless worker (morag-worker --no-gui)")
    worker = Proc(
        python_argv("-m", "morag_worker", "--no-gui", "--config-dir", str(tmp / "config")),
        env=_child_env(
            MORAG_API_KEY=api_key, MAIN_SERVER_URL=hub_url, TEMP_DIR=str(tmp / "work"), WORKER_TYPE="cpu"
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
    _say("worker is ready and waiting for work")

    tasks: dict[str, Path] = {}
    for path in _samples(tmp):
        uploaded = client.upload(path)
        created = client.create_task(file_id=uploaded["file_id"], worker_type="cpu")
        tasks[created["task_id"]] = path
        _say(f"submitted {path.name} → task {created['task_id'][:8]} on {created['queue']}")

    views = _follow(client, tasks, args.timeout)
    failures = 0
    for task_id, path in tasks.items():
        view = views[task_id]
        result = view.result or {}
        ok = view.state == "SUCCESS" and result.get("success")
        print(
            f"\n===== {path.name}: {'converted' if ok else 'FAILED'} "
            f"({result.get('processing_time', 0):.2f} s) ====="
        )
        if ok:
            print((result.get("content") or "").strip()[:1500])
        else:
            failures += 1
            print(view.error or result.get("error_message") or view.state)

    _say("stopping the worker (finish, then exit)")
    code = worker.stop(timeout=60)
    _say(f"worker exited with status {code}")
    return int(ExitCode.OK if failures == 0 and code == 0 else ExitCode.TASK_FAILED)


def _follow(client: HubClient, tasks: dict[str, Path], timeout: float) -> dict[str, TaskView]:
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
            if last.get(task_id) != line:
                _say(f"{path.name}: {line.lower()}")
                last[task_id] = line
            if view.done:
                views[task_id] = view
        if time.monotonic() > deadline:
            raise CliError(f"gave up after {timeout:.0f} s waiting for results", ExitCode.TASK_FAILED)
        time.sleep(POLL_S)
    return views
