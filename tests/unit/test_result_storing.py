"""A task is reported done only once Celery has stored its result; a store that fails is a failure.

Runs Celery's real tracer (what a pool process runs for each task, not eager mode) over a task with
the worker's task base class and a result backend that refuses to store, as Redis does for a revoked
key or a value too large; the supervisor's view is read from a real progress-channel pipe.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import redis
from celery import Celery
from celery.app.trace import trace_task
from celery.backends.base import KeyValueStoreBackend
from celery.exceptions import BackendStoreError

from morag_worker.core.execution.context import FinishedTask, get_runtime
from morag_worker.core.execution.progress_channel import ChannelWriter, TaskEndMessage, parse_line
from morag_worker.core.results import TaskOutcome
from morag_worker.core.worker import _MoragTask

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore:Exception raised outside body:RuntimeWarning"),
]


class RefusingBackend(KeyValueStoreBackend):  # type: ignore[misc]
    """Stores in memory, refusing what ``refuse`` says (success results, or everything)."""

    def __init__(self, app: Celery, refuse: str, error: Exception) -> None:
        super().__init__(app=app)
        self.refuse = refuse
        self.error = error
        self.data: dict[str, Any] = {}

    def get(self, key: Any) -> Any:
        return self.data.get(key)

    def mget(self, keys: Any) -> Any:
        return [self.data.get(k) for k in keys]

    def set(self, key: Any, value: Any) -> None:
        if self.refuse == "all" or (self.refuse == "success" and b'"SUCCESS"' in _bytes(value)):
            raise self.error
        self.data[key] = value

    def delete(self, key: Any) -> None:
        self.data.pop(key, None)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def read_ends(read_fd: int) -> list[TaskEndMessage]:
    with os.fdopen(read_fd, "rb") as lines:
        return [m for line in lines if isinstance(m := parse_line(line), TaskEndMessage)]


def run_task(backend_refuses: str | None, error: Exception | None = None) -> tuple[list[TaskEndMessage], Any]:
    read_end, write_end = os.pipe()
    runtime = get_runtime()
    saved = runtime.channel
    runtime.channel = ChannelWriter(write_end)
    app = Celery("store-test", set_as_current=False)
    app.conf.update(result_serializer="json", accept_content=["json"])

    # Not shared: a shared task is added to every Celery app finalized later in this process.
    @app.task(bind=True, base=_MoragTask, name="test.returns_a_result", shared=False)
    def returns_a_result(self: _MoragTask) -> dict[str, Any]:
        get_runtime().result_returned(
            self.request.id, FinishedTask(TaskOutcome.SUCCEEDED, metadata={"processor": "text"})
        )
        return {"success": True, "content": "# converted", "metadata": {}}

    backend = RefusingBackend(app, backend_refuses or "none", error or RuntimeError("unused"))
    returns_a_result.backend = backend
    try:  # the pool process's entry point, which reports what escapes the tracer as an internal error
        trace_task(returns_a_result, "t-1", (), {}, {"id": "t-1", "delivery_info": {}}, app=app, eager=False)
    finally:
        runtime.channel = saved
        os.close(write_end)
    return read_ends(read_end), backend


def test_a_stored_result_is_reported_as_succeeded() -> None:
    ends, backend = run_task(None)
    assert [(e.task_id, e.outcome) for e in ends] == [("t-1", "succeeded")]
    assert backend.data


@pytest.mark.parametrize(
    ("refuses", "error", "said"),
    [
        ("success", BackendStoreError("value too large for Redis backend"), "value too large"),
        ("all", redis.AuthenticationError("invalid username-password pair"), "invalid username-password"),
    ],
)
def test_a_result_that_could_not_be_stored_is_a_failure_with_a_sentence(
    refuses: str, error: Exception, said: str
) -> None:
    ends, _ = run_task(refuses, error)
    assert [(e.task_id, e.outcome) for e in ends] == [("t-1", "failed")]
    assert ends[0].error is not None
    assert ends[0].error.startswith("The result could not be stored: ") and said in ends[0].error
