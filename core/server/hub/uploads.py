"""Streaming an upload straight into the file store, never holding it in memory.

Accepts ``multipart/form-data`` with one file part named ``file`` (what browsers and
``requests`` send), or a raw body with ``?filename=`` and the body's Content-Type.
The size cap is enforced while the bytes arrive. A multipart body that ends before its closing
boundary is refused and its partial file removed: it may be any prefix of the file.
"""

from __future__ import annotations

from typing import Any

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from morag_worker.core.server.hub.storage import FileStore, FileWriter, StoredFile

__all__ = ["receive_upload"]


async def receive_upload(request: Request, store: FileStore, user_id: str) -> StoredFile:
    """Store the request's file for ``user_id``; raise ValueError for a malformed upload."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    writer = store.new_writer(user_id)
    try:
        if content_type == b"multipart/form-data":
            boundary = params.get(b"boundary")
            if not boundary:
                raise ValueError("multipart upload without a boundary")
            filename, part_type = await _receive_multipart(request, writer, boundary)
        else:
            filename = request.query_params.get("filename")
            part_type = content_type.decode("latin-1") or None
            async for chunk in request.stream():
                writer.write(chunk)
        if part_type in ("application/octet-stream", ""):
            part_type = None
        return writer.commit(filename, part_type)
    except BaseException:
        writer.abort()
        raise


async def _receive_multipart(
    request: Request, writer: FileWriter, boundary: bytes
) -> tuple[str | None, str | None]:
    state: dict[str, Any] = {
        "in_file": False,
        "files": 0,
        "name": None,
        "type": None,
        "header": b"",
        "value": b"",
        "headers": {},
        "ended": False,
    }
    errors: list[BaseException] = []

    def on_part_begin() -> None:
        state["headers"] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["header"].lower()] = state["value"]
        state["header"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        is_file = disp.get(b"name") == b"file" and b"filename" in disp
        state["in_file"] = is_file and state["files"] == 0
        if state["in_file"]:
            state["files"] += 1
            state["name"] = disp[b"filename"].decode("utf-8", "replace")
            ctype = state["headers"].get(b"content-type")
            state["type"] = ctype.decode("latin-1") if ctype else None

    def on_end() -> None:
        state["ended"] = True

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["in_file"] and not errors:
            try:
                writer.write(data[start:end])
            except BaseException as exc:  # noqa: BLE001 - re-raised outside the parser
                errors.append(exc)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_end": on_end,
        },
    )
    async for chunk in request.stream():
        parser.write(chunk)
        if errors:
            raise errors[0]
    parser.finalize()  # checks nothing (python-multipart 0.0.x): the closing boundary is ours to see
    if not state["ended"]:
        # The body stopped before `--boundary--`: whatever arrived may be any prefix of the file.
        raise ValueError("the upload is incomplete: the multipart body ended before its closing boundary")
    if state["files"] == 0:
        raise ValueError("the upload has no file part named 'file'")
    return state["name"], state["type"]
