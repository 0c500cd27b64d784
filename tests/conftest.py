"""Shared fixtures: a private redis-server, the hub over loopback, users with keys, worker children.

Integration fixtures are module-scoped where starting a process is slow; every process is torn down
with its whole process group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from morag_worker.core.acl import RedisAclHook
from morag_worker.core.auth import APIKeyService
from morag_worker.core.hub_client import HubClient
from morag_worker.core.naming import WorkerType
from morag_worker.core.worker_command import WorkerPlan, build_worker_command
from tests.processes import Proc, RedisServer, base_env, free_port, python_argv, wait_for

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
SAMPLES = RESOURCES / "samples"


def create_key(redis_url: str, user_id: str, expires_days: int | None = None) -> str:
    async def _create() -> str:
        client = aioredis.Redis.from_url(redis_url)
        try:
            service = APIKeyService(client, access_hook=RedisAclHook(client))
            return await service.create_api_key(user_id, "test", expires_days)
        finally:
            await client.aclose()

    return asyncio.run(_create())


@dataclass
class Stack:
    """redis-server + hub for one test module, and the workers started in it."""

    tmp: Path
    redis: RedisServer
    hub: Proc
    hub_url: str
    workers: list[Proc] = field(default_factory=list)

    def key(self, user_id: str, expires_days: int | None = None) -> str:
        return create_key(self.redis.url, user_id, expires_days)

    def client(self, api_key: str) -> HubClient:
        return HubClient(self.hub_url, api_key)

    def start_worker(self, user_id: str, api_key: str, *, name: str | None = None,
                     wait_ready: bool = True, **env: str) -> Proc:
        plan = WorkerPlan(
            user_id=user_id, hub_url=self.hub_url, broker_url=self.redis.url, api_key=api_key,
            worker_type=WorkerType.GPU, hostname=name or f"w{len(self.workers)}-{user_id}@test",
            temp_dir=str(self.tmp / "worker-tmp"),
        )
        command = build_worker_command(plan, base_env(**env))
        proc = Proc(command.argv, env=command.env, name=f"worker {plan.hostname}")
        self.workers.append(proc)
        if wait_ready:
            proc.wait_output("worker.ready", timeout=120)
        return proc

    def close(self) -> None:
        for proc in self.workers:
            proc.stop(timeout=30)
        self.hub.stop()
        self.redis.stop()


def start_hub(tmp: Path, redis_url: str, **env: str) -> tuple[Proc, str]:
    port = free_port()
    hub = Proc(
        python_argv("-m", "morag_worker", "hub", "--port", str(port), "--storage", str(tmp / "hub")),
        env=base_env(REDIS_URL=redis_url, **env), name="hub",
    )
    url = f"http://127.0.0.1:{port}"
    import requests

    wait_for(lambda: requests.get(url + "/healthz", timeout=2).ok, what="the hub to answer /healthz")
    return hub, url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    server = RedisServer(tmp / "redis")
    hub, url = start_hub(tmp, server.url)
    result = Stack(tmp=tmp, redis=server, hub=hub, hub_url=url)
    try:
        yield result
    finally:
        result.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
