"""The seed's contract, as a MoRAG server written to it would exercise it.

The seed ("Task 1: Queue Architecture Setup") ships two test snippets. They run here as written;
the only changes are the module they import (``morag.services.auth_service`` and ``morag.worker``
are ``morag_worker.core.auth`` and ``morag_worker.core.worker`` here) and the Redis address (the
test's own server, never one on 6379). Then a bare Celery client, which does not import this
package, sends by task name to ``gpu-tasks-{uid}`` under the user's key prefix, and a worker on a
machine with no GPU returns the result.
"""

from __future__ import annotations

import ast
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from morag_worker.core.hub_client import HubClient
from morag_worker.core.settings import Settings
from morag_worker.core.supervisor_plan import SupervisorOptions, prepare
from tests.conftest import SAMPLES, Stack
from tests.fakes import FakeGpuProbe
from tests.processes import Proc, RedisServer, base_env, python_argv

pytestmark = pytest.mark.integration

# The seed's "1.1 Test API Key Service", verbatim.
SEED_API_KEY_SNIPPET = """
import asyncio
import redis
from morag.services.auth_service import APIKeyService

async def test_api_keys():
    redis_client = redis.from_url('redis://localhost:6379/0')
    service = APIKeyService(redis_client)

    # Create API key
    api_key = await service.create_api_key('user123', 'Test key')
    print(f'Created API key: {api_key}')

    # Validate API key
    user_data = await service.validate_api_key(api_key)
    print(f'User data: {user_data}')

    # Get queue name
    queue_name = service.get_user_queue_name('user123', 'gpu')
    print(f'Queue name: {queue_name}')

asyncio.run(test_api_keys())
"""

# The seed's "1.2 Test Queue Configuration" submission, verbatim.
SEED_SUBMIT_SNIPPET = """
from morag.worker import submit_task_for_user, process_file_task
import tempfile

# Test local task submission
result = submit_task_for_user(
    process_file_task,
    args=['/tmp/test.txt'],
    kwargs={},
    user_id=None,
    use_remote=False
)
print(f'Local task: {result.id}')

# Test remote task submission
result = submit_task_for_user(
    process_file_task,
    args=['/tmp/test.txt'],
    kwargs={},
    user_id='user123',
    use_remote=True
)
print(f'Remote task: {result.id}')
"""

# What a MoRAG server does with nothing of ours installed: send by name into the user's namespace.
BARE_CLIENT = """
import json, sys
from celery import Celery

broker, user_id, file_url = sys.argv[1:4]
app = Celery("morag-server", broker=broker, backend=broker)
prefix = {"global_keyprefix": f"morag:ns:{user_id}:"}
app.conf.update(
    broker_transport_options=prefix,
    result_backend_transport_options=prefix,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)
result = app.send_task(
    "morag.worker.process_file_task_remote", args=[file_url, user_id], queue=f"gpu-tasks-{user_id}"
)
value = result.get(timeout=180)
assert not any(name.startswith("morag_worker") for name in sys.modules), "the client imported us"
print(json.dumps(value))
"""


def _ours(snippet: str, redis_url: str) -> str:
    return (
        snippet.replace("morag.services.auth_service", "morag_worker.core.auth")
        .replace("from morag.worker ", "from morag_worker.core.worker ")
        .replace("redis://localhost:6379/0", redis_url)
    )


def _run_python(code: str, **env: str) -> str:
    done = subprocess.run(
        python_argv("-c", code), env=base_env(**env), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def plain_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def test_the_seeds_api_key_snippet_runs_as_written(plain_redis: RedisServer) -> None:
    printed = _run_python(_ours(SEED_API_KEY_SNIPPET, plain_redis.url)).splitlines()
    # structlog's default logger prints our log events on stdout too, as it would in MoRAG.
    out = [line for line in printed if line.startswith(("Created API key", "User data", "Queue name"))]
    assert out[0].startswith("Created API key: ") and len(out[0].split(": ", 1)[1]) >= 40
    assert out[1].startswith("User data: ")
    user_data = ast.literal_eval(out[1].split(": ", 1)[1])
    assert user_data["user_id"] == "user123" and user_data["description"] == "Test key"
    assert user_data["active"] is True and user_data["expires_at"] is None
    assert out[2] == "Queue name: gpu-tasks-user123"


def test_the_seeds_submission_snippet_routes_local_and_remote(plain_redis: RedisServer) -> None:
    out = _run_python(_ours(SEED_SUBMIT_SNIPPET, plain_redis.url), REDIS_URL=plain_redis.url)
    local_id = out.split("Local task: ")[1].split()[0]
    remote_id = out.split("Remote task: ")[1].split()[0]
    admin = redis.Redis.from_url(plain_redis.url)
    try:
        (local,) = [json.loads(m) for m in admin.lrange("celery", 0, -1)]
        assert local["headers"]["id"] == local_id
        assert local["headers"]["task"] == "morag.worker.process_file_task"
        (remote,) = [json.loads(m) for m in admin.lrange("morag:ns:user123:gpu-tasks-user123", 0, -1)]
        assert remote["headers"]["id"] == remote_id
        assert remote["headers"]["task"] == "morag.worker.process_file_task_remote"
        assert admin.llen("gpu-tasks-user123") == 0  # never outside the user's namespace
    finally:
        admin.close()


def test_a_bare_celery_client_reaches_a_worker_on_a_machine_without_a_gpu(stack: Stack) -> None:
    user = "seeduser"
    key = stack.key(user)
    prepared = prepare(
        Settings(hub_url=stack.hub_url),
        key_resolver=lambda: key,
        hub_client_factory=HubClient,
        gpu_probe=FakeGpuProbe([]),  # no NVML GPU: no GPU, AMD, Intel or Apple
        env=base_env(TEMP_DIR=str(stack.tmp / "seed-worker")),
        options=SupervisorOptions(),
    )
    assert prepared.queues == (f"gpu-tasks-{user}", f"cpu-tasks-{user}")
    assert prepared.notice is not None and "CPU" in prepared.notice
    worker = Proc(prepared.command.argv, env=prepared.command.env, name="worker without a GPU")
    stack.workers.append(worker)
    worker.wait_output("worker.ready", timeout=120)

    uploaded = stack.client(key).upload(SAMPLES / "sample.txt")
    done = subprocess.run(
        python_argv("-c", BARE_CLIENT, stack.redis.url, user, uploaded["url"]),
        env={**base_env(), "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["success"] is True and result["user_id"] == user
    assert "MoRAG" in result["content"]
    assert set(result) >= {"success", "content", "metadata", "processing_time", "error_message", "user_id"}
