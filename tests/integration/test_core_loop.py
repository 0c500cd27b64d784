"""The core loop end to end: real redis-server (with the production ACL), hub and worker children.

A file submitted for a user is downloaded, converted and returned by that user's own worker; a bare
Celery client reaches the worker by task name; anonymous submissions still use ``celery``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from morag_worker.core.hub_client import HubClient, TaskView
from morag_worker.core.routing import submit_task_for_user
from tests.conftest import SAMPLES, Stack
from tests.processes import base_env, wait_for

pytestmark = pytest.mark.integration

USER = "alice"


@pytest.fixture(scope="module")
def alice(stack: Stack) -> str:
    key = stack.key(USER)
    stack.start_worker(USER, key)
    return key


def run_task(client: HubClient, path: Path, timeout: float = 120) -> TaskView:
    uploaded = client.upload(path)
    created = client.create_task(file_id=uploaded["file_id"])
    assert created["queue"] == f"gpu-tasks-{USER}"
    return wait_for(
        lambda: (v := client.task(created["task_id"])).done and v, timeout, f"task for {path.name} to finish"
    )


@pytest.mark.parametrize(
    ("sample", "expect"),
    [("sample.html", "#"), ("sample.docx", "MoRAG"), ("sample.pdf", "MoRAG"), ("sample.txt", "MoRAG")],
)
def test_sample_comes_back_as_markdown(stack: Stack, alice: str, sample: str, expect: str) -> None:
    client = stack.client(alice)
    view = run_task(client, SAMPLES / sample)
    assert view.state == "SUCCESS", view.error
    result = view.result
    assert result is not None and result["success"] is True, result
    assert expect in result["content"]
    assert result["user_id"] == USER
    assert result["metadata"]["source_sha256"]
    assert result["processing_time"] > 0


def test_corrupt_pdf_is_a_clear_failure_and_the_worker_keeps_serving(
    stack: Stack, alice: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage" + bytes(range(256)) * 20)
    client = stack.client(alice)
    view = run_task(client, broken)
    assert view.state == "SUCCESS" and view.result is not None
    assert view.result["success"] is False
    assert "pdf" in view.result["error_message"].lower()
    assert view.result["content"] is None
    good = tmp_path / "after.txt"
    good.write_text("still serving after a broken PDF\n")
    after = run_task(client, good)
    assert after.result is not None and after.result["success"] is True
    assert "still serving" in after.result["content"]


def test_bare_celery_client_reaches_the_worker_by_name(stack: Stack, alice: str, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("sent by a bare Celery client\n")
    uploaded = stack.client(alice).upload(note)
    script = textwrap.dedent(f"""
        import json, sys
        from celery import Celery
        prefix = {{"global_keyprefix": "morag:ns:{USER}:"}}
        app = Celery(broker={stack.redis.url!r}, backend={stack.redis.url!r})
        app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                        broker_transport_options=prefix, result_backend_transport_options=prefix)
        res = app.send_task("morag.worker.process_file_task_remote",
                            args=[{uploaded["url"]!r}, "{USER}", None, {{"sha256": {uploaded["sha256"]!r}}}],
                            queue="gpu-tasks-{USER}")
        out = res.get(timeout=120)
        assert "morag_worker" not in sys.modules
        print(json.dumps(out))
    """)
    env = base_env()
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) == {"success", "content", "metadata", "processing_time", "error_message", "user_id"}
    assert result["success"] is True and "bare Celery client" in result["content"]
    assert result["user_id"] == USER


def test_anonymous_and_local_submissions_use_the_plain_celery_queue(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from morag_worker.core.worker import celery_app

    monkeypatch.setitem(celery_app.conf, "broker_url", stack.redis.url)
    monkeypatch.setitem(celery_app.conf, "result_backend", stack.redis.url)
    admin = stack.redis.client()
    before = admin.llen("celery")
    anonymous = submit_task_for_user("morag.worker.process_file_task", ["/nonexistent"], {})
    local = submit_task_for_user(
        "morag.worker.process_file_task", ["/nonexistent"], {}, user_id=USER, use_remote=False
    )
    assert admin.llen("celery") == before + 2
    bodies = [json.loads(m)["headers"] for m in admin.lrange("celery", 0, -1)]
    ids = {h["id"] for h in bodies}
    assert {anonymous.id, local.id} <= ids
    assert all(h["task"] == "morag.worker.process_file_task" for h in bodies)
    assert not admin.exists(f"morag:ns:{USER}:celery")
    admin.delete("celery")


def test_remote_submission_lands_in_the_users_namespace(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", stack.redis.url)
    admin = stack.redis.client()
    result = submit_task_for_user(
        "morag.worker.process_file_task",
        ["http://hub/f", None, {}],
        {},
        user_id="nobody-has-a-worker",
        use_remote=True,
    )
    raw = admin.lrange("morag:ns:nobody-has-a-worker:gpu-tasks-nobody-has-a-worker", 0, -1)
    assert len(raw) == 1
    message = json.loads(raw[0])
    assert message["headers"]["task"] == "morag.worker.process_file_task_remote"
    assert message["headers"]["id"] == result.id
    assert json.loads(__import__("base64").b64decode(message["body"]))[0] == [
        "http://hub/f",
        "nobody-has-a-worker",
        None,
        {},
    ]
    assert admin.llen("gpu-tasks-nobody-has-a-worker") == 0


def test_invalid_key_gets_401_everywhere(stack: Stack, alice: str) -> None:
    routes = [
        ("GET", "/api/v1/auth/queue-info"),
        ("POST", "/api/v1/files"),
        ("GET", "/api/v1/files/abcdefghijklmnopqrstuvwxyz"),
        ("POST", "/api/v1/tasks"),
        ("GET", "/api/v1/tasks/some-task"),
        ("GET", "/api/v1/workers"),
    ]
    for headers in (
        {},
        {"Authorization": "Bearer not-a-key"},
        {"X-API-Key": "not-a-key"},
        {"Authorization": "Basic abc"},
    ):
        for method, path in routes:
            response = requests.request(method, stack.hub_url + path, headers=headers, timeout=10)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert "error" in response.json()
    assert requests.get(stack.hub_url + "/healthz", timeout=10).ok
    ok = requests.get(stack.hub_url + "/api/v1/auth/queue-info", headers={"X-API-Key": alice}, timeout=10)
    assert ok.status_code == 200 and ok.json()["user_id"] == USER


def test_queue_info_and_presence(stack: Stack, alice: str) -> None:
    client = stack.client(alice)
    info = client.queue_info()
    assert info.gpu_queue == f"gpu-tasks-{USER}" and info.cpu_queue == f"cpu-tasks-{USER}"
    assert info.broker_username == f"worker-{USER}" and info.key_prefix == f"morag:ns:{USER}:"
    assert "@" not in info.broker_url
    workers = wait_for(client.workers, what="the worker to show up in /api/v1/workers")
    assert workers[0]["user_id"] == USER and workers[0]["queue"] == f"gpu-tasks-{USER}"
    assert workers[0]["queues"] == [f"gpu-tasks-{USER}", f"cpu-tasks-{USER}"]


def test_a_user_never_sees_another_users_files_or_tasks(stack: Stack, alice: str, tmp_path: Path) -> None:
    bob = stack.client(stack.key("bob"))
    note = tmp_path / "private.txt"
    note.write_text("alice's secret notes\n")
    client = stack.client(alice)
    uploaded = client.upload(note)
    created = client.create_task(file_id=uploaded["file_id"])
    headers = {"Authorization": f"Bearer {bob._key}"}
    for path in (f"/api/v1/files/{uploaded['file_id']}", f"/api/v1/tasks/{created['task_id']}"):
        assert requests.get(stack.hub_url + path, headers=headers, timeout=10).status_code == 404
    response = requests.post(
        stack.hub_url + "/api/v1/tasks", json={"file_id": uploaded["file_id"]}, headers=headers, timeout=10
    )
    assert response.status_code == 404
    assert bob.workers() == []


@pytest.fixture(autouse=True)
def acl_log_stays_empty(stack: Stack) -> Iterator[None]:
    """After each test, in any order: Redis refused nothing to anyone under the production ACL."""
    yield
    with stack.redis.client() as admin:
        log = admin.execute_command("ACL", "LOG")
    assert log == [], log


def test_the_worker_runs_as_its_users_acl_user_with_an_empty_acl_log(stack: Stack, alice: str) -> None:
    """Alice's worker is logged in as worker-alice; every test here ends with an empty ACL LOG."""
    admin = stack.redis.client()
    users = {u.decode() for u in admin.execute_command("ACL", "USERS")}
    assert "worker-alice" in users
    clients = admin.execute_command("CLIENT", "LIST")
    clients = clients.decode() if isinstance(clients, bytes) else clients
    assert "user=worker-alice" in clients
    log = admin.execute_command("ACL", "LOG")
    assert log == [], log


def test_the_workers_log_never_holds_the_converted_text(stack: Stack, alice: str, tmp_path: Path) -> None:
    secret_text = "confidential minutes of the board meeting"
    note = tmp_path / "minutes.txt"
    note.write_text(secret_text + "\n")
    view = run_task(stack.client(alice), note)
    assert view.result is not None and secret_text in view.result["content"]
    worker = stack.workers[0]
    # Its one line for the task at INFO is task.done (Celery's received/succeeded lines are off).
    wait_for(lambda: worker.saw(view.task_id) and worker.saw("task.done"), what="the success log line")
    assert secret_text not in worker.output()
    lines = [line for line in worker.output().splitlines() if view.task_id in line]
    assert len(lines) == 1 and "task.done" in lines[0], lines
