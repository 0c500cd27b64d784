"""``morag-worker --no-gui`` as a user runs it: starts, shows up in the hub, stops cleanly on signals,
and ends with one clear line and its exit code when it cannot start."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from morag_worker.core.cli.errors import ExitCode
from morag_worker.core.hub_client import HubClient
from tests.conftest import Stack
from tests.processes import Proc, base_env, free_port, python_argv, wait_for
from tests.proxy import CuttingProxy, ProxyRules
from tests.supervised import big_text_file, queue_length

pytestmark = pytest.mark.smoke

USER = "hugo"


def headless(tmp: Path, hub_url: str, api_key: str, *extra: str) -> Proc:
    env = base_env(
        MORAG_API_KEY=api_key, MAIN_SERVER_URL=hub_url, WORKER_TYPE="cpu", TEMP_DIR=str(tmp / "tasks")
    )
    argv = python_argv("-m", "morag_worker", "--no-gui", "--config-dir", str(tmp / "config"), *extra)
    return Proc(argv, env=env, name="morag-worker --no-gui")


def events(proc: Proc) -> list[dict[str, object]]:
    found = []
    for line in proc.output().splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            found.append(data)
    return found


def statuses(proc: Proc) -> list[dict[str, object]]:
    return [e for e in events(proc) if e.get("event") == "worker.status"]


def test_headless_worker_shows_up_in_the_hub_and_exits_0_on_sigterm(stack: Stack, tmp_path: Path) -> None:
    key = stack.key(USER)
    proc = headless(tmp_path, stack.hub_url, key)
    try:
        client = HubClient(stack.hub_url, key)
        workers = wait_for(lambda: client.workers(), timeout=120, what="the worker in /api/v1/workers")
        assert workers[0]["queue"] == f"cpu-tasks-{USER}"
        wait_for(lambda: any(s.get("state") == "running" for s in statuses(proc)), what="running")
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill_group()
    output = proc.output()
    assert key not in output
    states = [s["state"] for s in statuses(proc)]
    assert states[:2] == ["starting", "starting"] and states[-2:] == ["finishing", "stopped"]
    assert wait_for(lambda: client.workers() == [], what="the presence record to go")  # removed on stop


def test_second_sigint_stops_now_and_requeues_the_task(stack: Stack, tmp_path: Path) -> None:
    key = stack.key(USER)
    port = int(stack.hub_url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, ProxyRules(rate_bps=256 * 1024))
    proc = headless(tmp_path, proxy.url, key)
    try:
        wait_for(
            lambda: any(s.get("state") == "running" for s in statuses(proc)), timeout=120, what="running"
        )
        client = HubClient(proxy.url, key)
        uploaded = client.upload(big_text_file(tmp_path / "big.txt", 1.0))
        response = requests.post(
            proxy.url + "/api/v1/tasks",
            json={"file_id": uploaded["file_id"], "worker_type": "cpu"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        response.raise_for_status()

        def downloading() -> bool:
            return any(
                e.get("event") == "task.progress" and e.get("stage") == "DOWNLOADING" for e in events(proc)
            )

        wait_for(downloading, what="the download to start")
        proc.signal(signal.SIGINT)
        wait_for(lambda: any(s.get("state") == "finishing" for s in statuses(proc)), what="finishing")
        proc.signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert queue_length(stack.redis.client(), USER, "cpu") == 1
        finished = [e for e in events(proc) if e.get("event") == "task.finished"]
        assert finished and finished[-1]["outcome"] == "requeued"
    finally:
        proc.kill_group()
        proxy.close()
        stack.redis.client().delete(f"morag:ns:{USER}:cpu-tasks-{USER}")


def test_key_rejected_is_one_clear_line_and_exit_4(stack: Stack, tmp_path: Path) -> None:
    proc = headless(tmp_path, stack.hub_url, "Zz9" + "q" * 40)
    try:
        assert proc.wait(timeout=60) == ExitCode.KEY_REJECTED
    finally:
        proc.kill_group()
    lines = [line for line in proc.output().splitlines() if line.startswith("morag-worker:")]
    assert len(lines) == 1 and "rejected the API key" in lines[0], proc.output()[-2000:]


def test_a_key_revoked_while_running_ends_headless_with_one_clear_line_and_exit_4(
    stack: Stack, tmp_path: Path
) -> None:
    """Revocation reaches a running ``--no-gui`` worker: it stops within 30 s and says why."""
    key = stack.key("hugo-revoked")
    proc = headless(tmp_path, stack.hub_url, key)
    try:
        wait_for(
            lambda: any(s.get("state") == "running" for s in statuses(proc)), timeout=120, what="running"
        )
        revoked = subprocess.run(
            python_argv("-m", "morag_worker", "keys", "revoke", "-"),
            input=key + "\n",
            env=base_env(REDIS_URL=stack.redis.url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert revoked.returncode == 0, revoked.stderr
        started = time.monotonic()
        assert proc.wait(timeout=120) == ExitCode.KEY_REJECTED
        assert time.monotonic() - started <= 30
    finally:
        proc.kill_group()
    lines = [line for line in proc.output().splitlines() if line.startswith("morag-worker:")]
    assert len(lines) == 1 and "rejected the API key" in lines[0], proc.output()[-2000:]
    assert key not in proc.output()


def test_hub_unreachable_shows_the_retries_then_exits_5(tmp_path: Path) -> None:
    hub = f"http://127.0.0.1:{free_port()}"
    proc = headless(tmp_path, hub, "Zz9" + "q" * 40, "--retries", "3")
    try:
        assert proc.wait(timeout=120) == ExitCode.HUB_UNREACHABLE
    finally:
        proc.kill_group()
    backoffs = [s for s in statuses(proc) if s.get("state") == "backoff"]
    assert [s["attempt"] for s in backoffs] == [1, 2]
    lines = [line for line in proc.output().splitlines() if line.startswith("morag-worker:")]
    assert len(lines) == 1 and "cannot reach the hub" in lines[0].lower() and "gave up after 3" in lines[0]
