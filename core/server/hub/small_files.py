"""Small whole files served straight from the store, before FastAPI routes the request.

A worker's download of its input is most of the hub's work for a small task. Through FastAPI's
router, dependency solving and exception middleware, a 40-byte file cost the hub 0.9 ms of CPU
against 0.3 ms for ``/healthz`` (issue 14). This middleware sits inside ``HubGuard``, so the key
is already checked and its record is in the scope's state; it answers a plain ``GET`` of a file
that the key's user owns and that is at most ``SMALL_FILE_BYTES`` long, from one read. Anything
else (a range, a larger file, an unknown id, ``HEAD``) goes on to the app's route, which streams
it or answers 404 as before.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from morag_worker.core.server.hub.storage import FileStore, StoredFile

__all__ = ["FILES_PATH", "SMALL_FILE_BYTES", "SmallFiles", "file_headers"]

FILES_PATH = "/api/v1/files/"
SMALL_FILE_BYTES = 64 * 1024  # served from one read, not streamed
_FILE_PATH = re.compile(re.escape(FILES_PATH) + r"([^/]+)")


def file_headers(stored: StoredFile) -> dict[str, str]:
    """The headers of every answer with a stored file's bytes, whole or a range of them."""
    return {
        "etag": f'"{stored.sha256}"',
        "x-checksum-sha256": stored.sha256,
        "cache-control": "no-store",
    }


class SmallFiles:
    """ASGI middleware: a small stored file's ``GET`` answered without the app (see above)."""

    def __init__(self, app: ASGIApp, store: FileStore, max_bytes: int = SMALL_FILE_BYTES) -> None:
        self.app = app
        self.store = store
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self._small_file(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        content, headers = body
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _small_file(self, scope: Scope) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        match = _FILE_PATH.fullmatch(scope["path"])
        record: Any = scope.get("state", {}).get("api_key_record")
        if match is None or record is None or any(name == b"range" for name, _ in scope["headers"]):
            return None
        found = self.store.get(record.user_id, match.group(1))
        if found is None or found[0].size > self.max_bytes:
            return None
        stored, path = found
        try:
            content = path.read_bytes()
        except OSError:
            return None  # removed meanwhile: the route answers 404
        if len(content) != stored.size:
            return None
        headers = {
            **file_headers(stored),
            # Ranges are served (by the route's FileResponse), so say so as it does.
            "accept-ranges": "bytes",
            "content-type": "application/octet-stream",
            "content-length": str(len(content)),
        }
        return content, [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
