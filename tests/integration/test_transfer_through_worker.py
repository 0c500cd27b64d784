"""Downloads as the worker meets them: a hub behind a proxy that cuts or slows the connection.

The worker's MAIN_SERVER_URL is the proxy, so the proxy is the hub's origin (the only one that gets
the key); every request it relays is recorded, which shows the Range request that resumed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from morag_worker.core.hub_client import HubClient, TaskView
from morag_worker.resources.samples.make_samples import multi_page_pdf
from tests.conftest import Stack
from tests.processes import wait_for
from tests.proxy import CuttingProxy

pytestmark = pytest.mark.integration

USER = "carol"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def proxied(stack: Stack) -> Iterator[tuple[CuttingProxy, HubClient]]:
    key = stack.key(USER)
    hub_port = int(stack.hub_url.rsplit(":", 1)[1])
    proxy = CuttingProxy(hub_port)
    original = stack.hub_url
    stack.hub_url = proxy.url  # the worker and the clients reach the hub through the proxy
    try:
        stack.start_worker(USER, key)
    finally:
        stack.hub_url = original
    client = HubClient(proxy.url, key)
    yield proxy, client
    client.close()
    proxy.close()


def finish(client: HubClient, task_id: str, timeout: float = 180) -> TaskView:
    return wait_for(lambda: (v := client.task(task_id)).done and v, timeout, "the task to finish")


def test_a_cut_download_resumes_with_range_and_is_verified(
    proxied: tuple[CuttingProxy, HubClient], tmp_path: Path
) -> None:
    proxy, client = proxied
    data = ("resumable line of text\n" * 200_000).encode()  # ~4.4 MiB
    path = tmp_path / "big.txt"
    path.write_bytes(data)
    uploaded = client.upload(path)
    proxy.rules.seen.clear()
    proxy.rules.cut_after_bytes = 1 * MIB + 4096
    proxy.rules.cut_downloads = 1
    created = client.create_task(file_id=uploaded["file_id"])
    view = finish(client, created["task_id"])
    assert view.state == "SUCCESS", view.error
    assert view.result is not None and view.result["success"] is True
    assert view.result["metadata"]["source_sha256"] == hashlib.sha256(data).hexdigest()
    assert view.result["metadata"]["download_resumes"] == 1
    downloads = [r for r in proxy.rules.seen if r.path.startswith("/api/v1/files/")]
    assert len(downloads) == 2
    assert "range" not in downloads[0].headers
    first_byte = int(downloads[1].headers["range"].removeprefix("bytes=").rstrip("-"))
    # Resumed where the cut happened, at most one chunk (1 MiB) back.
    assert 0 < first_byte <= 1 * MIB + 4096 and first_byte >= 4096 - 1
    assert downloads[1].headers.get("if-range") == f'"{uploaded["sha256"]}"'
    assert downloads[1].headers["authorization"].startswith("Bearer ")


def test_a_wrong_checksum_fails_clearly(
    stack: Stack, proxied: tuple[CuttingProxy, HubClient], tmp_path: Path
) -> None:
    _, client = proxied
    path = tmp_path / "note.txt"
    path.write_text("checksummed\n")
    uploaded = client.upload(path)
    # The stored copy rots on the hub's disk: same size, other bytes, so the checksum the hub and
    # the task announce no longer matches what arrives.
    stored = stack.tmp / "hub" / USER / uploaded["file_id"]
    stored.write_text("CHECKSUMMED\n")
    created = client.create_task(file_id=uploaded["file_id"])
    view = finish(client, created["task_id"])
    assert view.state == "FAILURE"
    assert view.error and "sha-256" in view.error.lower().replace("sha256", "sha-256")


PAGES = 16000


def test_progress_states_and_meta_are_visible_through_the_hub(
    proxied: tuple[CuttingProxy, HubClient], tmp_path: Path
) -> None:
    proxy, client = proxied
    path = tmp_path / "long.pdf"
    # Long enough (about a second of converting with PDFium here) that PROCESSING lasts past the
    # 0.25 s a state must last before it is written, and reports pages done; 1,600 pages took
    # 0.15 s and were done unseen.
    path.write_bytes(multi_page_pdf(PAGES))
    uploaded = client.upload(path)
    proxy.rules.rate_bps = uploaded["size"] / 2.0  # about two seconds of DOWNLOADING
    seen: dict[str, dict[str, object]] = {}
    try:
        created = client.create_task(file_id=uploaded["file_id"])

        def observe() -> TaskView | None:
            view = client.task(created["task_id"])
            if view.progress:
                seen.setdefault(view.state, view.progress)
                if view.state == "PROCESSING" and view.progress.get("done"):
                    seen["PROCESSING"] = view.progress
            return view if view.done else None

        view = wait_for(observe, 180, "the long task to finish", interval=0.02)
    finally:
        proxy.rules.rate_bps = None
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"]
    assert {"DOWNLOADING", "PROCESSING"} <= set(seen), seen
    for state, meta in seen.items():
        assert set(meta) == {"stage", "done", "total", "percent", "message"}
        assert meta["stage"] == state
    downloading = seen["DOWNLOADING"]
    assert downloading["total"] == uploaded["size"]
    processing = seen["PROCESSING"]
    assert processing["total"] == PAGES and processing["percent"] is not None
    assert view.result["metadata"].get("pages") == PAGES
