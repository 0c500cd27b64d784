"""The hub's small-file middleware: which requests it answers itself, and what it answers."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from morag_worker.core.server.hub.small_files import SMALL_FILE_BYTES, SmallFiles
from morag_worker.core.server.hub.storage import FileStore

pytestmark = pytest.mark.unit


def _stored(store: FileStore, user: str, body: bytes) -> str:
    writer = store.new_writer(user)
    writer.write(body)
    return writer.commit("f.bin", None).file_id


def _call(
    app: SmallFiles, path: str, *, user: str | None = "gina", method: str = "GET", **headers: str
) -> Any:
    sent: list[dict[str, Any]] = []
    state = {"api_key_record": SimpleNamespace(user_id=user)} if user else {}
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "state": state,
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def _routed(scope: Any, receive: Any, send: Any) -> Any:
    async def app() -> None:
        await send({"type": "routed"})

    return app()


def test_a_small_file_is_answered_whole_without_the_app(tmp_path: Path) -> None:
    store = FileStore(tmp_path, 1 << 20)
    body = b"a tiny input\n"
    file_id = _stored(store, "gina", body)
    start, content = _call(SmallFiles(_routed, store), f"/api/v1/files/{file_id}")
    assert start["status"] == 200 and content["body"] == body
    sha = hashlib.sha256(body).hexdigest()
    assert dict(start["headers"]) == {
        b"etag": f'"{sha}"'.encode(),
        b"x-checksum-sha256": sha.encode(),
        b"cache-control": b"no-store",
        b"accept-ranges": b"bytes",
        b"content-type": b"application/octet-stream",
        b"content-length": str(len(body)).encode(),
    }


def test_everything_else_goes_on_to_the_app(tmp_path: Path) -> None:
    store = FileStore(tmp_path, 1 << 20)
    small = _stored(store, "gina", b"x" * 10)
    large = _stored(store, "gina", b"y" * (SMALL_FILE_BYTES + 1))
    app = SmallFiles(_routed, store)
    routed = [{"type": "routed"}]
    assert _call(app, f"/api/v1/files/{small}", Range="bytes=2-") == routed  # a resumed download
    assert _call(app, f"/api/v1/files/{small}", method="HEAD") == routed
    assert _call(app, f"/api/v1/files/{small}", user="mallory") == routed  # not theirs: the route's 404
    assert _call(app, f"/api/v1/files/{small}", user=None) == routed  # no checked key
    assert _call(app, f"/api/v1/files/{large}") == routed  # streamed by the route
    assert _call(app, "/api/v1/files/no-such-file-id-at-all") == routed
    assert _call(app, f"/api/v1/files/{small}/more") == routed
