"""The hub's HTTP surface with a real Redis: uploads (multipart and raw), caps, ranges, ids."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import create_key, start_hub
from tests.processes import Proc, RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    tmp = tmp_path_factory.mktemp("small-hub")
    server = RedisServer(tmp / "redis")
    hub: Proc | None = None
    try:
        hub, url = start_hub(tmp, server.url, extra_args=("--max-upload-mb", "1"))
        yield url, create_key(server.url, "gina"), tmp / "hub"
    finally:
        if hub is not None:
            hub.stop()
        server.stop()


def test_multipart_upload_is_stored_with_its_checksum(small_hub: tuple[str, str, Path]) -> None:
    url, key, storage = small_hub
    body = b"hello from a browser form\n" * 100
    response = requests.post(
        url + "/api/v1/files",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": ("../../etc/passwd", body, "text/plain")},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    data = response.json()
    assert data["sha256"] == hashlib.sha256(body).hexdigest() and data["size"] == len(body)
    assert data["filename"] == "passwd"
    assert data["url"].endswith(f"/api/v1/files/{data['file_id']}")
    assert (storage / "gina" / data["file_id"]).read_bytes() == body
    got = requests.get(data["url"], headers={"X-API-Key": key}, timeout=10)
    assert got.content == body
    assert got.headers["x-checksum-sha256"] == data["sha256"]
    assert got.headers["etag"] == f'"{data["sha256"]}"'
    assert got.headers["accept-ranges"] == "bytes"


def test_small_files_come_whole_and_larger_ones_stream_with_the_same_headers(
    small_hub: tuple[str, str, Path],
) -> None:
    url, key, _ = small_hub
    headers = {"Authorization": f"Bearer {key}"}
    for size in (40, 64 * 1024, 64 * 1024 + 1, 300_000):  # both sides of the hub's one-read size
        body = os.urandom(size)
        data = requests.post(
            url + "/api/v1/files", params={"filename": "f.bin"}, data=body, headers=headers, timeout=10
        ).json()
        got = requests.get(data["url"], headers=headers, timeout=10)
        assert got.status_code == 200 and got.content == body, size
        assert got.headers["content-length"] == str(size)
        assert got.headers["x-checksum-sha256"] == hashlib.sha256(body).hexdigest()
        assert got.headers["accept-ranges"] == "bytes" and got.headers["cache-control"] == "no-store"


def test_range_requests(small_hub: tuple[str, str, Path]) -> None:
    url, key, _ = small_hub
    body = bytes(range(256)) * 40
    headers = {"Authorization": f"Bearer {key}"}
    data = requests.post(
        url + "/api/v1/files", params={"filename": "r.bin"}, data=body, headers=headers, timeout=10
    ).json()
    part = requests.get(data["url"], headers={**headers, "Range": "bytes=1000-"}, timeout=10)
    assert part.status_code == 206 and part.content == body[1000:]
    assert part.headers["content-range"] == f"bytes 1000-{len(body) - 1}/{len(body)}"
    stale = requests.get(
        data["url"], headers={**headers, "Range": "bytes=1000-", "If-Range": '"other"'}, timeout=10
    )
    assert stale.status_code == 200 and stale.content == body
    beyond = requests.get(data["url"], headers={**headers, "Range": f"bytes={len(body) + 5}-"}, timeout=10)
    assert beyond.status_code == 416


def test_oversized_uploads_are_refused_and_leave_nothing(small_hub: tuple[str, str, Path]) -> None:
    url, key, storage = small_hub
    headers = {"Authorization": f"Bearer {key}"}
    big = b"x" * (2 * 1024 * 1024)
    declared = requests.post(url + "/api/v1/files", data=big, headers=headers, timeout=30)
    assert declared.status_code == 413 and "larger than this hub accepts" in declared.json()["error"]

    def stream() -> Iterator[bytes]:  # no Content-Length: the cap is enforced while reading
        for _ in range(40):
            yield b"y" * 65536

    chunked = requests.post(url + "/api/v1/files", data=stream(), headers=headers, timeout=30)
    assert chunked.status_code == 413
    multipart = requests.post(
        url + "/api/v1/files", files={"file": ("big.bin", big)}, headers=headers, timeout=30
    )
    assert multipart.status_code == 413
    leftovers = [p.name for p in (storage / "gina").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_ids_are_not_paths(small_hub: tuple[str, str, Path]) -> None:
    url, key, _ = small_hub
    headers = {"Authorization": f"Bearer {key}"}
    for file_id in ("..%2F..%2Fetc%2Fpasswd", "....", "a" * 200, "%00", "gina"):
        response = requests.get(f"{url}/api/v1/files/{file_id}", headers=headers, timeout=10)
        assert response.status_code == 404, file_id
    bad_task = requests.post(
        url + "/api/v1/tasks", json={"file_id": "x", "url": "http://e/x"}, headers=headers, timeout=10
    )
    assert bad_task.status_code == 422
    no_file = requests.post(url + "/api/v1/files", files={"other": ("a", b"b")}, headers=headers, timeout=10)
    assert no_file.status_code == 400 and "no file part" in no_file.json()["error"]
