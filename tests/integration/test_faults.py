"""Faults while a real worker is busy: the hub restarted, connections cut, Redis restarted, a full disk.

Everything here is a separate process the test can kill and start again on the same port: a
redis-server with AOF on (as production runs it), the hub, and a worker for ``frank`` whose hub
origin is a proxy in front of the hub (tests/proxy.py), which slows downloads so that a fault lands
in the middle of one, cuts responses, and records every request. After each fault the task
completes (resumed by ``Range``, or redelivered) and the worker serves the next one; nothing leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from morag_worker.core.hub_client import HubClient, TaskView
from morag_worker.core.server.acl import RedisAclHook
from tests.conftest import Stack, start_hub
from tests.processes import Proc, RedisServer, wait_for
from tests.proxy import CuttingProxy

pytestmark = pytest.mark.integration

USER = "frank"
MIB = 1024 * 1024
VISIBILITY_S = 30  # CELERY_VISIBILITY_TIMEOUT of the workers here: every task stays well below it
WORKER_ENV = {
    "MORAG_DOWNLOAD_ATTEMPTS": "10",  # room for the hub to come back
    "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_S),
    # No size cap in the way: the free-disk check is what refuses the huge declared size below.
    "MORAG_MAX_INPUT_MB": str(10**12),
}


@dataclass
class Faults:
    stack: Stack
    hub_port: int
    proxy: CuttingProxy
    client: HubClient  # through the proxy, like the worker
    key: str
    worker: Proc

    def restart_hub(self) -> None:
        """Kill the hub (as a crash would) and start it again on the same port and storage."""
        self.stack.hub.kill_group()
        self.stack.hub, _ = start_hub(self.stack.tmp, self.stack.redis.url, port=self.hub_port)

    def restart_redis(self) -> None:
        """Stop redis-server (its AOF keeps the data) and start it again; re-create the ACL users,
        which live only in memory."""
        self.stack.redis.restart()
        provision_acl(self.stack.redis.url)

    def upload(self, tmp_path: Path, size: int, name: str = "data.txt") -> tuple[dict[str, object], bytes]:
        line = f"line of text for {name} ".encode()
        data = (line * (size // len(line) + 1))[:size]
        path = tmp_path / name
        path.write_bytes(data)
        return self.client.upload(path), data

    def finish(self, task_id: str, timeout: float = 180) -> TaskView:
        return wait_for(
            lambda: (v := self.client.task(task_id)).done and v, timeout, f"task {task_id} to finish"
        )

    def still_serving(self, tmp_path: Path) -> None:
        assert self.worker.popen.poll() is None, self.worker.output()[-3000:]
        uploaded, _ = self.upload(tmp_path, 100, "after.txt")
        view = self.finish(self.client.create_task(file_id=str(uploaded["file_id"]))["task_id"])
        assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view


def provision_acl(redis_url: str) -> int:
    async def sync() -> int:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await RedisAclHook(client).sync_all()
        finally:
            await client.aclose()

    return asyncio.run(sync())


def downloads(proxy: CuttingProxy) -> list[dict[str, object]]:
    return [
        {"range": r.headers.get("range"), "relayed": r.relayed, "down": r.upstream_down}
        for r in proxy.rules.seen
        if r.method == "GET" and r.path.startswith("/api/v1/files/")
    ]


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    tmp = tmp_path_factory.mktemp("faults")
    redis_server = RedisServer(tmp / "redis", extra=["--appendonly", "yes", "--appendfsync", "always"])
    try:
        hub, hub_url = start_hub(tmp, redis_server.url)
    except BaseException:
        redis_server.stop()
        raise
    stack = Stack(tmp=tmp, redis=redis_server, hub=hub, hub_url=hub_url)
    hub_port = int(hub_url.rsplit(":", 1)[1])
    proxy = CuttingProxy(hub_port)
    try:
        key = stack.key(USER)
        stack.hub_url = proxy.url  # the worker and the client reach the hub through the proxy
        worker = stack.start_worker(USER, key, **WORKER_ENV)
        with contextlib.closing(HubClient(proxy.url, key)) as client:
            yield Faults(stack, hub_port, proxy, client, key, worker)
    finally:
        proxy.close()
        stack.close()


@pytest.fixture(autouse=True)
def _reset_proxy(faults: Faults) -> Iterator[None]:
    rules = faults.proxy.rules
    rules.seen.clear()
    rules.cut_downloads, rules.cut_after_bytes, rules.rate_bps = 0, 0, None
    yield
    rules.cut_downloads, rules.rate_bps = 0, None


def test_the_hub_restarted_mid_download_and_the_download_resumes(faults: Faults, tmp_path: Path) -> None:
    uploaded, data = faults.upload(tmp_path, 12 * MIB)
    faults.proxy.rules.rate_bps = 2 * MIB  # about six seconds of download
    task_id = faults.client.create_task(file_id=str(uploaded["file_id"]))["task_id"]
    wait_for(
        lambda: (v := faults.client.task(task_id)).state == "DOWNLOADING" and (v.progress or {}).get("done"),
        what="the download to be under way",
    )
    faults.restart_hub()
    view = faults.finish(task_id)
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view
    assert view.result["metadata"]["source_sha256"] == hashlib.sha256(data).hexdigest()
    assert view.result["metadata"]["download_resumes"] >= 1
    seen = downloads(faults.proxy)
    resumed = [d for d in seen if d["range"] and not d["down"]]
    assert resumed and int(str(resumed[-1]["range"])[6:-1]) > 0, seen
    faults.still_serving(tmp_path)


def test_several_cuts_in_a_row_each_resume_where_they_stopped(faults: Faults, tmp_path: Path) -> None:
    uploaded, data = faults.upload(tmp_path, 5 * MIB)
    cut = 1 * MIB + 4096
    faults.proxy.rules.cut_after_bytes = cut
    faults.proxy.rules.cut_downloads = 4
    view = faults.finish(faults.client.create_task(file_id=str(uploaded["file_id"]))["task_id"])
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view
    assert view.result["metadata"]["source_sha256"] == hashlib.sha256(data).hexdigest()
    assert view.result["metadata"]["download_resumes"] == 4
    seen = downloads(faults.proxy)
    assert len(seen) == 5, seen
    assert seen[0]["range"] is None
    starts = [0] + [int(str(d["range"]).removeprefix("bytes=").rstrip("-")) for d in seen[1:]]
    for before, after in zip(starts, starts[1:], strict=False):
        # Each resume starts where the cut stopped: never more than one 1 MiB chunk back, never past
        # what arrived (the cut response carried `cut` bytes, its headers included).
        assert after - before <= cut, starts
        assert after - before > cut - MIB - 4096, starts
    # Everything relayed: the file once, plus at most one chunk re-read per cut, plus headers.
    assert sum(int(str(d["relayed"])) for d in seen) <= len(data) + 4 * MIB + 5 * 4096
    faults.still_serving(tmp_path)


def test_redis_down_mid_task_and_the_task_still_completes(faults: Faults, tmp_path: Path) -> None:
    uploaded, data = faults.upload(tmp_path, 8 * MIB, "during-redis-restart.txt")
    faults.proxy.rules.rate_bps = 1 * MIB  # about eight seconds of download
    task_id = faults.client.create_task(file_id=str(uploaded["file_id"]))["task_id"]
    wait_for(
        lambda: (v := faults.client.task(task_id)).state == "DOWNLOADING" and (v.progress or {}).get("done"),
        what="the download to be under way",
    )
    seen_before = len(faults.worker.lines)
    faults.stack.redis.stop()
    # Down until the worker has noticed: its progress update to the result backend failed.
    wait_for(
        lambda: any("Failed operation" in line for line in faults.worker.lines[seen_before:]),
        what="the worker to notice that Redis is gone",
    )
    faults.stack.redis.start()
    provision_acl(faults.stack.redis.url)
    # Either the worker rode out the outage (measured: the result backend retries, the download
    # waits), or the task was cancelled on the connection loss and redelivered after the visibility
    # timeout; both end in one successful result.
    view = faults.finish(task_id, timeout=VISIBILITY_S * 4)
    assert view.state == "SUCCESS" and view.result is not None and view.result["success"], view
    assert view.result["metadata"]["source_sha256"] == hashlib.sha256(data).hexdigest()
    faults.proxy.rules.rate_bps = None
    admin = faults.stack.redis.client()
    wait_for(lambda: not admin.hlen(f"morag:ns:{USER}:unacked"), what="the task's message to be acked")
    assert admin.llen(f"morag:ns:{USER}:gpu-tasks-{USER}") == 0  # nothing left to run it twice
    faults.still_serving(tmp_path)
    assert acl_denials(admin) == []


def acl_denials(admin: redis.Redis) -> list[dict[str, object]]:
    """ACL LOG entries other than failed logins (a worker may try to log in again in the moment
    between Redis coming back and its ACL users being re-created)."""
    entries = []
    for raw in admin.execute_command("ACL", "LOG"):
        entry = dict(zip(raw[::2], raw[1::2], strict=False)) if isinstance(raw, list) else dict(raw)
        entry = {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}
        reason = entry.get("reason")
        if (reason.decode() if isinstance(reason, bytes) else reason) != "auth":
            entries.append(entry)
    return entries


def test_redis_restarted_while_idle_and_the_next_task_is_served(faults: Faults, tmp_path: Path) -> None:
    """The hub's pooled connections and the idle worker's blocking read both went stale."""
    faults.restart_redis()
    faults.still_serving(tmp_path)


def test_a_declared_size_larger_than_the_free_disk_fails_before_downloading(
    faults: Faults, tmp_path: Path
) -> None:
    uploaded, _ = faults.upload(tmp_path, 1000)
    free = shutil.disk_usage(faults.stack.tmp).free
    # The hub fills in a file's true size; a task for its URL may declare any size.
    created = faults.client.create_task(url=str(uploaded["url"]), task_options={"size": free * 4})
    view = faults.finish(created["task_id"])
    assert view.state == "FAILURE", view
    assert view.error and "Not enough disk space" in view.error, view.error
    assert downloads(faults.proxy) == []
    faults.still_serving(tmp_path)


@contextlib.contextmanager
def small_tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` MiB at ``path``; skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_the_disk_filling_up_mid_download_fails_clearly_and_leaves_nothing(
    faults: Faults, tmp_path: Path
) -> None:
    """Another user's worker with TEMP_DIR on a 300 MiB tmpfs: the free-space check passes (16 MiB and
    the 256 MiB reserve), then something else fills the disk while the file arrives; ENOSPC."""
    with small_tmpfs(tmp_path / "small-disk", 300) as disk:
        key = faults.stack.key("grace")
        worker = faults.stack.start_worker("grace", key, temp_dir=disk, **WORKER_ENV)
        client = HubClient(faults.proxy.url, key)
        try:
            path = tmp_path / "fills-the-disk.txt"
            path.write_bytes(b"a line that fills the disk\n" * (16 * MIB // 27))
            uploaded = client.upload(path)
            faults.proxy.rules.rate_bps = 2 * MIB
            task_id = client.create_task(file_id=uploaded["file_id"])["task_id"]
            wait_for(
                lambda: (v := client.task(task_id)).state == "DOWNLOADING" and (v.progress or {}).get("done"),
                what="the download to be under way",
            )
            filler = disk / "filler"
            with contextlib.suppress(OSError), filler.open("wb", buffering=0) as fh:
                while True:  # until ENOSPC
                    fh.write(bytes(MIB))
            view = wait_for(lambda: (v := client.task(task_id)).done and v, what="the task to fail")
            assert view.state == "FAILURE", view
            assert view.error and "ran out of space" in view.error, view.error
            filler.unlink()
            # Nothing of the document: an emptied workspace waiting for the next task keeps its owner file.
            leftovers = [
                p
                for p in disk.rglob("*")
                if p.is_file() and not (p.name == ".owner" and p.parent.name.startswith(".spare-"))
            ]
            assert leftovers == [], leftovers
            faults.proxy.rules.rate_bps = None
            small = tmp_path / "fits.txt"
            small.write_text("fits on the small disk\n")
            after = client.create_task(file_id=client.upload(small)["file_id"])["task_id"]
            done = wait_for(lambda: (v := client.task(after)).done and v, what="the next task")
            assert done.result is not None and done.result["success"], done
            assert worker.popen.poll() is None
        finally:
            client.close()
            worker.stop(timeout=30)
            faults.stack.workers.remove(worker)
