"""What a key may ask of the hub beyond its own user's work, and the hub's edges (issue 10).

- ``remote: false`` (a local task, run by the server's own workers on the plain ``celery`` queue) is
  refused with 403 unless the key was created with the server role (D4).
- User ids made only of dots never get a storage folder (D8).
- A multipart upload that ends before its closing boundary is refused and leaves nothing (D9).
- Sidecars are private; the API docs are not served (D10).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
import redis
import requests

from morag_worker.core.hub_client import HubForbidden
from morag_worker.core.server.acl import create_provisioned_key
from tests.conftest import SAMPLES, Stack
from tests.processes import base_env

pytestmark = pytest.mark.integration


def _admin(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis.url)


def _celery_queue_length(stack: Stack) -> int:
    with _admin(stack) as client:
        return int(client.llen("celery"))


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "morag_worker", *args], capture_output=True, text=True, env=env, timeout=120
    )


def _upload(stack: Stack, key: str, body: bytes = b"hello\n") -> dict[str, object]:
    response = requests.post(
        stack.hub_url + "/api/v1/files",
        params={"filename": "a.txt"},
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "text/plain"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    data: dict[str, object] = response.json()
    return data


def test_a_user_key_cannot_reach_the_servers_own_workers(stack: Stack) -> None:
    key = stack.key("ruth")
    headers = {"Authorization": f"Bearer {key}"}
    file_id = _upload(stack, key)["file_id"]
    before = _celery_queue_length(stack)
    for body in ({"file_id": file_id, "remote": False}, {"url": "https://example.org/x", "remote": False}):
        refused = requests.post(stack.hub_url + "/api/v1/tasks", json=body, headers=headers, timeout=10)
        assert refused.status_code == 403, refused.text
        assert "--role server" in refused.json()["error"]
    assert _celery_queue_length(stack) == before
    with pytest.raises(HubForbidden, match="local tasks"):
        stack.client(key).create_task(url="https://example.org/x", remote=False)
    assert stack.client(key).queue_info().role == "user"
    # Its own workers' queue is still open to it.
    own = requests.post(
        stack.hub_url + "/api/v1/tasks", json={"file_id": file_id}, headers=headers, timeout=10
    )
    assert own.status_code == 201 and own.json()["queue"] == "gpu-tasks-ruth"
    assert _celery_queue_length(stack) == before


def test_a_server_key_may_submit_local_tasks_and_has_only_its_users_broker_access(stack: Stack) -> None:
    key = create_provisioned_key(stack.redis.url, "sam", "the MoRAG server", role="server")
    user_key = stack.key("sam")
    assert stack.client(key).queue_info().role == "server"
    file_id = _upload(stack, key)["file_id"]
    before = _celery_queue_length(stack)
    created = stack.client(key).create_task(file_id=str(file_id), remote=False)
    assert created["queue"] == "celery"
    assert _celery_queue_length(stack) == before + 1
    with _admin(stack) as client:
        client.delete("celery")  # nothing consumes it here
        rules = client.acl_getuser("worker-sam")
    # The same per-user ACL as a user key: the server's own workers use the admin connection.
    assert sorted(rules["passwords"]) == sorted(
        hashlib.sha256(k.encode()).hexdigest() for k in (key, user_key)
    )
    assert rules["keys"] == ["~morag:ns:sam:*"]


def test_submit_local_with_a_user_key_says_why_before_uploading(stack: Stack) -> None:
    key = stack.key("tess")
    env = base_env(MORAG_API_KEY=key, MAIN_SERVER_URL=stack.hub_url)
    refused = _cli("submit", str(SAMPLES / "sample.html"), "--local", env=env)
    assert refused.returncode == 4, refused.stderr
    assert "only a server key may use" in refused.stderr and "--role server" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (stack.tmp / "hub" / "tess").exists()  # refused before the upload

    server_key = create_provisioned_key(stack.redis.url, "tess", "server", role="server")
    accepted = _cli(
        "submit", str(SAMPLES / "sample.html"), "--local", env={**env, "MORAG_API_KEY": server_key}
    )
    assert accepted.returncode == 0, accepted.stderr
    assert "queued on celery" in accepted.stderr
    with _admin(stack) as client:
        client.delete("celery")


def test_a_stored_record_for_a_dot_user_is_no_key_and_writes_nothing(stack: Stack) -> None:
    tree_before = sorted(str(p) for p in stack.tmp.rglob("*") if "redis" not in p.parts)
    for dots in (".", ".."):
        key = f"planted-key-for-{dots}"
        record = {
            "user_id": dots,
            "description": "planted",
            "created_at": datetime.now(UTC).isoformat(),
            "expires_at": None,
            "active": True,
        }
        with _admin(stack) as client:
            client.set(f"morag:api_keys:{hashlib.sha256(key.encode()).hexdigest()}", json.dumps(record))
        response = requests.post(
            stack.hub_url + "/api/v1/files",
            params={"filename": "x.txt"},
            data=b"escape",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert response.status_code == 401, response.text
    tree_after = sorted(str(p) for p in stack.tmp.rglob("*") if "redis" not in p.parts)
    assert tree_after == tree_before


def _raw_post(stack: Stack, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request written by hand on a loopback socket; the status and the body."""
    parts = urlsplit(stack.hub_url)
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


def test_a_multipart_upload_without_its_closing_boundary_is_refused_and_removed(stack: Stack) -> None:
    key = stack.key("uma")
    boundary = "----morag-test-boundary"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={boundary}"}
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="t.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    payload = b"the first half of a longer file\n" * 4000
    user_dir = stack.tmp / "hub" / "uma"
    for cut in (b"", b"\r\n", b"\r\n--" + boundary.encode(), b"\r\n--" + boundary[:8].encode()):
        status, answer = _raw_post(stack, "/api/v1/files", headers, head + payload + cut)
        assert status == 400, answer
        assert "closing boundary" in json.loads(answer)["error"]
        assert not user_dir.exists() or list(user_dir.iterdir()) == []
    # The same request with its closing boundary is stored: the cut alone made the difference.
    status, answer = _raw_post(
        stack, "/api/v1/files", headers, head + payload + f"\r\n--{boundary}--\r\n".encode()
    )
    assert status == 201, answer
    stored = json.loads(answer)
    assert stored["size"] == len(payload) and stored["sha256"] == hashlib.sha256(payload).hexdigest()
    assert sorted(p.name for p in user_dir.iterdir()) == sorted(
        [stored["file_id"], stored["file_id"] + ".json"]
    )
    if os.name == "posix":
        for path in user_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_the_api_docs_and_schema_are_not_served(stack: Stack) -> None:
    key = stack.key("vera")
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        for headers in ({}, {"Authorization": f"Bearer {key}"}):
            response = requests.get(stack.hub_url + path, headers=headers, timeout=10)
            assert response.status_code in (401, 404), (path, response.status_code)
            assert "swagger" not in response.text.lower() and "openapi" not in response.text.lower()
    assert requests.get(stack.hub_url + "/healthz", timeout=10).ok
