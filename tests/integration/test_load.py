"""Load: two users, two workers each, MORAG_LOAD_TASKS (default 1000) small tasks per user.

Tasks are submitted the way a MoRAG server does (``routing.submit_task_for_user``) with file URLs
the hub serves: a few tiny text files per user, uploaded once and reused. Every task must come back
to its own submitter, run by one of that user's own workers, and nothing may be left in any queue
or unacked set; ``ACL LOG`` stays empty throughout.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest
from celery.result import AsyncResult, ResultSet

from morag_worker.core.hub_client import HubClient
from morag_worker.core.routing import app_for_user, submit_task_for_user
from tests.conftest import Stack
from tests.processes import wait_for

pytestmark = pytest.mark.integration

TASKS_PER_USER = int(os.environ.get("MORAG_LOAD_TASKS", "1000"))
USERS = ("load-a", "load-b")
WORKERS_PER_USER = 2
FILES_PER_USER = 4


def upload_inputs(client: HubClient, user: str, tmp_path: Path) -> list[dict[str, object]]:
    uploaded = []
    for n in range(FILES_PER_USER):
        path = tmp_path / f"{user}-{n}.txt"
        path.write_text(f"input {n} of {user}: a few words to convert\n")
        uploaded.append(client.upload(path))
    return uploaded


def test_two_users_two_workers_each_many_small_tasks(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", stack.redis.url)
    admin = stack.redis.client()
    admin.execute_command("ACL", "LOG", "RESET")
    hostnames: dict[str, set[str]] = {}
    inputs: dict[str, list[dict[str, object]]] = {}
    for user in USERS:
        key = stack.key(user)
        hostnames[user] = {f"w{n}@{user}" for n in range(WORKERS_PER_USER)}
        for name in sorted(hostnames[user]):
            stack.start_worker(user, key, name=name)
        inputs[user] = upload_inputs(stack.client(key), user, tmp_path)

    started = time.monotonic()
    submitted: dict[str, list[AsyncResult]] = {user: [] for user in USERS}
    for n in range(TASKS_PER_USER):
        for user in USERS:
            item = inputs[user][n % FILES_PER_USER]
            options = {"sha256": item["sha256"], "size": item["size"]}
            submitted[user].append(
                submit_task_for_user(
                    "morag.worker.process_file_task", [item["url"], "text/plain", options], None, user, True
                )
            )
    submit_s = time.monotonic() - started

    results: dict[str, list[dict[str, object]]] = {}
    for user in USERS:
        batch = ResultSet(submitted[user], app=app_for_user(user))
        results[user] = batch.join_native(timeout=600, propagate=True, interval=0.2)
    elapsed = time.monotonic() - started
    total = TASKS_PER_USER * len(USERS)
    print(
        f"\nload: {total} tasks, {len(USERS)} users x {WORKERS_PER_USER} workers: submitted in "
        f"{submit_s:.1f} s, all done in {elapsed:.1f} s ({total / elapsed:.1f} tasks/s)"
    )

    for user in USERS:
        assert len(results[user]) == TASKS_PER_USER
        ran_on = Counter()
        for result in results[user]:
            assert result["success"] is True, result
            assert result["user_id"] == user
            assert "a few words" in str(result["content"]) and user in str(result["content"])
            ran_on[result["metadata"]["worker_hostname"]] += 1
        assert set(ran_on) <= hostnames[user], ran_on  # never the other user's workers
        ns = f"morag:ns:{user}:"
        wait_for(lambda ns=ns: admin.hlen(ns + "unacked") == 0, what=f"{user}'s last acks")
        assert admin.llen(f"{ns}gpu-tasks-{user}") == 0
        assert admin.zcard(ns + "unacked_index") == 0
    assert admin.execute_command("ACL", "LOG") == []
