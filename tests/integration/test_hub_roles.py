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
from datetime import UTC, datetime

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
