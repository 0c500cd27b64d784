"""Routing a submission to the right queue, with the seed's helpers (DESIGN §2).

Anonymous or local submissions go to the plain ``celery`` queue exactly as before. A remote
submission for a user is published, by task name, into that user's namespace
(``morag:ns:{user_id}:``) on the queue ``{worker_type}-tasks-{user_id}``, through a Celery app
configured with that prefix; the returned ``AsyncResult`` reads the result from the same namespace.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from morag_worker.core.execution.celery_config import namespaced_config
from morag_worker.core.naming import DEFAULT_QUEUE, WorkerType, queue_name, validate_user_id

__all__ = [
    "REMOTE_SUFFIX",
    "app_for_user",
    "get_task_for_user",
    "remote_task_name",
    "result_for_user",
    "submit_task_for_user",
]

REMOTE_SUFFIX = "_remote"
_MAX_CACHED_APPS = 256
_apps: OrderedDict[tuple[str, str], Celery] = OrderedDict()
_apps_lock = threading.Lock()


def remote_task_name(base_task_name: str) -> str:
    """``morag.worker.process_file_task`` → ``morag.worker.process_file_task_remote``."""
    return base_task_name if base_task_name.endswith(REMOTE_SUFFIX) else base_task_name + REMOTE_SUFFIX


def _default_app() -> Celery:
    from morag_worker.core.worker import celery_app

    return celery_app


def app_for_user(user_id: str, env: Mapping[str, str] | None = None) -> Celery:
    """A (cached) Celery app whose broker and result keys live in ``user_id``'s namespace."""
    validate_user_id(user_id)
    env = env if env is not None else os.environ
    broker = env.get("REDIS_URL", "")
    key = (user_id, broker)
    with _apps_lock:
        app = _apps.get(key)
        if app is not None:
            _apps.move_to_end(key)
            return app
        app = Celery(f"morag_worker-{user_id}", set_as_current=False)
        app.conf.update(namespaced_config(env, user_id))
        _apps[key] = app
        while len(_apps) > _MAX_CACHED_APPS:
            _, old = _apps.popitem(last=False)
            old.close()
        return app


def get_task_for_user(
    base_task_name: str,
    user_id: str | None = None,
    use_remote: bool = False,
    worker_type: WorkerType | str = WorkerType.GPU,
) -> tuple[Any, str]:
    """``(task, queue)`` for a submission: the local task on ``celery``, or the remote task
    (a signature bound to the user's namespaced app) on the user's own queue."""
    if not user_id or not use_remote:
        app = _default_app()
        return app.signature(base_task_name), DEFAULT_QUEUE
    app = app_for_user(user_id)
    return app.signature(remote_task_name(base_task_name)), queue_name(user_id, worker_type)


def submit_task_for_user(
    task_func: Any,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    user_id: str | None = None,
    use_remote: bool = False,
    worker_type: WorkerType | str = WorkerType.GPU,
    **options: Any,
) -> AsyncResult:
    """Submit ``task_func`` (a task or its name) for ``user_id``; return its ``AsyncResult``.

    For a remote submission the local arguments ``(source, content_type, task_options)`` become
    the remote task's ``(source, user_id, content_type, task_options)``.
    """
    name = task_func if isinstance(task_func, str) else task_func.name
    task, queue = get_task_for_user(name, user_id, use_remote, worker_type)
    call_args = list(args or ())
    call_kwargs = dict(kwargs or {})
    if user_id and use_remote and "user_id" not in call_kwargs and not name.endswith(REMOTE_SUFFIX):
        call_args = [*call_args[:1], user_id, *call_args[1:]] if call_args else call_args
        if not call_args:
            call_kwargs["user_id"] = user_id
    result: AsyncResult = task.apply_async(args=call_args, kwargs=call_kwargs, queue=queue, **options)
    return result


def result_for_user(task_id: str, user_id: str | None) -> AsyncResult:
    """The ``AsyncResult`` of a task submitted for ``user_id`` (or anonymously when None)."""
    app = app_for_user(user_id) if user_id else _default_app()
    return AsyncResult(task_id, app=app)
