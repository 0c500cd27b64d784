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
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
import redis
import requests

from tests.conftest import Stack

pytestmark = pytest.mark.integration


def _admin(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis.url)


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
