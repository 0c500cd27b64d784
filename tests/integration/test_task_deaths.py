"""A task whose run kills the worker's pool process does not come back forever."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from morag_worker.core.hub_client import HubClient
from morag_worker.core.naming import namespace_prefix
from tests.conftest import Stack
from tests.processes import wait_for
from tests.proxy import CuttingProxy

pytestmark = pytest.mark.integration

USER = "uma"


def test_a_task_that_keeps_killing_its_worker_is_given_up_after_the_limit(
    stack: Stack, tmp_path: Path
) -> None:
    key = stack.key(USER)
    proxy = CuttingProxy(int(stack.hub_url.rsplit(":", 1)[1]))
    proxy.rules.rate_bps = 64 * 1024  # each run spends seconds downloading: time to kill it
    try:
        worker = stack.start_worker(USER, key, hub_url=proxy.url, MORAG_MAX_TASK_STARTS="2")
        client = HubClient(proxy.url, key)  # file URLs name the proxy: the worker's hub origin
        path = tmp_path / "deadly.txt"
        path.write_bytes(b"this input takes the worker down every time\n" * 20_000)
        uploaded = client.upload(path)
        task_id = client.create_task(file_id=uploaded["file_id"])["task_id"]
        admin = stack.redis.client()
        count_key = f"{namespace_prefix(USER)}attempts:{task_id}"
        # The OOM killer, say, strikes both runs. A first delivery records nothing in Redis (it is
        # the first start); the redelivered one counts itself as the second.
        for start in (1, 2):
            if start == 1:
                wait_for(lambda: client.task(task_id).state == "DOWNLOADING", what="start 1")
                assert admin.get(count_key) is None
            else:
                wait_for(lambda: int(admin.get(count_key) or 0) == 2, what="start 2")
            children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
            assert len(children) == 1, children
            os.kill(int(children[0]), signal.SIGKILL)
        view = wait_for(lambda: (v := client.task(task_id)).done and v, 120, "the task to be given up")
        assert view.state == "SUCCESS" and view.result is not None
        assert view.result["success"] is False
        assert "died 2 times" in view.result["error_message"]
        assert not admin.exists(count_key)
        assert worker.popen.poll() is None  # the worker itself lives on
        proxy.rules.rate_bps = None
        note = tmp_path / "fine.txt"
        note.write_text("the next task is served\n")
        fine = client.create_task(file_id=client.upload(note)["file_id"])["task_id"]
        after = wait_for(lambda: (v := client.task(fine)).done and v, 120, "the next task")
        assert after.result is not None and after.result["success"] is True
    finally:
        proxy.close()
