"""Converter bombs through hub → real worker → result: each ends ``success: false`` naming its limit.

One contributor's worker (prefork, the production ACL) runs with small converter limits: 128 MB of
memory, 8 s of wall time, 1 MB of output. A CSV of empty cells needs far more memory than its size;
a PDF whose pages share one content stream makes text out of all proportion to the file (the PDF
processor stops once the text is over the limit); such a PDF of thousands of pages of blanks runs
past the deadline (its pages are seen live through the hub while it runs). After each bomb the
same worker converts a normal document, and no worker process grew anywhere near 1 GB. A second
worker runs the spawn path (Windows' way of starting a converter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from morag_worker.core.hub_client import HubClient, TaskView
from tests.bombs import csv_of_empty_cells, pdf_shared_stream
from tests.conftest import SAMPLES, Stack
from tests.processes import Proc, _status_kib, process_tree, wait_for

pytestmark = pytest.mark.integration

USER = "bomber"
SPAWN_USER = "bomber-spawn"
BIG_USER = "big-results"
LIMITS = {"MORAG_CONVERTER_MEMORY_MB": "128", "MORAG_CONVERTER_DEADLINE_S": "8", "MORAG_MAX_OUTPUT_MB": "1"}


@pytest.fixture(scope="module")
def worker(stack: Stack) -> tuple[HubClient, Proc]:
    api_key = stack.key(USER)
    proc = stack.start_worker(USER, api_key, **LIMITS)
    return stack.client(api_key), proc


def run(client: HubClient, tmp: Path, name: str, data: bytes, timeout: float = 120) -> dict[str, Any]:
    path = tmp / name
    path.write_bytes(data)
    task_id = client.create_task(file_id=client.upload(path)["file_id"])["task_id"]
    view: TaskView = wait_for(lambda: (v := client.task(task_id)).done and v, timeout, f"{name} to finish")
    assert view.state == "SUCCESS", view.error
    assert view.result is not None
    return view.result


def converts_normally(client: HubClient, tmp: Path) -> None:
    result = run(client, tmp, "sample.pdf", (SAMPLES / "sample.pdf").read_bytes())
    assert result["success"], result["error_message"]
    assert "MoRAG Worker runs on a contributor's machine" in result["content"]


def peak_mib(proc: Proc) -> float:
    """The highest resident memory any process of the worker's tree has had (VmHWM), in MiB."""
    return max(_status_kib(pid, "VmHWM") for pid in process_tree(proc.pid)) / 1024


def test_a_memory_bomb_ends_with_the_memory_limit_named(
    worker: tuple[HubClient, Proc], tmp_path: Path
) -> None:
    client, proc = worker
    result = run(client, tmp_path, "cells.csv", csv_of_empty_cells(8))
    assert result["success"] is False
    assert result["error_message"].startswith("The conversion needed more than 128 MB of memory"), result
    converts_normally(client, tmp_path)
    assert peak_mib(proc) < 1024


def test_an_output_bomb_ends_with_the_output_limit_named(
    worker: tuple[HubClient, Proc], tmp_path: Path
) -> None:
    client, proc = worker
    bomb = pdf_shared_stream(pages=40, lines=1000)  # about 1.7 MB of text from a 45 KB file
    assert len(bomb) < 64 * 1024
    result = run(client, tmp_path, "shared.pdf", bomb)
    assert result["success"] is False and result["content"] is None
    assert "output larger than 1 MB" in result["error_message"], result
    converts_normally(client, tmp_path)
    assert peak_mib(proc) < 1024


def test_a_slow_bomb_shows_its_pages_live_then_ends_at_the_deadline(
    worker: tuple[HubClient, Proc], tmp_path: Path
) -> None:
    client, _ = worker
    path = tmp_path / "endless.pdf"
    path.write_bytes(pdf_shared_stream(pages=3000, lines=1000, text=b" "))  # slow to parse, no text
    task_id = client.create_task(file_id=client.upload(path)["file_id"])["task_id"]

    def live_page() -> dict[str, Any] | None:
        progress = client.task(task_id).progress
        if progress and progress.get("total") == 3000 and progress.get("done", 0) >= 1:
            return progress
        return None

    progress = wait_for(live_page, 60, "the converter child's pages to show through the hub")
    assert progress["message"].startswith("page ") and progress["message"].endswith(" of 3000")
    view: TaskView = wait_for(lambda: (v := client.task(task_id)).done and v, 60, "the deadline to end it")
    assert view.result is not None and view.result["success"] is False
    assert view.result["error_message"].startswith("The conversion took longer than 8 s"), view.result
    converts_normally(client, tmp_path)


def test_the_spawn_path_keeps_the_limits_too(stack: Stack, tmp_path: Path) -> None:
    api_key = stack.key(SPAWN_USER)
    proc = stack.start_worker(SPAWN_USER, api_key, MORAG_CONVERTER_START="spawn", **LIMITS)
    client = stack.client(api_key)
    result = run(client, tmp_path, "cells.csv", csv_of_empty_cells(8))
    assert result["error_message"].startswith("The conversion needed more than 128 MB of memory"), result
    converts_normally(client, tmp_path)
    assert peak_mib(proc) < 1024


def test_the_largest_result_allowed_passes_worker_and_hub_and_the_pool_child_stays_small(
    stack: Stack, tmp_path: Path
) -> None:
    """At the default limits: 60 MB of text (61 MB stored) comes back whole through the hub's 80 MB cap."""
    api_key = stack.key(BIG_USER)
    proc = stack.start_worker(BIG_USER, api_key)
    line = b"All work and no play makes Jack a dull boy; " * 2 + b"\n"
    text = line * (60 * 1024 * 1024 // len(line))
    result = run(stack.client(api_key), tmp_path, "long.txt", text, timeout=300)
    assert result["success"], result["error_message"]
    assert result["content"] == text.decode().strip() + "\n"
    assert peak_mib(proc) < 1024
