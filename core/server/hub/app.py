"""The hub's routes (DESIGN §4). Every route but /healthz needs a live API key (Bearer or
X-API-Key) and only ever shows the key's own user's files, tasks and workers (404 otherwise).

Runs on uvicorn's event loop; Celery and blocking Redis calls go through the thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
import structlog
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from starlette.concurrency import run_in_threadpool

from morag_worker import __version__
from morag_worker.core.auth import ApiKeyRecord, APIKeyService, KeyRole
from morag_worker.core.execution.celery_config import (
    DEFAULT_REDIS_URL,
    TimeLimits,
    base_config,
    strip_credentials,
    tls_options,
)
from morag_worker.core.execution.health.presence import live_workers
from morag_worker.core.naming import DEFAULT_QUEUE, WorkerType, acl_username, namespace_prefix, queue_name
from morag_worker.core.routing import submit_task_for_user
from morag_worker.core.server.acl import RedisAclHook
from morag_worker.core.server.hub.connections import AddressGate
from morag_worker.core.server.hub.guard import HubGuard, HubLimits, api_key_from_headers
from morag_worker.core.server.hub.maintenance import WATCHDOG_INTERVAL_S, HubMaintenance
from morag_worker.core.server.hub.models import ModelShelf
from morag_worker.core.server.hub.small_files import SmallFiles, file_headers
from morag_worker.core.server.hub.storage import FileStore, UploadTooLarge
from morag_worker.core.server.hub.task_view import (
    DEFAULT_MAX_RESULT_BYTES,
    ResultReader,
    ResultsBusy,
    ResultTooLarge,
)
from morag_worker.core.server.hub.uploads import receive_upload
from morag_worker.core.server.watchdog import Watchdog

__all__ = ["HubConfig", "create_app"]

log = structlog.get_logger(__name__)

TASK_INDEX_PREFIX = "morag:hub:tasks:"
TASK_INDEX_TTL_S = 7 * 24 * 3600


@dataclass
class HubConfig:
    """How the hub is reached and what it serves."""

    redis_url: str = DEFAULT_REDIS_URL
    storage_dir: Path = field(default_factory=lambda: Path("hub-storage"))
    max_upload_bytes: int = 2 * 1024**3
    public_url: str | None = None  # how workers reach the hub; default: the request's base URL
    worker_broker_url: str | None = None  # what workers are told to connect to (no credentials)
    # Maintenance (core/hub/maintenance.py): ACL users, expired keys, the watchdog.
    maintenance_interval_s: float = 60.0
    watchdog_interval_s: float = WATCHDOG_INTERVAL_S  # restores dead workers' tasks between rounds
    # Deliveries older than this are put back in their queue; the workers' visibility timeout.
    visibility_timeout_s: float = float(TimeLimits.visibility)
    # The current worker release, in queue-info: an older worker tells its user an update is available.
    worker_version: str = __version__
    # Body caps, timeouts, in-flight cap, Redis pool and rate limits (core/server/hub/guard.py).
    limits: HubLimits = field(default_factory=HubLimits)
    # Model folders served to workers (core/server/hub/models.py); None serves none.
    models_dir: Path | None = None
    # Stored results over this are not read (core/server/hub/task_view.py).
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES


class TaskCreate(BaseModel):
    file_id: str | None = Field(default=None, max_length=64)
    url: str | None = Field(default=None, max_length=8192)
    content_type: str | None = Field(default=None, max_length=255)
    task_options: dict[str, Any] | None = None
    remote: bool = True
    worker_type: WorkerType = WorkerType.GPU


async def current_key(request: Request) -> ApiKeyRecord:
    """The live key record of the request's API key; 401 with a JSON error otherwise."""
    checked: ApiKeyRecord | None = getattr(request.state, "api_key_record", None)
    if checked is not None:  # HubGuard looked it up before the body was read
        return checked
    api_key = api_key_from_headers(dict(request.scope["headers"]))  # as HubGuard reads it
    if not api_key:
        raise HTTPException(
            401, "missing API key (Authorization: Bearer <key>)", headers={"WWW-Authenticate": "Bearer"}
        )
    record: ApiKeyRecord | None = await request.app.state.keys.lookup(api_key)
    if record is None:
        raise HTTPException(
            401, "invalid, revoked or expired API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return record


Key = Annotated[ApiKeyRecord, Depends(current_key)]


def create_app(config: HubConfig, gate: AddressGate | None = None) -> FastAPI:
    """Build the hub's ASGI app; Redis connections open in its lifespan.

    ``gate``: the connection layer's ``AddressGate``, told which addresses the failed-authentication
    limit refuses (``hub_protocol`` consults it as connections are accepted).
    """
    store = FileStore(config.storage_dir, config.max_upload_bytes)
    results = ResultReader(config.max_result_bytes)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # A Redis restart drops every pooled connection: retry a command on a fresh one rather
        # than answering 500 to the first request after it.
        # A burst waits for a pooled connection (up to redis_pool_timeout_s, then 503) rather
        # than failing at once with MaxConnectionsError.
        tls = tls_options(config.redis_url, os.environ) or {}
        pool = {
            "max_connections": config.limits.redis_max_connections,
            "timeout": config.limits.redis_pool_timeout_s,
            "health_check_interval": 15,
            **tls,
        }
        state["aredis"] = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                config.redis_url, retry=AsyncRetry(ExponentialBackoff(cap=2.0, base=0.1), 3), **pool
            )
        )
        state["redis"] = redis.Redis.from_pool(
            redis.BlockingConnectionPool.from_url(
                config.redis_url, retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), 3), **pool
            )
        )
        acl = RedisAclHook(state["aredis"])
        state["keys"] = APIKeyService(state["aredis"], access_hook=acl)
        _app.state.keys = state["keys"]
        config.storage_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        watchdog = Watchdog(
            config.redis_url,
            config.visibility_timeout_s,
            transport_options=base_config({"REDIS_URL": config.redis_url})["broker_transport_options"],
            ssl_options=tls or None,
        )
        maintenance = HubMaintenance(
            state["keys"],
            acl,
            watchdog,
            config.maintenance_interval_s,
            watchdog_interval_s=config.watchdog_interval_s,
        )
        _app.state.maintenance = maintenance
        loop_task = asyncio.create_task(maintenance.run(), name="hub-maintenance")
        log.info(
            "hub.started",
            storage=str(config.storage_dir),
            maintenance_interval_s=config.maintenance_interval_s,
            visibility_timeout_s=config.visibility_timeout_s,
        )
        try:
            yield
        finally:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
            await asyncio.to_thread(watchdog.close)
            await state["aredis"].aclose()
            state["redis"].close()

    # No /docs, /redoc or /openapi.json: every route but /healthz needs a key, a browser cannot send
    # one to those pages, and Swagger UI would load its scripts from a CDN. The API is DESIGN §4;
    # its schema, when wanted, is `create_app(HubConfig()).openapi()` offline.
    app = FastAPI(
        title="MoRAG Worker hub", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    # Added first, so it runs inside the guard: the key is checked before a file is looked for.
    app.add_middleware(SmallFiles, store=store)
    app.add_middleware(
        HubGuard, limits=config.limits, max_upload_bytes=config.max_upload_bytes, state=state, gate=gate
    )

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    def base_url(request: Request) -> str:
        return (config.public_url or str(request.base_url)).rstrip("/")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/v1/auth/queue-info")
    async def queue_info(key: Key) -> dict[str, Any]:
        broker = config.worker_broker_url or strip_credentials(config.redis_url)
        return {
            "authenticated": True,
            "user_id": key.user_id,
            "gpu_queue": queue_name(key.user_id, WorkerType.GPU),
            "cpu_queue": queue_name(key.user_id, WorkerType.CPU),
            "default_queue": DEFAULT_QUEUE,
            "broker": {
                "url": strip_credentials(broker),
                "username": acl_username(key.user_id),
                "key_prefix": namespace_prefix(key.user_id),
            },
            "expires_at": key.expires_at.isoformat() if key.expires_at else None,
            "role": key.role.value,
            "worker_version": config.worker_version,
        }

    @app.post("/api/v1/files", status_code=201)
    async def upload(request: Request, key: Key) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_upload_bytes + 64 * 1024:
            raise HTTPException(
                413, f"the file is larger than this hub accepts ({config.max_upload_bytes} bytes)"
            )
        try:
            stored = await receive_upload(request, store, key.user_id)
        except UploadTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        log.info("hub.file_stored", user_id=key.user_id, file_id=stored.file_id, size=stored.size)
        return {
            "file_id": stored.file_id,
            "url": f"{base_url(request)}/api/v1/files/{stored.file_id}",
            "sha256": stored.sha256,
            "size": stored.size,
            "filename": stored.filename,
        }

    @app.get("/api/v1/files/{file_id}")
    async def download(file_id: str, key: Key, request: Request) -> Response:
        # A plain GET of a small file is answered before this route (small_files.py).
        found = store.get(key.user_id, file_id)
        if found is None:
            raise HTTPException(404, "no such file")
        stored, path = found
        return FileResponse(path, media_type="application/octet-stream", headers=file_headers(stored))

    shelf = ModelShelf(config.models_dir) if config.models_dir is not None else None

    @app.get("/api/v1/models/{name}")
    async def model_manifest(name: str, key: Key) -> dict[str, Any]:
        manifest = await run_in_threadpool(shelf.manifest, name) if shelf is not None else None
        if manifest is None:
            raise HTTPException(404, "no such model")
        log.info("hub.model_listed", user_id=key.user_id, model=name, size=manifest.size)
        return manifest.to_dict()

    @app.get("/api/v1/models/{name}/{file_name}")
    async def model_file(name: str, file_name: str, key: Key) -> FileResponse:
        found = await run_in_threadpool(shelf.file, name, file_name) if shelf is not None else None
        if found is None:
            raise HTTPException(404, "no such model file")
        path, sha256 = found
        log.info("hub.model_file", user_id=key.user_id, model=name, file=file_name)
        return FileResponse(
            path,
            media_type="application/octet-stream",
            headers={"etag": f'"{sha256}"', "x-checksum-sha256": sha256, "cache-control": "no-store"},
        )

    @app.post("/api/v1/tasks", status_code=201)
    async def create_task(body: TaskCreate, request: Request, key: Key) -> dict[str, Any]:
        if not body.remote and key.role is not KeyRole.SERVER:
            # A local task goes to the plain `celery` queue, i.e. the server's own workers; an
            # ordinary key may make only its own user's workers work (SECURITY.md).
            log.warning("hub.local_task_refused", user_id=key.user_id, key_hash=key.key_hash[:12])
            raise HTTPException(
                403,
                'this key may not submit local tasks ("remote": false): they run on the '
                "server's own workers, which only a key created with --role server may use",
            )
        if (body.file_id is None) == (body.url is None):
            raise HTTPException(422, "give exactly one of file_id and url")
        options = dict(body.task_options or {})
        if body.file_id is not None:
            found = store.get(key.user_id, body.file_id)
            if found is None:
                raise HTTPException(404, "no such file")
            stored, path = found
            options.update(sha256=stored.sha256, size=stored.size)
            if stored.filename:
                options.setdefault("filename", stored.filename)
            source = f"{base_url(request)}/api/v1/files/{stored.file_id}" if body.remote else str(path)
            task_name = "morag.worker.process_file_task"
            content_type = body.content_type or stored.content_type
        else:
            assert body.url is not None
            parts = urlsplit(body.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise HTTPException(422, "url must be an absolute http(s) URL")
            source, task_name, content_type = body.url, "morag.worker.process_url_task", body.content_type
        user = key.user_id if body.remote else None
        result = await run_in_threadpool(
            submit_task_for_user,
            task_name,
            [source, content_type, options],
            None,
            key.user_id,
            body.remote,
            body.worker_type,
        )
        queue = queue_name(key.user_id, body.worker_type) if body.remote else DEFAULT_QUEUE
        index = json.dumps({"user_id": key.user_id, "remote": body.remote, "queue": queue})
        await state["aredis"].set(TASK_INDEX_PREFIX + result.id, index, ex=TASK_INDEX_TTL_S)
        log.info(
            "hub.task_created",
            user_id=key.user_id,
            task_id=result.id,
            queue=queue,
            namespaced=user is not None,
        )
        return {"task_id": result.id, "queue": queue}

    @app.get("/api/v1/tasks/{task_id}")
    async def task_status(task_id: str, key: Key) -> dict[str, Any]:
        raw = await state["aredis"].get(TASK_INDEX_PREFIX + task_id[:64])
        entry = json.loads(raw) if raw else None
        if not entry or entry.get("user_id") != key.user_id:
            raise HTTPException(404, "no such task")
        namespace_user = key.user_id if entry.get("remote") else None
        try:
            return await run_in_threadpool(results.view, task_id, namespace_user)
        except ResultTooLarge as exc:
            log.warning("hub.result_too_large", user_id=key.user_id, task_id=task_id, size=exc.size)
            raise HTTPException(413, str(exc)) from None
        except ResultsBusy as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None

    @app.get("/api/v1/workers")
    async def workers(key: Key) -> dict[str, Any]:
        records = await run_in_threadpool(live_workers, state["redis"], key.user_id)
        return {"user_id": key.user_id, "workers": [asdict(r) for r in records]}

    return app
